"""Every Redis key taskherd uses, built in one place.

Keys of one job carry the job's hash tag (`{j:NAME}`) so each Lua transition touches one slot and the
layout fits Redis Cluster. What is global (the job sets, the count of open tasks, nodes) is never
touched by the same script as a job's keys; the task-id index is one key per id (`index`), so it
spreads over the cluster like the jobs; specs share a tag of their own (`{specs}`).

Per job, Redis holds only live work: a task's hash and execution list are deleted when it is archived
to MySQL, so Redis memory follows the number of unfinished tasks, not the size of the job.
"""

from __future__ import annotations

PREFIX = "th"


def _tag(job: str) -> str:
    return f"{PREFIX}:{{j:{job}}}"


def task(job: str, task_id: str) -> str:
    """Hash: the task's fields and current state while it is live."""
    return f"{_tag(job)}:task:{task_id}"


def executions(job: str, task_id: str) -> str:
    """List of JSON execution records (one per attempt), kept until archive."""
    return f"{_tag(job)}:execs:{task_id}"


def job_meta(job: str) -> str:
    """Hash of the job's counters by state, its open count, done flag and times."""
    return f"{_tag(job)}:meta"


def by_state(job: str, state: str) -> str:
    """Sorted set of the job's task ids in a live state.

    Scores: pending = when published; running = lease expiry; retry = due time; analyzing = when the
    result was recorded, or when the analyzer's claim on it lapses; scheduled = its run_at (a delayed
    task: never published before). The TimeoutWatcher sweeps each by score.
    """
    return f"{_tag(job)}:{state}"


def leased(job: str) -> str:
    """Set of the job's running tasks a slot leased ahead, while its executor ran another: still
    leased (renewed, fenced, requeued on expiry like any running task), but not started. lease.lua
    adds one (ahead); the slot's next round trip after it starts the executor takes it out
    (start.lua, fenced by the execution id), as do finish, release and requeue. So the job's
    `running` count is the running set less this one, and `leased` is this one's size."""
    return f"{_tag(job)}:leased"


def rung(job: str) -> str:
    """String set while a results doorbell of the job is on its way to the manager: finish.lua sets
    it (NX) and tells the worker to ring only then; the analyzer deletes it before it claims. A busy
    job so rings once per batch of results, not once per task."""
    return f"{_tag(job)}:rung"


def join(job: str, join_id: str) -> str:
    """Hash of one fan-in join, named after the task whose analyzer declared it (`join.lua`): `open`,
    the join's members still live (its parent, counted from registration until it retires, and every
    task whose `join` field names it: the listed children and their descendants); `registered`, `task`
    (the held join task's id), `type`, `payload` and `listed` (the children's ids, JSON) once the
    parent registered it; `l:ID` per listed child and `r:ID` its outcome (id, state, record, error)
    once final. Deleted when it fires (retire.lua), or, never registered, once its parent and members
    are gone."""
    return f"{_tag(job)}:join:{join_id}"


def joins(job: str) -> str:
    """Set of the ids of the job's join hashes, so a teardown finds them without a scan."""
    return f"{_tag(job)}:joins"


def finished(task_id: str) -> str:
    """Pub/sub channel (not a key) on which finish.lua says the task's result is recorded, for the
    API's per-task wait (`taskherd.store.finishes`)."""
    return f"{PREFIX}:finished:{task_id}"


def job_pattern(job: str) -> str:
    """SCAN pattern matching every key of one job, for teardown and its verification."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in job)
    return f"{PREFIX}:{{j:{escaped}}}:*"


JOBS = f"{PREFIX}:jobs"
"""Set of open jobs (tasks not all archived); the TimeoutWatcher sweeps these and no others."""

JOBS_DONE = f"{PREFIX}:jobs-done"
"""Sorted set of done jobs still in Redis, scored by when they finished (ms): settled out of JOBS by
`settle.lua`, and expired (`expire.lua`) `[manager].retain_done_s` later."""

def index(task_id: str) -> str:
    """String: the job that owns a task id, so `GET /tasks/{id}` finds a task without its job and no
    two live jobs hold one id. A submit claims it before it creates the task (`SET NX`, with a TTL
    while unconfirmed) and confirms it (`own.lua`, no TTL) once created, or gives it up
    (`disown.lua`); an archived task's entry stays `TOMBSTONE_MS` more, so a resubmit from another job
    racing the archive is a conflict. One key per id: each hashes to its own slot."""
    return f"{PREFIX}:{{i:{task_id}}}"


TOMBSTONES = f"{PREFIX}:gone:"
"""Prefix of the tombstones (`tombstone`), outside every job's key pattern: they expire on their own,
and a teardown need not find them."""


def tombstone(job: str, task_id: str) -> str:
    """String, the digest of a task retired a moment ago (retire.lua, 10 s): submit.lua reads it, so a
    resubmit racing the archive of its own task is not run again. In the job's slot (its hash tag)."""
    return f"{TOMBSTONES}{{j:{job}}}:{task_id}"


OPEN_TASKS = f"{PREFIX}:open-tasks"
"""Integer: live tasks (pending, running, retry, analyzing, scheduled) in all jobs, for `[manager].max_open_tasks`.
A bounded submit reserves its new tasks first (`reserve.lua`) and gives back what it did not create;
a submit adds what it created, a retire takes out what it retired, a teardown what it deleted
(`count.lua`, never below 0); moves between live states leave it alone. Global, so it changes in a
step of its own beside the job's script: a process killed between the two leaves it off by that
batch (it is backpressure, not task state: nothing is lost or run twice by it)."""


_SPECS = f"{PREFIX}:{{specs}}"
"""Hash tag of the specs and their version: register.lua changes both in one step on one node, and a
submit reads the version and its types' specs in one MGET."""


def executor(task_type: str) -> str:
    return f"{_SPECS}:executor:{task_type}"


def analyzer(task_type: str) -> str:
    return f"{_SPECS}:analyzer:{task_type}"


SPEC_TYPES = {"executor": executor, "analyzer": analyzer}

SPECS_VERSION = f"{_SPECS}:version"
"""A fresh token on every spec change: an Intake keeps the specs it read under it, and `submit.lua`
refuses a batch prepared under another token (the Intake then reads the specs again)."""

NODES = f"{PREFIX}:nodes"
"""Sorted set node id -> expiry (ms); a node is live while its score is in the future."""


def node(node_id: str) -> str:
    """Hash of one node's registration; expires on its own if the node stops heartbeating."""
    return f"{PREFIX}:node:{node_id}"


STOP = f"{PREFIX}:stop"
"""Hash node id -> the `started` of its registration: the pods a system teardown (`--stop`) asked to
exit. Each pod's Registry reads its own entry on every heartbeat and stops its pod when the entry
names the registration it made (a pod started later, even with the same id, is not asked); a pod
deletes its entry as it deregisters, and the hash expires on its own (`membership.STOP_TTL_MS`)."""

WATCHER_LEASE = f"{PREFIX}:lease:timeout-watcher"
"""String holding the node id of the one active TimeoutWatcher, with a TTL (`lua/hold.lua`)."""


_SCHEDULES = f"{PREFIX}:{{sched}}"
"""Hash tag of the schedules' keys: the three below share one slot, so each transition of a schedule
(`lua/schedule.lua`, `unschedule.lua`, `fired.lua`) is one script on one Redis Cluster node."""

SCHEDULES = f"{_SCHEDULES}:defs"
"""Hash schedule name -> its definition (canonical JSON: cron or every_s, timezone, catch_up_s, task)."""

SCHEDULE_NEXT = f"{_SCHEDULES}:next"
"""Sorted set schedule name -> its next fire time (Unix ms): what the managers' Schedulers poll."""

SCHEDULE_FIRED = f"{_SCHEDULES}:fired"
"""Hash schedule name -> JSON of its last firing: `{"at": tick ms, "task": task id, "status": ...}`
(and `error` when the tick could not be submitted)."""


SERIES = f"{PREFIX}:series:"
"""Prefix of the dashboard's per-second counters (`series`): statistics, not task or job state."""


def series(second: int) -> str:
    """Hash of the dashboard's counters for one Unix second (`taskherd.store.series`): executions
    started and finished, tasks archived by final state, run times by bucket. Expires
    `series.RETENTION_S` after its second, so the series holds at most that many."""
    return f"{SERIES}{second}"


LIMITS = f"{PREFIX}:{{t:"
"""Prefix of every task type's limit keys (below): they expire on their own (a bucket once it would be
full again, seats a minute after their last renewal), so a system teardown keeps them."""


def _type_tag(task_type: str) -> str:
    """A task type's limit keys share this hash tag, apart from every job's: a limit is taken and given
    back in scripts of its own (`lua/take.lua`, `give.lua`, `seats.lua`), never inside a job's."""
    return f"{PREFIX}:{{t:{task_type}}}"


def rate_bucket(task_type: str) -> str:
    """Hash `tokens`, `at` (ms): the type's token bucket for `rate_limit_per_s` (refilled lazily by
    take.lua from the time passed; expires once it would be full again)."""
    return f"{_type_tag(task_type)}:rate"


def seats(task_type: str) -> str:
    """Sorted set exec id -> when its seat lapses (ms): the type's executions counted against
    `max_concurrency`. Renewed with their leases, removed as they end; a seat whose worker died
    lapses with its lease and is purged by the next take."""
    return f"{_type_tag(task_type)}:seats"
