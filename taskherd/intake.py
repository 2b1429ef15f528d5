"""Intake: how a task enters the system, whether from the API or from an analyzer's children.

Order matters for "nothing lost, nothing doubled": the archive (MySQL) is asked first whether an id
was already finished, then Redis creates what is new (one script per job), then NSQ is rung. A crash
after the Redis write leaves a pending task that the TimeoutWatcher republishes; a crash before it
leaves nothing, and the caller's retry with the same id is safe.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taskherd import metrics
from taskherd.config.settings import Settings
from taskherd.errors import HerdFull, InvalidInput, InvalidTask, QueueError
from taskherd.nsq.messages import TaskRef
from taskherd.nsq.publisher import Publisher
from taskherd.specs import DEFAULT_PRIORITY, PRIORITIES, check_name
from taskherd.store.archive import Archive
from taskherd.store.state_store import Full, NewTask, Recheck, StaleSpecs, StateStore

log = logging.getLogger("taskherd.intake")

MAX_ID_CHARS = 255
MAX_DELAY_S = 366 * 24 * 3600
"""The longest `delay_s` (a year and a day)."""
MAX_RUN_AT_S = 253402300799
"""The latest `run_at` in epoch seconds: 9999-12-31T23:59:59Z, as far as RFC 3339 goes."""
RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)", re.ASCII)


@dataclass(frozen=True, slots=True)
class Submission:
    """A task as a user or an analyzer asks for it; defaults are filled in at intake."""

    type: str
    job: str
    payload: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    timeout_s: float | None = None
    max_attempts: int | None = None
    parent: str = ""
    delay_s: float | None = None
    """Not leased before this many seconds from now (listed `scheduled` until then)."""
    run_at: float | str | None = None
    """Not leased before this moment: epoch seconds, or RFC 3339 text with an offset. Not with delay_s."""
    join: str = ""
    """The fan-in join it is created in (an analyzer's children; see `join.lua`)."""
    priority: int | None = None
    """0-9, higher first; None: the executor spec's `priority`, else 5 (`taskherd.specs.DEFAULT_PRIORITY`)."""
    minted: bool = False
    """`id` was made by the caller a moment ago with `uuid.uuid4()` (as intake does for a task with no id),
    so the archive is not asked about it."""


@dataclass(frozen=True, slots=True)
class Accepted:
    id: str
    status: str
    """'created' | 'exists' | 'conflict' | 'cancelled' (the job refuses new tasks); from `retry`, 'retried'
    in place of 'created'"""


class UnknownType(InvalidTask):
    """A task whose type has no executor registered: the server's state, not the task's shape (the API
    answers 409: register an executor, then submit again)."""


def child_id(parent_id: str, position: int) -> str:
    """Deterministic, so re-running an analyzer on the same result re-submits the same ids (no-ops)."""
    return "c-" + hashlib.sha256(f"{parent_id}\0{position}".encode()).hexdigest()[:32]


def canonical(payload: Any, where: str = "payload") -> str:
    """`payload` as the JSON text stored and handed to the executor as is: strict JSON (NaN and Infinity
    are refused here, where the user hears which field, rather than failing every attempt at run time)."""
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise InvalidTask(where, "NaN and Infinity are not JSON numbers; send a number, null or a string") from None


def _check_name(where: str, value: Any) -> str:
    try:
        return check_name(where, value)
    except InvalidInput as exc:
        raise InvalidTask(exc.field, exc.problem) from None


class Intake:
    """Validates and submits batches of tasks. Thread-safe; shared by the API and the ResultAnalyzer.

    Executor specs (a task's type must have one; it gives the defaults) are kept between submissions
    under the specs version they were read at; the first Redis script of a batch refuses it if the
    version has moved since (a spec registered or replaced), and the batch is prepared again from a
    fresh read. So a submission pays no round trip for specs, yet sees a change as soon as an
    uncached read would have."""

    def __init__(self, settings: Settings, store: StateStore, archive: Archive, publisher: Publisher) -> None:
        self.settings = settings
        self.store = store
        self.archive = archive
        self.publisher = publisher
        self._specs: tuple[str, dict[str, dict[str, Any]]] = ("", {})
        """(specs version, executor specs by type) as last read; an empty version is never trusted."""

    def submit(self, subs: list[Submission], where: str = "tasks", bounded: bool = False) -> list[Accepted]:
        """Accept a batch all or nothing: any invalid task raises InvalidTask before anything is written.
        `bounded` (a user's submission; an analyzer's children are accepted work and never refused):
        a batch whose new tasks would pass `[manager].max_open_tasks` or `max_open_tasks_per_job`
        raises HerdFull, creating nothing."""
        version, tasks = self._prepare(subs, where, fresh=False)
        checked_ms = int(time.time() * 1000)
        known = self._known(tasks)
        m = self.settings.manager
        bounds = (m.max_open_tasks_per_job, m.max_open_tasks) if bounded else (0, 0)
        try:
            try:
                return self._create(tasks, dict(known), version, bounds, checked_ms)
            except StaleSpecs:  # a spec changed since we read them: read again, as an uncached submit does
                _, tasks = self._prepare(subs, where, fresh=True)
                return self._create(tasks, dict(known), None, bounds, checked_ms)
            except Recheck:  # we stalled between the archive and Redis (a long pause): ask the archive again
                return self._recheck(tasks, bounds)
        except Full as full:
            raise self._full(full) from None

    def _recheck(self, tasks: list[NewTask], bounds: tuple[int, int]) -> list[Accepted]:
        checked_ms = int(time.time() * 1000)
        known = self._known(tasks)
        try:
            return self._create(tasks, dict(known), None, bounds, checked_ms)
        except Recheck:  # fresh, yet too old for Redis: this host's clock is behind Redis's
            log.warning("this host's clock seems over 5 s behind Redis's; the archive race check is off for "
                        "this batch (keep clocks in sync with NTP)")
            return self._create(tasks, known, None, bounds)

    def _full(self, full: Full) -> InvalidTask | HerdFull:
        m = self.settings.manager
        setting, bound, where = (("max_open_tasks_per_job", m.max_open_tasks_per_job, f"job {full.job} has")
                                 if full.scope == "job" else ("max_open_tasks", m.max_open_tasks, "all jobs have"))
        if full.asked > bound:  # it could never fit: waiting would not help
            return InvalidTask("tasks", f"{full.asked} new tasks can never fit under [manager].{setting} = {bound}; "
                                       f"submit at most {bound} at a time")
        metrics.SUBMITS_REFUSED.labels(setting).inc()
        return HerdFull(setting, bound, where, full.open, full.asked)

    def retry(self, ids: list[str]) -> list[Accepted]:
        """Requeue dead letters (archived failed or cancelled tasks) under their own ids, fresh attempts,
        in a new retry round: 'retried' per task requeued ('exists' if it is live again already).

        The task keeps its history: the executions of every earlier round (each with its `round`) go
        with it into Redis and into its row when it ends again. The archived row stays until then, so a
        crash midway loses nothing; the job counts the task out of its final state as it comes back, in
        the same script.
        """
        rows = {r["id"]: r for r in self.archive.dead(ids)}
        subs = [Submission(type=r["type"], job=r["job"], payload=json.loads(r["payload"]), id=r["id"])
                for r in rows.values()]
        tasks = [dataclasses.replace(t, revives=rows[t.id]["state"], **_next_round(rows[t.id]))
                 for t in self._prepare(subs, "tasks", True)[1]]
        return [Accepted(a.id, "retried" if a.status == "created" else a.status) for a in self._create(tasks, {}, None)]

    def _create(self, tasks: list[NewTask], statuses: dict[str, str], specs_version: str | None,
                bounds: tuple[int, int] = (0, 0), archive_checked_ms: int | None = None) -> list[Accepted]:
        """Create what is new; an id named twice in one batch (an analyzer's two links to one page) is
        created once, and its later copies answer as a resubmission would: exists or conflict. The
        first job's script checks the specs version (raising StaleSpecs before anything is created);
        a spec changed between two jobs' scripts is the same race as one changed just after a read.
        `bounds` (raising Full before anything is created): a batch of one job is counted and created
        by one script; a batch of several jobs is checked first, then created unchecked."""
        first: dict[str, NewTask] = {}
        for t in tasks:
            first.setdefault(t.id, t)
        by_job: dict[str, list[NewTask]] = {}
        for t in first.values():
            if t.id not in statuses:
                by_job.setdefault(t.job, []).append(t)
        if len(by_job) > 1 and any(bounds):
            self.store.check_bounds(by_job, bounds)
            bounds = (0, 0)
        for job, group in by_job.items():
            statuses.update(zip([t.id for t in group], self.store.submit(job, group, specs_version, bounds,
                                                                         archive_checked_ms)))
            specs_version = None
        self.ring_tasks([TaskRef(t.job, t.id, t.type, t.priority) for t in first.values() if statuses[t.id] == "created"])
        # created scheduled (a delay still ahead): the TimeoutWatcher publishes it once it is due
        statuses = {i: "created" if s == "scheduled" else s for i, s in statuses.items()}
        return [Accepted(t.id, statuses[t.id] if t is first[t.id] else _again(first[t.id], t)) for t in tasks]

    def ring(self, bodies: list[bytes]) -> None:
        """Publish task refs; on failure the tasks stay pending in Redis and the watcher republishes."""
        if not bodies:
            return
        try:
            self.publisher.publish(self.settings.nsq.tasks_topic, bodies)
        except QueueError as exc:
            log.warning("publish of %d task(s) failed; the TimeoutWatcher will republish them: %s", len(bodies), exc)

    def ring_tasks(self, refs: list[TaskRef]) -> None:
        """Publish task refs, each on its priority's topic; on failure the watcher republishes them."""
        if not refs:
            return
        try:
            self.publisher.publish_tasks(refs)
        except QueueError as exc:
            log.warning("publish of %d task(s) failed; the TimeoutWatcher will republish them: %s", len(refs), exc)

    def _known(self, tasks: list[NewTask]) -> dict[str, str]:
        """Statuses of ids that are already archived: the same payload exists, anything else conflicts.
        An id made here (no id given) is not looked up: a one-task submit saves its MySQL round trip."""
        given = [t.id for t in tasks if not t.minted]
        if not given:
            return {}
        archived = self.archive.known(given)
        return {t.id: ("exists" if archived[t.id] == (t.job, t.digest) else "conflict")
                for t in tasks if t.id in archived}

    def prepare(self, subs: list[Submission], where: str) -> list[NewTask]:
        """Validate tasks and fill in their defaults, creating nothing (a fan-in join's task, which
        `StateStore.register_join` creates); raises InvalidTask naming the field."""
        return self._prepare(subs, where, fresh=False)[1]

    def _prepare(self, subs: list[Submission], where: str, fresh: bool) -> tuple[str | None, list[NewTask]]:
        """(the specs version to check at create, or None; the tasks with their defaults)."""
        types = {s.type for s in subs if isinstance(s.type, str)}
        version, specs = self._specs
        if fresh or not version or not types <= specs.keys():
            version, read = self.store.executor_specs(types)
            found = {t: spec for t, spec in read.items() if spec is not None}
            specs = {**specs, **found} if version == self._specs[0] else found
            self._specs = (version, specs)
        return version or None, [self._one(s, f"{where}[{i}]", specs) for i, s in enumerate(subs)]

    def _one(self, s: Submission, where: str, specs: Mapping[str, dict[str, Any] | None]) -> NewTask:
        _check_name(f"{where}.job", s.job)
        _check_name(f"{where}.type", s.type)
        spec = specs.get(s.type)
        if spec is None:
            raise UnknownType(f"{where}.type", f"no executor registered for task type {s.type!r}")
        task_id = s.id if s.id is not None else uuid.uuid4().hex
        if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID_CHARS:
            raise InvalidTask(f"{where}.id", f"expected a non-empty string of at most {MAX_ID_CHARS} characters")
        if not isinstance(s.payload, dict):
            raise InvalidTask(f"{where}.payload", f"expected a JSON object, got {type(s.payload).__name__}")
        payload = canonical(s.payload, f"{where}.payload")
        limit = self.settings.api.max_payload_bytes
        if len(payload.encode()) > limit:
            raise InvalidTask(f"{where}.payload", f"{len(payload.encode())} bytes exceeds the limit of {limit}")
        m = self.settings.manager
        timeout_s = _positive(f"{where}.timeout_s", s.timeout_s, spec.get("timeout_s") or m.default_timeout_s, float)
        default_attempts = spec.get("max_attempts") or self.settings.retry.max_attempts
        attempts = _positive(f"{where}.max_attempts", s.max_attempts, default_attempts, int)
        digest = hashlib.sha256(f"{s.type}\0{payload}".encode()).hexdigest()
        priority = s.priority if s.priority is not None else spec.get("priority", DEFAULT_PRIORITY)
        if isinstance(priority, bool) or not isinstance(priority, int) or priority not in PRIORITIES:
            raise InvalidTask(f"{where}.priority", f"expected an integer from 0 to 9 (higher first), got {priority!r}")
        return NewTask(task_id, s.job, s.type, payload, digest, attempts, timeout_s, s.parent,
                       due=_due(where, s.delay_s, s.run_at), join=s.join, priority=priority,
                       minted=s.id is None or s.minted)


def _next_round(row: dict[str, Any]) -> dict[str, Any]:
    """The round a retried dead letter enters, and the executions of its rounds so far (rows archived
    before rounds were kept have none marked: round 0)."""
    done = int(row.get("retry_round") or 0)
    execs = [{"round": done, **e} for e in json.loads(row.get("executions") or "[]")]
    return {"round": done + 1, "history": json.dumps(execs)}


def _again(first: NewTask, copy: NewTask) -> str:
    return "exists" if (copy.job, copy.digest) == (first.job, first.digest) else "conflict"


def _positive(where: str, given: Any, default: Any, kind: type) -> Any:
    value = default if given is None else given
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise InvalidTask(where, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if value <= 0 or value > 7 * 24 * 3600:
        raise InvalidTask(where, f"expected a value > 0 and ≤ 604800, got {value!r}")
    return kind(value)


def _due(where: str, delay_s: Any, run_at: Any) -> str:
    """NewTask.due from a task's `delay_s` or `run_at`: "" (at once), "+MS" (from now, on Redis's clock,
    so a host's clock never moves it) or Unix ms. Not in the digest: a resubmission with another delay
    is the same task (exists)."""
    if delay_s is not None and run_at is not None:
        raise InvalidTask(f"{where}.run_at", "give delay_s or run_at, not both")
    if delay_s is not None:
        if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or not 0 <= delay_s <= MAX_DELAY_S:
            raise InvalidTask(f"{where}.delay_s", f"expected a number of seconds ≥ 0 and ≤ {MAX_DELAY_S}, got {delay_s!r}")
        return f"+{round(delay_s * 1000)}"
    if run_at is None:
        return ""
    return str(round(run_at_seconds(f"{where}.run_at", run_at) * 1000))


def run_at_seconds(where: str, value: Any) -> float:
    """`run_at` as epoch seconds: a number of them, or RFC 3339 text (`2026-12-24T18:00:00Z`,
    `...+01:00`; an offset is required). A moment already past runs at once."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or not 0 <= value <= MAX_RUN_AT_S:
            raise InvalidTask(where, f"expected epoch seconds ≥ 0 and ≤ {MAX_RUN_AT_S}, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise InvalidTask(where, f"expected epoch seconds or an RFC 3339 date-time, got {type(value).__name__}")
    m = RFC3339.fullmatch(value)
    try:
        if not m:
            raise ValueError("not in the form 2026-12-24T18:00:00Z (an offset, Z or ±hh:mm, is required)")
        leap = m[6] == "60"  # a leap second: the moment after :59
        text = f"{value[:17]}{'59' if leap else m[6]}{m[7] or ''}{'+00:00' if m[8] in 'Zz' else m[8]}"
        return dt.datetime.fromisoformat(text[:10] + "T" + text[11:]).timestamp() + leap
    except ValueError as exc:
        raise InvalidTask(where, f"not an RFC 3339 date-time: {value!r}: {exc}") from None


def from_child(obj: Any, parent: dict[str, Any], position: int) -> Submission:
    """A Submission from an analyzer's child entry; the child joins its parent's job."""
    where = f"children[{position}]"
    if not isinstance(obj, dict):
        raise InvalidTask(where, f"expected an object, got {type(obj).__name__}")
    unknown = set(obj) - {"id", "type", "payload", "timeout_s", "max_attempts", "delay_s", "run_at", "priority"}
    if unknown:
        raise InvalidTask(f"{where}.{sorted(unknown)[0]}", "unknown field")
    return Submission(type=obj.get("type", parent["type"]), job=parent["job"], payload=obj.get("payload", {}),
                      id=obj.get("id") or child_id(parent["id"], position), timeout_s=obj.get("timeout_s"),
                      max_attempts=obj.get("max_attempts"), parent=parent["id"], delay_s=obj.get("delay_s"),
                      run_at=obj.get("run_at"), priority=obj.get("priority"))
