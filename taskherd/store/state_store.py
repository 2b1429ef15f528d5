"""StateStore: the one protocol taskherd speaks to Redis.

Every change of a task's state is one Lua script (files in `lua/`, one per transition) that checks the
expected state and, where it matters, the execution id, so concurrent pods can never double a task or
let a superseded execution write a result. redis-py's `register_script` uses EVALSHA and reloads the
script after a Redis restart empties the script cache.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import hiredis
import redis
from redis.cluster import RedisCluster

from taskherd.config.settings import RedisSettings
from taskherd.errors import LeaseLapsed, StoreError, TaskherdError
from taskherd.states import FINAL_STATES, LIVE_STATES, WAITING_STATES, TaskState
from taskherd.store import keys
from taskherd.store.connection import Client, connect
from taskherd.store.errors import REDIS_ERRORS, store_errors
from taskherd.store.finishes import Finishes, with_executions
from taskherd.store.keyspace import Keyspace
from taskherd.store.limits import LimitStore
from taskherd.store.membership import Membership
from taskherd.store.schedules import ScheduleStore
from taskherd.store.series import Series

TOMBSTONE_MS = 10_000
"""How long an archived task's id stays its job's (retire.lua's tombstone, and its index entry)."""

STALE_CHECK_S = 1.0
"""A thread's connection idle this long is checked before use (one poll): Redis restarted or failed
over meanwhile closed it, and the call on it would fail (an API request's 503) though Redis is back."""

LEASED = "leased"
"""The job count of running tasks leased ahead, not started yet (not a TaskState: they are running)."""


class Recheck(TaskherdError):
    """`submit` refused a batch whose check of the archive is older than the tombstones that make it safe."""


class StaleSpecs(TaskherdError):
    """`submit` refused a batch prepared under executor specs that have changed since."""


class Full(TaskherdError):
    """`submit` refused a batch whose new tasks would pass a bound on open tasks, creating nothing:
    `scope` 'job' (the bound on `job`) or 'all' (on all jobs together), the tasks `open` there, and
    the new tasks `asked`."""

    def __init__(self, scope: str, job: str, open_: int, asked: int) -> None:
        super().__init__(f"{scope}: {open_} open, {asked} asked")
        self.scope, self.job, self.open, self.asked = scope, job, open_, asked


@dataclass(frozen=True, slots=True)
class NewTask:
    """A validated task, ready to be created."""

    id: str
    job: str
    type: str
    payload: str
    """Canonical JSON of the payload (sorted keys), so its digest is stable."""
    digest: str
    max_attempts: int
    timeout_s: float
    parent: str = ""
    revives: str = ""
    """The final state of an archived task being retried (its row is overwritten when it ends again)."""
    round: int = 0
    """The retry round: 0 when first submitted, one more each time a dead letter is retried."""
    history: str = ""
    """JSON list of the executions of earlier rounds (each with its `round`), kept with the task."""
    due: str = ""
    """When it may first run: "" at once, "+MS" MS after it is created (Redis's clock), or Unix ms. A
    time still ahead creates it `scheduled` (not published; the TimeoutWatcher promotes it when due)."""
    join: str = ""
    """The fan-in join it belongs to (the id of the task that declared it), or "": counted open in it until retired."""
    priority: int = 5
    """0-9, higher first: kept in the task's hash, so a retry, a requeue and a promotion publish it on its
    priority's topic again (`taskherd.nsq.topics.task_topic`)."""
    minted: bool = False
    """Its id was made by this process a moment ago (a uuid4), not given: no archive can hold it yet."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A running execution this worker now owns."""

    job: str
    task_id: str
    exec_id: str
    type: str
    payload: str
    timeout_s: float
    attempts: int
    max_attempts: int
    started_ms: int
    """When it was leased (Redis clock): its deadline counts from here."""
    ahead: bool = False
    """Leased while the slot's executor ran another: counted `leased`, not running, until `start`."""
    asked_at: float = 0.0
    """When this process sent the request that took it (time.monotonic()): the latest moment Redis can
    have started its TTL from, which the worker's lease guard counts from (0: unknown)."""
    priority: int = 5
    """The task's priority (0-9), so a task handed back is published on its priority's topic again."""


LeaseArgs = tuple[str, str, str, str, int, str, bool]
"""`StateStore.lease`'s first arguments: job, task id, execution id, worker, TTL ms, type hint, ahead."""

CLAIM_TTL_MS = 3_600_000
"""How long a task id's claim lasts unconfirmed (`keys.index`): a submit killed between its claim and
its create leaves the id to its job for this long, then free again."""


@store_errors("redis")
class StateStore:
    """Runtime state of tasks, jobs and specs in Redis. Thread-safe: each thread sends its scripts on
    a connection of its own (`_roundtrip`); other reads go through redis-py's pool. Every method
    raises StoreError when Redis fails (`store_errors`)."""

    def __init__(self, settings: RedisSettings, client: Client | None = None) -> None:
        self.redis = client or connect(settings)
        """The client itself, for tests and the bench; taskherd's own code goes through the methods."""
        self._wait = (settings.wait_replicas, int(settings.wait_timeout_s * 1000))
        self._refresh = False
        """Set when a cluster node failed under a round trip: learn the slots' owners again before the next."""
        self.members = Membership(self.redis)
        self.keyspace = Keyspace(self.redis)
        self.limits = LimitStore(self.redis)
        self.schedules = ScheduleStore(self.redis)
        self.series = Series(self.redis)
        self._scripts = {name: self.redis.register_script(_lua(name)) for name in
                         ("submit", "lease", "start", "renew", "finish", "release", "requeue", "promote", "retire", "register",
                          "cancel", "claim", "summarized", "expire", "forget", "join", "own", "disown",
                          "reserve", "count", "settle")}
        self._local = threading.local()
        self.one_redis = not isinstance(self.redis, RedisCluster)
        """One Redis: a submit and a settle each in one script, rather than in steps (a cluster, whose
        job sets and id index live on other nodes than a job's keys: see `submit` and `settle`)."""

    @functools.cached_property
    def finishes(self) -> Finishes:
        """Wake-ups when a task's result is recorded; made when first used (its own connection and thread)."""
        return Finishes(self.redis)

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def close(self) -> None:
        self.redis.close()

    def _run(self, name: str, keys_: list[str], args: list[Any]) -> Any:
        return self._pipelined([(name, keys_, args)])[0]

    def _pipelined(self, calls: list[tuple[str, list[str], list[Any]]], *more: tuple[Any, ...],
                   wait: bool = False) -> list[Any]:
        """Script calls (then plain commands, `more`) in one round trip; raises StoreError."""
        commands = [("EVALSHA", self._scripts[name].sha, len(keys_), *keys_, *args) for name, keys_, args in calls]
        try:
            return self._roundtrip(commands + list(more), wait)
        except REDIS_ERRORS as exc:
            raise StoreError(f"redis {'+'.join(name for name, _, _ in calls) or more[0][0]}: {exc}") from exc

    def _roundtrip(self, commands: list[tuple[Any, ...]], wait: bool = False) -> list[Any]:
        """Send every command at once on this thread's own connection to each node they go to (one
        node, or each command to the cluster node of its first key), then read every reply.

        This is the hot path (a lease, a finish, a claim, an archive per call): a pool checkout costs a
        poll() on the socket and a Pipeline object its own bookkeeping, together a quarter of a worker
        slot's CPU. Scripts go as EVALSHA; after a Redis restart (or a failover: scripts are not
        replicated) the script cache is empty: load them and send again what it refused, as a
        command a node refused because its slot moved (MOVED) is sent again where the slot went.
        Neither ran, so neither runs twice. Every reply is read before an error is raised, so the
        connections stay in step; a connection that failed mid-way is dropped (the next call
        connects afresh). `wait`: then `WAIT` on each node for `[redis].wait_replicas` replicas to
        hold what this connection wrote (StoreError when fewer did in time).
        """
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        for _ in (1, 2, 3):
            groups: dict[int, tuple[Any, list[int]]] = {}
            for i in todo:
                conn = self._connection(commands[i])
                groups.setdefault(id(conn), (conn, []))[1].append(i)
            waits = self._wait[0] if wait else 0
            try:
                for conn, idx in groups.values():
                    extra = [("WAIT", *self._wait)] if waits else []
                    conn.send_packed_command(_pack([commands[i] for i in idx] + extra))
                acked = []
                for conn, idx in groups.values():
                    for i in idx:
                        try:
                            replies[i] = conn.read_response()
                        except redis.ResponseError as exc:
                            replies[i] = exc
                    if waits:
                        acked.append(conn.read_response())
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                for conn, _ in groups.values():
                    conn.disconnect()
                self._refresh = True
                raise
            again = [i for i in todo if isinstance(replies[i], (redis.exceptions.NoScriptError, redis.exceptions.AskError))]
            errors = [replies[i] for i in todo if isinstance(replies[i], redis.ResponseError) and i not in again]
            if errors:
                raise errors[0]
            if waits and acked and min(acked) < waits:
                raise StoreError(f"only {min(acked)} of [redis].wait_replicas = {waits} replicas acknowledged "
                                 f"within {self._wait[1]} ms")
            if not again:
                return replies
            if any(isinstance(replies[i], redis.exceptions.NoScriptError) for i in again):
                for script in self._scripts.values():
                    self.redis.script_load(script.script)
            if any(isinstance(replies[i], redis.exceptions.AskError) for i in again):
                self._refresh = True
            todo = again
        raise replies[todo[0]]

    def _connection(self, command: tuple[Any, ...]) -> Any:
        """This thread's connection to the node `command` goes to (in a cluster, the node of its first
        key: a script's first KEYS entry, a plain command's first argument)."""
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        if not isinstance(self.redis, RedisCluster):
            node, pool = "", self.redis.connection_pool
        else:
            if self._refresh:
                self._refresh = False
                self.redis.nodes_manager.initialize()
            key = command[3] if command[0] == "EVALSHA" and command[2] else command[1]
            found = self.redis.nodes_manager.get_node_from_slot(self.redis.keyslot(key))  # type: ignore[no-untyped-call]
            node, pool = found.name, self.redis.get_redis_connection(found).connection_pool
        conn, used = conns.get(node) or (None, 0.0)
        now = time.monotonic()
        if conn is None:
            conn = pool.make_connection()
        elif now - used > STALE_CHECK_S and _closed(conn):
            conn.disconnect()  # sending on it would fail: the next send connects afresh
        conns[node] = (conn, now)
        return conn

    # --- submit -------------------------------------------------------------------------------------
    def submit(self, job: str, tasks: list[NewTask], specs_version: str | None = None,
               bounds: tuple[int, int] = (0, 0), archive_checked_ms: int | None = None) -> list[str]:
        """'created' | 'exists' | 'conflict' (an id another live job owns) | 'cancelled' per task, in
        order. With `specs_version`, raises StaleSpecs (creating nothing) if the executor specs have
        changed since that version was read (`executor_specs`). `bounds` (open tasks of the job, of all
        jobs; 0: none): raises Full, creating nothing, if the batch's new tasks would pass one. A task
        created `scheduled` (a due time still ahead) answers 'scheduled': created, but not to be
        published yet. `archive_checked_ms` (Unix ms) is when the caller asked MySQL which ids were
        archived: an id retired since is answered from its tombstone (retire.lua, 10 s), and a check
        over 5 s old raises Recheck, creating nothing.

        On one Redis, one script (submit.lua, whole): atomic, so no cut to be safe at, and one write
        for Redis to fsync rather than three or four. On a Redis Cluster, three round trips, as the
        task-id index and the counts are global and the tasks are in their job's slot: (1) read the
        specs version, put the job among the open ones and claim each id for the job (a claim with a
        TTL; reserve room under the bound on all jobs if there is one); (2)
        create, in one script on the job's slot, what the job's claims allow; (3) confirm the claims
        of what was created, give up the others, count what was created, and put the job among the
        open ones again (a settle racing the create may have taken it out). Safe at every cut: before
        (2) nothing exists and the claims lapse; between (2) and (3) the tasks exist, their job is
        among the open ones (1), and only the caller, who had no answer, resubmits, which confirms
        them. With `[redis].wait_replicas`, the script (one Redis) or (3) ends with `WAIT` on each node
        written to."""
        if not tasks:
            return []
        if self.one_redis:
            return self._submit_whole(job, tasks, specs_version, bounds, archive_checked_ms)
        ids = [t.id for t in tasks]
        first = [("SADD", keys.JOBS, job)] + [("SET", keys.index(i), job, "NX", "PX", CLAIM_TTL_MS, "GET") for i in ids]
        version, _, *owners = self._pipelined([], ("GET", keys.SPECS_VERSION), *first)
        fresh = [i for i, owner in zip(ids, owners) if owner is None]
        theirs = {i for i, owner in zip(ids, owners) if owner not in (None, job)}
        if specs_version and version != specs_version:
            self._disown(job, fresh)
            raise StaleSpecs(f"executor specs changed since version {specs_version!r} was read")
        reserved = 0
        if bounds[1]:
            r = self._run("reserve", [keys.OPEN_TASKS], [len(fresh), bounds[1]])
            if r[0] == "full":
                self._disown(job, fresh)
                raise Full("all", "", int(r[1]), len(fresh))
            reserved = len(fresh)
        mine = [t for t in tasks if t.id not in theirs]
        out = self._create(job, mine, bounds[0], archive_checked_ms) if mine else []
        if out and out[0] in ("recheck", "full"):
            self._disown(job, fresh, -reserved)
            if out == ["recheck"]:
                raise Recheck(f"the archive was checked over 5 s before the create of {job!r}'s batch")
            raise Full("job", job, int(out[1]), int(out[2]))
        statuses = dict(zip([t.id for t in mine], [str(x) for x in out]))
        created = [i for i, status in statuses.items() if status in ("created", "scheduled")]
        live = [i for i, status in statuses.items() if status in ("created", "scheduled", "exists", "conflict")]
        calls: list[tuple[str, list[str], list[Any]]] = [("own", [keys.index(i)], [job]) for i in live]
        calls += [("disown", [keys.index(i)], [job]) for i in fresh if i not in live]
        if len(created) != reserved:
            calls.append(("count", [keys.OPEN_TASKS], [len(created) - reserved]))
        more: list[tuple[Any, ...]] = [("SADD", keys.JOBS, job), ("ZREM", keys.JOBS_DONE, job)] if created else []
        if created and self._wait[0]:
            more.append(("EXISTS", keys.job_meta(job)))  # so that the job's node, which (2) wrote to, WAITs too
        if calls or more:
            self._pipelined(calls, *more, wait=bool(created))
        return [statuses.get(i, "conflict").removeprefix("retired-") for i in ids]

    def _submit_whole(self, job: str, tasks: list[NewTask], specs_version: str | None, bounds: tuple[int, int],
                      archive_checked_ms: int | None) -> list[str]:
        """`submit` on one Redis: claims, bounds, create, count and job sets in one script."""
        out = self._create(job, tasks, bounds[0], archive_checked_ms, whole=(bounds[1], specs_version or ""))
        match out:
            case ["stale"]:
                raise StaleSpecs(f"executor specs changed since version {specs_version!r} was read")
            case ["recheck"]:
                raise Recheck(f"the archive was checked over 5 s before the create of {job!r}'s batch")
            case ["full", open_, asked]:
                raise Full("job", job, int(open_), int(asked))
            case ["full-all", open_, asked]:
                raise Full("all", "", int(open_), int(asked))
        return [str(x).removeprefix("retired-") for x in out]

    def _create(self, job: str, tasks: list[NewTask], per_job: int, archive_checked_ms: int | None,
                whole: tuple[int, str] | None = None) -> list[Any]:
        """submit.lua on the job's slot (see `submit`); `whole` (the bound on all jobs, the specs
        version read): the whole submit in that one script, on one Redis."""
        args: list[Any] = [job, per_job, keys.tombstone(job, ""), "1" if whole else "", *(whole or ("", ""))]
        for t in tasks:
            args += [t.id, t.type, t.payload, t.digest, t.max_attempts, t.timeout_s, t.parent, t.revives, t.round,
                     t.history, t.due, t.priority]
        args.append(archive_checked_ms if archive_checked_ms is not None else "")
        if any(t.join for t in tasks):
            args += [keys.join(job, ""), keys.joins(job), *[t.join for t in tasks]]
        ks = [keys.job_meta(job), keys.by_state(job, TaskState.PENDING), *_open_keys(job),
              *[keys.task(job, t.id) for t in tasks]]
        if whole:
            ks += [*[keys.index(t.id) for t in tasks], keys.OPEN_TASKS, keys.JOBS, keys.JOBS_DONE, keys.SPECS_VERSION]
        return cast(list[Any], self._pipelined([("submit", ks, args)], wait=bool(whole))[0])

    def _disown(self, job: str, ids: list[str], count: int = 0) -> None:
        """Give up claims a submit made and will not use (and what it reserved of the count, `count` < 0)."""
        calls: list[tuple[str, list[str], list[Any]]] = [("disown", [keys.index(i)], [job]) for i in ids]
        if count:
            calls.append(("count", [keys.OPEN_TASKS], [count]))
        if calls:
            self._pipelined(calls)

    def check_bounds(self, groups: dict[str, list[NewTask]], bounds: tuple[int, int]) -> None:
        """Raise Full if the new tasks of a batch spanning several jobs (by job) would pass a bound;
        one round trip, read only. The creates that follow go unchecked, so the batch is never
        created in part; a concurrent batch admitted in between may pass the bound by its size."""
        per_job, everywhere = bounds
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.OPEN_TASKS)
        for job, tasks in groups.items():
            for k in (keys.by_state(job, TaskState.PENDING), *_open_keys(job)):
                pipe.zcard(k)
            for t in tasks:
                pipe.get(keys.index(t.id))
                pipe.exists(keys.task(job, t.id))
        replies = iter(pipe.execute())
        total, asked_all = int(next(replies) or 0), 0
        for job, tasks in groups.items():
            open_ = sum(next(replies) for _ in range(len(_open_keys(job)) + 1))
            found = [(next(replies), next(replies)) for _ in tasks]
            asked = sum(1 for owner, there in found if owner in (None, job) and not there)
            if per_job and open_ + asked > per_job:
                raise Full("job", job, open_, asked)
            asked_all += asked
        if everywhere and total + asked_all > everywhere:
            raise Full("all", "", total, asked_all)

    def open_tasks(self) -> int:
        """Live tasks of all jobs, as counted for `[manager].max_open_tasks`."""
        return int(self.redis.get(keys.OPEN_TASKS) or 0)

    # --- worker transitions -------------------------------------------------------------------------
    def lease(self, job: str, task_id: str, exec_id: str, worker: str, ttl_ms: int,
              type_hint: str = "", ahead: bool = False, started: Lease | None = None) -> tuple[Lease | str, str | None]:
        """(Lease, its executor spec as stored: JSON text, see `taskherd.specs.spec_from_text`), or (why not, None):
        'gone' (archived, torn down, unknown) or the
        state the task is already in. With the type hint from the message, the spec comes in the same
        round trip; a replaced executor is thus used from the next task on, with no cache to invalidate.
        `ahead`: the slot's executor runs another task meanwhile; the job counts this one `leased`
        until `start` (or the lease's end). With `started`, `start(started)` in the same round trip."""
        _, leased = self.record([], started, [(job, task_id, exec_id, worker, ttl_ms, type_hint, ahead)])
        return leased[0]

    def record(self, finishing: list[tuple[Any, ...]], started: Lease | None, leasing: list[LeaseArgs],
               ) -> tuple[list[str], list[tuple[Lease | str, str | None]]]:
        """`finish(*f)` for each of `finishing`, `start(started)` (when given), then `lease(*l)` for each
        of `leasing`, all in one round trip: in a drain a slot's outcomes, the start of its next task and
        the leases of the ones after fall due at the same moment, and each round trip waits for an fsync
        (AOF always). (finish's answers, lease's pairs as `lease` returns them.)"""
        calls = [self._finish_call(*f) for f in finishing] + _start_calls(started) + [
            ("lease", [keys.task(job, task_id), keys.by_state(job, TaskState.PENDING),
                       keys.by_state(job, TaskState.RUNNING), keys.leased(job)],
             [task_id, exec_id, worker, ttl_ms, int(ahead)])
            for job, task_id, exec_id, worker, ttl_ms, _, ahead in leasing]
        hints = list(dict.fromkeys(hint or "-" for *_, hint, _ in leasing))
        asked_at = time.monotonic()
        replies = self._pipelined(calls, *[("GET", keys.executor(hint)) for hint in hints])
        finished = [str(r) for r in replies[:len(finishing)]]
        specs = dict(zip(hints, replies[len(calls):]))
        leased: list[tuple[Lease | str, str | None]] = []
        for (job, task_id, exec_id, _, _, hint, ahead), r in zip(leasing, replies[len(calls) - len(leasing):len(calls)]):
            if r[0] != "ok":
                leased.append(((r[1] if len(r) > 1 else r[0]), None))
                continue
            lease = Lease(job, task_id, exec_id, r[1], r[2], float(r[3]), int(r[4]), int(r[5]), int(r[6]), ahead,
                          asked_at, int(r[7]) if len(r) > 7 else 5)
            raw = specs[hint or "-"] if lease.type == hint else self.redis.get(keys.executor(lease.type))
            leased.append((lease, cast(str | None, raw)))
        return finished, leased

    def renew(self, job: str, held: list[tuple[str, str]], ttl_ms: int,
              progress: Mapping[str, str] | None = None) -> list[bool]:
        """Renew leases (task id, exec id) of one job; False where the execution was superseded.
        `progress`: exec id -> its latest progress report (JSON), written to the task where renewed."""
        args: list[Any] = [ttl_ms]
        for task_id, exec_id in held:
            args += [task_id, exec_id, (progress or {}).get(exec_id, "")]
        r = self._run("renew", [keys.by_state(job, TaskState.RUNNING), *[keys.task(job, t) for t, _ in held]], args)
        return [bool(x) for x in r]

    def finish(self, lease: Lease, outcome: str, result: dict[str, Any] | None, error: str, retry_delay_ms: int,
               record: dict[str, Any], started: Lease | None = None) -> str:
        """'ring' (analyzing; ring the job's results doorbell) | 'analyzing' | 'retry' | 'fenced' | 'gone'.
        With `started`, `start(started)` in the same round trip, after the finish."""
        calls = [self._finish_call(lease, outcome, result, error, retry_delay_ms, record), *_start_calls(started)]
        return str(self._pipelined(calls)[0])

    def start(self, lease: Lease) -> bool:
        """The slot started the executor of a task it leased ahead: the job counts it running, no
        longer leased. False if the execution is no longer the live one (nothing changes then)."""
        calls = _start_calls(lease)
        return bool(calls) and bool(self._pipelined(calls)[0])

    @staticmethod
    def _finish_call(lease: Lease, outcome: str, result: dict[str, Any] | None, error: str, retry_delay_ms: int,
                     record: dict[str, Any]) -> tuple[str, list[str], list[Any]]:
        job, tid = lease.job, lease.task_id
        ks = [keys.task(job, tid), keys.executions(job, tid), keys.by_state(job, TaskState.RUNNING),
              keys.by_state(job, TaskState.ANALYZING), keys.by_state(job, TaskState.RETRY), keys.job_meta(job), keys.rung(job),
              keys.leased(job)]
        args = [tid, lease.exec_id, outcome, json.dumps(result) if result is not None else "", error or "",
                retry_delay_ms, json.dumps(record), keys.finished(tid)]
        return "finish", ks, args

    def release(self, lease: Lease) -> bool:
        """Hand a running task back to pending (drain); False if the execution was already superseded."""
        ks = [keys.task(lease.job, lease.task_id), keys.by_state(lease.job, TaskState.RUNNING),
              keys.by_state(lease.job, TaskState.PENDING), keys.leased(lease.job)]
        return bool(self._run("release", ks, [lease.task_id, lease.exec_id]))

    # --- watcher transitions ------------------------------------------------------------------------
    def requeue(self, job: str, task_id: str, fence_ms: int = 0) -> str:
        """A running task whose lease expired to pending (or to analyzing, out of attempts); 'alive' if
        its lease has not expired. `fence_ms`: the watcher's lease fence (TimeoutWatcher), 0 for none;
        raises LeaseLapsed, nothing done, once Redis's clock has reached it."""
        ks = [keys.task(job, task_id), keys.executions(job, task_id), keys.by_state(job, TaskState.RUNNING),
              keys.by_state(job, TaskState.PENDING), keys.by_state(job, TaskState.ANALYZING), keys.leased(job)]
        moved = str(self._run("requeue", ks, [task_id, fence_ms]))
        if moved == "lapsed":
            raise LeaseLapsed(f"requeue of {job}/{task_id}")
        return moved

    def promote(self, job: str, task_id: str, state: TaskState = TaskState.RETRY, fence_ms: int = 0) -> bool:
        """One task waiting in `state` (retry or scheduled) to pending if it is due; False if it was not."""
        return bool(self.promote_due(job, state, [task_id], fence_ms))

    def promote_due(self, job: str, state: TaskState, ids: list[str], fence_ms: int = 0) -> list[str]:
        """Tasks of one job waiting in `state` (retry or scheduled) whose due time has come, to pending in
        one round trip; returns those moved (to be published). `fence_ms` as in `requeue`; 0 for a caller
        that holds no lease (an analyzer's join task, due the moment its last child is archived)."""
        if not ids:
            return []
        ks = [keys.by_state(job, state), keys.by_state(job, TaskState.PENDING)]
        moved = self._run("promote", ks, [state, keys.task(job, ""), fence_ms, *ids])
        if not isinstance(moved, list):
            raise LeaseLapsed(f"promotion of {len(ids)} {state} task(s) of {job}")
        return [str(x) for x in moved]

    def due(self, job: str, state: str, before_ms: int, limit: int = 500) -> list[str]:
        """Ids in a live state whose score (lease expiry, due time, publish time) is before `before_ms`."""
        return cast(list[str], self.redis.zrangebyscore(keys.by_state(job, state), "-inf", before_ms, start=0, num=limit))

    def touch_state(self, job: str, state: str, ids: list[str]) -> None:
        """Mark waiting tasks (pending, analyzing) as just republished, so they are not republished at once."""
        now = self.now_ms()
        self.redis.zadd(keys.by_state(job, state), dict.fromkeys(ids, now), xx=True)

    # --- cancel and retry ----------------------------------------------------------------------------
    def cancel(self, job: str, task_id: str) -> str:
        """The state the task was in ('gone' if not live). Waiting tasks move to analyzing at once;
        a running one is flagged and its worker kills it at the next lease renewal."""
        ks = [keys.task(job, task_id), *[keys.by_state(job, s) for s in (TaskState.PENDING, TaskState.RETRY,
                                                                         TaskState.ANALYZING, TaskState.SCHEDULED)]]
        return str(self._run("cancel", ks, [task_id]))

    def cancel_job(self, job: str) -> list[tuple[str, str]]:
        """Refuse new tasks in the job, then cancel each live one; returns (task id, prior state)."""
        self.redis.hset(keys.job_meta(job), "cancel_requested", 1)
        out = []
        for state in (*WAITING_STATES, TaskState.RUNNING):
            for task_id in cast(list[str], self.redis.zrange(keys.by_state(job, state), 0, -1)):
                out.append((task_id, self.cancel(job, task_id)))
        return out

    # --- analysis, and retiring what MySQL has archived ----------------------------------------------
    def retire(self, job: str, done: list[tuple[str, str]], outcomes: Mapping[str, str] | None = None,
               fired: list[str] | None = None) -> tuple[list[str], bool]:
        """Once their rows are in MySQL: for each (task id, final state) of one job, delete the task
        from Redis and count it into its final state: 'ok', or 'skip' (not awaiting analysis: a
        duplicate); and whether the job just finished. One round trip for the batch.

        Fan-in: `outcomes` (task id -> JSON {id, state, record, error}) for tasks in a join, kept for
        the join task's payload when they are listed children; a join whose last member this retires
        fires: its held task gets its payload and comes due, and its id is appended to `fired` (the
        caller promotes and publishes it; the TimeoutWatcher does, should the caller die first)."""
        outcomes = outcomes or {}
        args = [keys.task(job, ""), keys.executions(job, ""), keys.tombstone(job, ""), keys.join(job, ""), keys.joins(job),
                *[x for tid, state in done for x in (tid, state, outcomes.get(tid, ""))]]
        out = self._run("retire", [keys.job_meta(job), *[keys.by_state(job, s) for s in LIVE_STATES]], args)
        retired = [tid for (tid, _), r in zip(done, out) if r == "ok"]
        if retired:  # the ids stay the job's TOMBSTONE_MS more: another job's resubmit racing the archive conflicts
            self._pipelined([("count", [keys.OPEN_TASKS], [-len(retired)])],
                            *[("PEXPIRE", keys.index(tid), TOMBSTONE_MS) for tid in retired])
        if fired is not None:
            fired += [str(x) for x in out[len(done) + 1:]]
        return out[:len(done)], out[len(done)] == "done"

    def register_join(self, job: str, parent: str, task: NewTask, listed: list[str],
                      outside: Mapping[str, str]) -> str:
        """The analyzer of `parent` declared a fan-in join over its children `listed` (submitted just
        before): create the join task `task` held (scheduled, never due until the join fires) and
        register the join, in one step. `outside`: the outcome (JSON {id, state, record, error}) to
        give a listed child that is no member (archived before, or never created: cancelled,
        conflict). 'registered' | 'exists' (registered before: an analysis run again) | 'gone' (the
        parent is no longer awaiting analysis) | 'cancelled' (the job refuses new tasks) | 'conflict'
        (the join task's id is taken)."""
        owner = self._pipelined([], ("SET", keys.index(task.id), job, "NX", "PX", CLAIM_TTL_MS, "GET"))[0]
        if owner not in (None, job):
            return "conflict"
        ks = [keys.job_meta(job), keys.by_state(job, TaskState.SCHEDULED), keys.joins(job), keys.task(job, parent),
              keys.join(job, parent), keys.task(job, task.id)]
        args = [job, parent, task.id, task.type, task.payload, task.digest, task.max_attempts, task.timeout_s,
                keys.task(job, ""), keys.join(job, ""), json.dumps(listed),
                *[x for cid in listed for x in (cid, outside.get(cid, ""))]]
        answer = str(self._run("join", ks, args))
        if answer == "registered":
            self._pipelined([("own", [keys.index(task.id)], [job]), ("count", [keys.OPEN_TASKS], [1])])
        elif owner is None:
            self._disown(job, [task.id])
        return answer

    # --- reads --------------------------------------------------------------------------------------
    def priorities(self, job: str, ids: list[str]) -> list[int]:
        """The priority of each of one job's tasks (5 for one gone or created without one), in one round
        trip: what is published again (a requeue, a retry, a delayed task due) goes on its topic."""
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.hget(keys.task(job, task_id), "priority")
        return [int(p) if p else 5 for p in pipe.execute()]

    def job_of(self, task_id: str) -> str | None:
        return cast(str | None, self.redis.get(keys.index(task_id)))

    def task(self, job: str, task_id: str) -> dict[str, Any] | None:
        """The live task with its executions, or None once archived (or never submitted); `leased_ahead`
        says a running one is leased ahead, its executor not started yet."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(keys.task(job, task_id))
        pipe.lrange(keys.executions(job, task_id), 0, -1)
        pipe.sismember(keys.leased(job), task_id)
        fields, execs, ahead = pipe.execute()
        if not fields:
            return None
        return {**with_executions(fields, execs), "leased_ahead": bool(ahead)}

    def claim_results(self, job: str, limit: int, claim_ms: int, type_hints: Iterable[str] = ()
                      ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any] | None]]:
        """Up to `limit` of the job's tasks awaiting analysis, claimed for `claim_ms`, with their
        executions and analyses count; and the analyzer specs of their types. One round trip when the
        doorbells named every type (`type_hints`), one more otherwise."""
        hinted = [t for t in dict.fromkeys(type_hints) if t]
        rows, *got = self._pipelined(
            [("claim", [keys.by_state(job, TaskState.ANALYZING), keys.rung(job)],
              [limit, claim_ms, keys.task(job, ""), keys.executions(job, "")])],
            *([("MGET", *[keys.analyzer(t) for t in hinted])] if hinted else []))
        specs = {t: json.loads(r) if r else None for t, r in zip(hinted, got[0] if got else [])}
        tasks = [with_executions(dict(zip(f[::2], f[1::2])), x) for f, x in rows]
        missing = {t["type"] for t in tasks} - set(specs)
        if missing:
            specs |= self.specs("analyzer", missing)
        return tasks, specs

    def unclaim(self, job: str, ids: list[str], delay_ms: int) -> None:
        """Claimed results become claimable again after `delay_ms` (0: at once)."""
        if ids:
            at = self.now_ms() + delay_ms
            self.redis.zadd(keys.by_state(job, TaskState.ANALYZING), dict.fromkeys(ids, at), xx=True)

    def job(self, job: str) -> dict[str, Any] | None:
        """Counters by state, or None when Redis knows nothing of the job. `running` counts started
        executions; `leased` the running tasks leased ahead, not started yet (`open` counts both)."""
        pipe = self.redis.pipeline(transaction=True)  # one instant: leased ones are in the running set too
        pipe.hgetall(keys.job_meta(job))
        for s in LIVE_STATES:
            pipe.zcard(keys.by_state(job, s))
        pipe.scard(keys.leased(job))
        meta, *live, ahead = pipe.execute()
        if not meta:
            return None
        counts: dict[str, int] = dict(zip(LIVE_STATES, live))
        counts[LEASED] = min(ahead, counts[TaskState.RUNNING])
        counts[TaskState.RUNNING] -= counts[LEASED]
        for s in FINAL_STATES:
            counts[s] = int(meta.get(s, 0))
        return {"counts": counts, "open": sum(live), "total": int(meta.get("total", 0)),
                "done": meta.get("done") == "1", "created_ms": _int(meta.get("created")),
                "finished_ms": _int(meta.get("finished")), "fenced": int(meta.get("fenced", 0)),
                "summarized": meta.get("summarized") == "1"}

    def load(self, job: str) -> tuple[int, int | None]:
        """(tasks of the job not yet archived, when its longest-waiting pending task was published
        (ms, Redis clock) or None); one round trip, for the manager's gauges."""
        pipe = self.redis.pipeline(transaction=False)
        for s in LIVE_STATES:
            pipe.zcard(keys.by_state(job, s))
        pipe.zrange(keys.by_state(job, TaskState.PENDING), 0, 0, withscores=True)
        *live, oldest = pipe.execute()
        return sum(live), (int(oldest[0][1]) if oldest else None)

    def mark_summarized(self, job: str) -> None:
        self._run("summarized", [keys.job_meta(job)], [])

    def count(self, job: str, state: str, before_ms: int | None = None) -> int:
        """Tasks in a live state (with a score before `before_ms`, when given)."""
        if before_ms is None:
            return self.redis.zcard(keys.by_state(job, state))
        return self.redis.zcount(keys.by_state(job, state), "-inf", before_ms)

    def ids_in_state(self, job: str, state: str, offset: int, limit: int) -> list[str]:
        return cast(list[str], self.redis.zrange(keys.by_state(job, state), offset, offset + limit - 1))

    def jobs(self) -> set[str]:
        """The open jobs (a done job is settled out of them)."""
        return cast(set[str], self.redis.smembers(keys.JOBS))

    def settle(self, job: str) -> bool:
        """Move a done job out of the open jobs, into the done ones; False if it is still open.

        On one Redis, one script. On a cluster the job sets are global (other nodes than the job's),
        so three steps: read the job's done flag, move it, read the flag again; if a submit opened the
        job meanwhile, move it back (a submit puts its job among the open ones before and after it
        creates, so either that second add or this re-check keeps it); if a teardown deleted the job
        meanwhile, take it out of both (a torn-down job put back would be a key a system teardown
        finds left over)."""
        if self.one_redis:
            return bool(self._run("settle", [keys.job_meta(job), keys.JOBS, keys.JOBS_DONE], [job]))
        done, finished = self.redis.hmget(keys.job_meta(job), ["done", "finished"])
        if self._gone(job, done):
            self.redis.srem(keys.JOBS, job)  # nothing was ever created in it
            return True
        if done != "1":
            return False
        self._pipelined([], ("SREM", keys.JOBS, job), ("ZADD", keys.JOBS_DONE, int(finished or 0), job))
        done = self.redis.hget(keys.job_meta(job), "done")
        if done == "1":
            return True
        if self._gone(job, done):
            self._pipelined([], ("ZREM", keys.JOBS_DONE, job))
            return True
        self._pipelined([], ("SADD", keys.JOBS, job), ("ZREM", keys.JOBS_DONE, job))
        return False

    def _gone(self, job: str, done: object) -> bool:
        """No done flag read because the job has no meta at all (never created, or torn down)."""
        return done is None and not self.redis.exists(keys.job_meta(job))

    def done_before(self, before_ms: int, limit: int = 100) -> list[str]:
        """Done jobs that finished before `before_ms`, oldest first."""
        return cast(list[str], self.redis.zrangebyscore(keys.JOBS_DONE, "-inf", before_ms, start=0, num=limit))

    def recently_done(self, limit: int) -> list[str]:
        """Done jobs still in Redis (within `retain_done_s` of finishing), the latest first: the
        dashboard's "recently done"."""
        return cast(list[str], self.redis.zrevrange(keys.JOBS_DONE, 0, limit - 1))

    def expire(self, job: str) -> bool:
        """Delete a done job's runtime state (its summary must be in MySQL first); False if it is open again."""
        if not self._run("expire", [keys.job_meta(job), keys.rung(job), *[keys.by_state(job, s) for s in LIVE_STATES]], []):
            return False
        self.redis.zrem(keys.JOBS_DONE, job)
        return True

    def now_ms(self) -> int:
        """Redis's clock, the one clock every lease and deadline is measured on."""
        sec, usec = self.redis.time()
        return sec * 1000 + usec // 1000

    # --- specs --------------------------------------------------------------------------------------
    def register(self, kind: str, task_type: str, spec: dict[str, Any], replace: bool) -> str:
        """'created' | 'unchanged' | 'replaced' | 'conflict'."""
        body = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        return str(self._run("register", [keys.SPEC_TYPES[kind](task_type), keys.SPECS_VERSION],
                             [body, "1" if replace else "0", uuid.uuid4().hex]))

    def spec(self, kind: str, task_type: str) -> dict[str, Any] | None:
        raw = self.redis.get(keys.SPEC_TYPES[kind](task_type))
        return json.loads(raw) if raw else None

    def executor_specs(self, task_types: Iterable[str]) -> tuple[str, dict[str, dict[str, Any] | None]]:
        """(the specs version, the executor specs of `task_types`), in one MGET."""
        extra, specs = self._read_specs("executor", task_types, keys.SPECS_VERSION)
        return extra[0] or "", specs

    def specs(self, kind: str, task_types: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        return self._read_specs(kind, task_types)[1]

    def _read_specs(self, kind: str, task_types: Iterable[str],
                    *extra_keys: str) -> tuple[list[str | None], dict[str, dict[str, Any] | None]]:
        """(the values of `extra_keys`, the specs by type), read in one MGET."""
        types = list(dict.fromkeys(task_types))
        names = [keys.SPEC_TYPES[kind](t) for t in types] + list(extra_keys)
        raws = self._roundtrip([("MGET", *names)])[0] if names else []
        return raws[len(types):], {t: json.loads(r) if r else None for t, r in zip(types, raws)}

    def spec_types(self, kind: str) -> list[str]:
        """Every task type with a spec of `kind`, sorted."""
        prefix = keys.SPEC_TYPES[kind]("")
        return sorted(k[len(prefix):] for k in self.redis.scan_iter(match=prefix + "*", count=1000))

    # --- teardown -----------------------------------------------------------------------------------
    def teardown(self, job: str) -> list[str]:
        """Delete every key of the job and its id claims; return what is still there (should be []).

        Its keys are found from the job itself (its live-state sets name its live tasks; nothing else
        of it is per task), never by scanning the keyspace: a small job's teardown costs the same
        beside a million unrelated keys."""
        ids = self._live_ids(job)
        joins = cast(set[str], self.redis.smembers(keys.joins(job)))
        live = self._run("forget", [keys.by_state(job, s) for s in LIVE_STATES], [])
        if live:
            self._run("count", [keys.OPEN_TASKS], [-int(live)])
        for batch in _chunks(iter([*self._job_keys(job, ids), *[keys.join(job, j) for j in joins]]), 500):
            self.redis.delete(*batch)
        for batch in _chunks(iter(ids), 500):
            self._pipelined([], *[("DEL", keys.index(tid)) for tid in batch])
        pipe = self.redis.pipeline(transaction=False)
        pipe.srem(keys.JOBS, job)
        pipe.zrem(keys.JOBS_DONE, job)
        pipe.execute()
        return self.leftovers(job, ids)

    def leftovers(self, job: str, ids: list[str] | None = None) -> list[str]:
        """Keys of the job (and the tasks `ids`, by default those it has live) still in Redis."""
        ids = self._live_ids(job) if ids is None else ids
        names = self._job_keys(job, ids)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(name)
        for tid in ids:
            pipe.get(keys.index(tid))
        pipe.sismember(keys.JOBS, job)
        pipe.zscore(keys.JOBS_DONE, job)
        *exist, open_, done = pipe.execute()
        exist, owners = exist[:len(names)], exist[len(names):]
        left = [name for name, n in zip(names, exist) if n]
        left += [keys.index(tid) for tid, owner in zip(ids, owners) if owner == job]
        left += [f"{keys.JOBS}[{job}]"] if open_ else []
        left += [f"{keys.JOBS_DONE}[{job}]"] if done is not None else []
        return left

    def _live_ids(self, job: str) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for s in LIVE_STATES:
            pipe.zrange(keys.by_state(job, s), 0, -1)
        return [tid for ids in pipe.execute() for tid in ids]

    @staticmethod
    def _job_keys(job: str, ids: list[str]) -> list[str]:
        return [keys.job_meta(job), keys.rung(job), *[keys.by_state(job, s) for s in LIVE_STATES], keys.leased(job),
                keys.joins(job), *[k for tid in ids for k in (keys.task(job, tid), keys.executions(job, tid))]]


def _pack(commands: list[tuple[Any, ...]]) -> list[bytes]:
    """RESP for `commands` (str, bytes, int and float arguments), as redis-py's pack_commands makes it,
    at a tenth of its cost (its per-argument encoding in Python was a tenth of a worker slot's CPU)."""
    try:
        return [hiredis.pack_command(command) for command in commands]
    except TypeError as exc:
        raise redis.DataError(str(exc)) from None


def _start_calls(started: Lease | None) -> list[tuple[str, list[str], list[Any]]]:
    """start.lua's call for a lease whose executor the slot started, when it was leased ahead."""
    if started is None or not started.ahead:
        return []
    return [("start", [keys.task(started.job, started.task_id), keys.leased(started.job)],
             [started.task_id, started.exec_id])]


def _open_keys(job: str) -> list[str]:
    """submit.lua's keys for counting open tasks: the job's running, retry, analyzing and scheduled sets
    (its pending set is passed anyway)."""
    return [keys.by_state(job, TaskState.RUNNING), keys.by_state(job, TaskState.RETRY),
            keys.by_state(job, TaskState.ANALYZING), keys.by_state(job, TaskState.SCHEDULED)]


def _lua(name: str) -> str:
    return resources.files("taskherd.store").joinpath(f"lua/{name}.lua").read_text()


def _int(v: str | None) -> int | None:
    return int(v) if v is not None else None


def _chunks(it: Iterable[Any], n: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _closed(conn: Any) -> bool:
    """Whether an idle connection was closed by its server: readable with no command sent (EOF, or
    an error Redis wrote as it closed it)."""
    try:
        return bool(conn.can_read(0))
    except (redis.ConnectionError, OSError):
        return True
