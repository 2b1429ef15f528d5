"""Worker: one execution slot. Takes a message from its own feed, leases the task, runs its executor,
records the outcome, rings the manager (when no doorbell of the job is on its way).

Where a task is leased (`_lease`), run under its deadline (`Runner.run` kills the whole process tree
at the time-out), and finished (`_finish`, fenced by the execution id). The slot reads its own nsqd
connection (`Feed`) in its own thread, so a message reaches the executor with no thread hop. The
slot's Runner keeps a warm Python child between tasks, so a task costs a pipe round trip, not a fork.

Batches: a type whose runs are short (a python executor, no limits) is leased several at once, up to
BATCH_MOST or as many of its recent runs as fit in BATCH_SPAN_S, and their outcomes recorded together,
so a drain of short tasks pays one Redis round trip (and one fsync, with AOF always) per batch, not per
task. The tasks of a batch wait leased (counted `leased`) behind the one that runs, as the one task
leased ahead always has; if one runs long, the LeaseKeeper gives the rest back at its next tick.
"""

from __future__ import annotations

import logging
import os
import random
import select
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import pykka

from taskherd.actors.context import PodContext, find
from taskherd.actors.lease_keeper import LeaseKeeper, SlotStarted
from taskherd.actors.leases import BATCH_MOST, Ahead, Execution, Pause, give_back, give_seat, stale_after_s
from taskherd.errors import QueueError, StoreError
from taskherd.logs import task_fields
from taskherd.metrics import EXECUTION_SECONDS, LEASE_BATCH, TASKS
from taskherd.nsq.feed import Feed, FeedDelivery, finish_all
from taskherd.nsq.messages import TaskRef, decode
from taskherd.nsq.topics import task_topics
from taskherd.retries import retry_delay_ms
from taskherd.runners import Outcome, Runner, Started, StoredPayload
from taskherd.specs import InvalidSpec, NotAllowed, Runnable, RunnerSpec, TypeLimits, limits_of, runnable, spec_from_text
from taskherd.store.state_store import Lease, LeaseArgs
from taskherd.supervisor import Supervised

log = logging.getLogger("taskherd.worker")

CHANNEL = "workers"
POLL_S = 0.5
"""How long a slot waits on its feed before it reads its mailbox (a Pause, a stop) again."""
AHEAD_WAIT_S = 0.05
"""How long a slot whose executor runs waits for nsqd's next message (it comes ~0.5 ms after the FIN),
or, with tasks queued behind it, for the executor to end before it records what it holds."""
BATCH_SPAN_S = 0.05
"""How much of a slot's time one batch may take, judged by its type's recent runs: what waits behind a
batch (a more urgent message, an idle slot elsewhere) waits about this long at most."""
RUNS_KEPT = 4
"""A type's batches are sized by the shortest of its last RUNS_KEPT runs on the slot. By the last run
alone, a no-op's batch size swung whenever one call waited for a core (2 cores, a dozen processes),
and each swing sent RDY on every topic's connection: 15 % of a worker's GIL-held time. The shortest
of a few ignores such waits and a new child's start-up; a type that turned long stops batching
after RUNS_KEPT runs (meanwhile a batch behind a long task goes back at the next renewal tick)."""

Finishing = tuple[Lease, Outcome | str, dict[str, Any] | None]
"""An outcome the slot holds: its lease, what the executor returned, the executor spec it ran."""


@dataclass(frozen=True, slots=True)
class Poll:
    """Tell, to itself: run the next message of the slot's feed, if one comes within POLL_S."""


class Worker(Supervised, pykka.ThreadingActor):
    def __init__(self, ctx: PodContext, index: int, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.ctx, self.index = ctx, index
        self.name = f"{ctx.node_id}/{index}"
        self.runner = Runner(recycle_after=ctx.settings.worker.recycle_after,
                             max_result_bytes=ctx.settings.worker.max_result_bytes)
        self.execution = Execution(self.runner)
        self.feed = Feed(ctx.settings.nsq, task_topics(ctx.settings.nsq), CHANNEL, self.name, most=BATCH_MOST)
        self.paused = False
        self._unrecorded: list[Finishing] = []
        self._unstarted: Lease | None = None
        """A task leased ahead that the slot now runs: its start rides in the slot's next round trip."""
        self._fins: list[FeedDelivery] = []
        """Messages of tasks started in a batch whose FINs wait for its last start (`_fin`)."""
        self._specs: dict[str | None, tuple[dict[str, Any] | None, Runnable]] = {}
        self._limits: dict[str, TypeLimits | None] = {}
        """Task type -> its limits, from the executor spec its last lease brought (a replaced spec is
        seen with the next lease of the type); a type not seen yet is checked right after its lease."""
        self._took: dict[str, deque[float]] = {}
        """Task type -> its last runs here, in seconds (`RUNS_KEPT`), which size its batches; none for a
        type not run yet, limited, or not a python executor (not batched)."""

    def on_start(self) -> None:
        self.runner.warm()
        find(LeaseKeeper).tell(SlotStarted(self.index, self.actor_ref, self.execution, self.feed))
        self.actor_ref.tell(Poll())

    def on_stop(self) -> None:
        try:
            self._stand_down()  # a drained pod has nothing left; a stop without a drain may
        finally:
            self._close()
        super().on_stop()

    def on_failure(self, *exc_info: Any) -> None:
        self._close()  # pykka skips on_stop after a failure; the warm child must not outlive us
        super().on_failure(*exc_info)

    def _close(self) -> None:
        self.feed.close()  # nsqd requeues at once whatever it still had in flight to us
        self.runner.close()

    def on_receive(self, message: Any) -> None:
        match message:
            case Poll() if not self.paused:
                for _ in range(64):  # tasks back to back; the mailbox is read between any two of them
                    self._poll()
                    if self.paused or not self.actor_inbox.empty():
                        break
                self.actor_ref.tell(Poll())
            case Poll():
                self._record()
            case Pause():
                self.paused = True
                self.feed.pause()
                self._stand_down()
            case _:
                log.warning("worker: unknown message %r", message)

    def _poll(self) -> None:
        """Run the task leased ahead, or the next message's. The slot's cycle is then its executor's
        run alone: while the executor runs, the slot finishes the task's message (so nsqd sends the
        next one), records the previous tasks' outcomes and leases the next tasks."""
        ahead = self.execution.take_ahead()
        delivery = None
        if ahead is not None and (delivery := self.feed.better(ahead.delivery.rank)) is not None:
            # A higher priority came while they waited: they go back, so none runs first.
            for one in (ahead, *self.execution.take_all_ahead()):
                give_back(self.ctx, one, self.execution)
            ahead = None
        if ahead is None:
            # With outcomes to record, only a message nsqd has already sent is worth waiting for;
            # if one has, the outcomes are recorded and its task leased in one round trip.
            if delivery is None:
                delivery = self.feed.next(0.0 if self._unrecorded else POLL_S)
            ahead = self._queue(self._record(then_lease=self._batch_of(delivery)))
        if ahead is None:
            self._record()
            return
        self._unstarted = ahead.lease if ahead.lease.ahead else None
        if self._unrecorded and not self._starts_apart(ahead):
            # An exe or http executor runs inside _start: the outcomes would wait for its whole run.
            self._record()
        try:
            self._run(ahead)
        except Exception:
            ahead.delivery.requeue(1.0)  # at once, not after nsqd's msg_timeout; the slot restarts
            raise

    def _queue(self, aheads: list[Ahead]) -> Ahead | None:
        """The first of `aheads` to run now; the rest wait leased ahead behind it, in order."""
        if len(aheads) > 1:
            self.execution.hold_ahead(aheads[1:])
        return aheads[0] if aheads else None

    def _batch_of(self, delivery: FeedDelivery | None) -> list[tuple[TaskRef, FeedDelivery]]:
        """The message's task, and as many more already sent of the same priority as its type's batch
        size allows, each of a type that batches (the first that does not is left to the feed)."""
        ref = self._ref(delivery) if delivery is not None else None
        if ref is None or delivery is None:
            return []
        batch = [(ref, delivery)]
        size = self._batch_size(ref.type)
        if size > 1:
            more = self.feed.more(size - 1, delivery.rank)
            for i, other in enumerate(more):
                if (other_ref := self._ref(other)) is None:
                    continue
                if self._batch_size(other_ref.type) == 1:
                    self.feed.unread(more[i:])
                    break
                batch.append((other_ref, other))
        return batch

    def _starts_apart(self, task: Ahead) -> bool:
        """Whether the task's executor runs beside the slot (python: a warm child), so the slot can
        record the previous outcome while it runs, rather than before it starts."""
        target = self._spec(task.raw)[1]
        return isinstance(target, RunnerSpec) and target.kind == "python"

    def _run(self, task: Ahead) -> None:
        spec, target = self._spec(task.raw)
        self.execution.begin(task.lease)
        why = self.execution.unsafe_to_start(task.lease, stale_after_s(self.ctx))
        if why is not None:
            self.execution.end()
            if self._unstarted is task.lease:
                self._unstarted = None
            log.warning("not starting %s: %s; given back", task.lease.task_id, why,
                        extra=task_fields(task.lease.job, task.lease.task_id, task.lease.exec_id, task.lease.type))
            give_back(self.ctx, task, self.execution)
            return
        try:
            wait = self._start(task.lease, target)
            self._fins.append(task.delivery)  # after the start: nsqd's work on it overlaps the executor's
            if not self.execution.queued():
                self._fin()
            self._record_and_lease_ahead(wait.fileno)
            outcome = wait()
        finally:
            self.execution.end()
            give_seat(self.ctx, self.execution, task.lease.exec_id)
        self._unrecorded.append((task.lease, outcome, spec))
        self.execution.unrecorded = tuple(one[0] for one in self._unrecorded)
        self._learn(task.lease.type, target, outcome)

    def _learn(self, task_type: str, target: Runnable, outcome: Outcome | str) -> None:
        """The type's batch size from its runs so far, and the feed's RDY to match (nsqd sends a
        batch's worth while the slot runs the one before)."""
        if (isinstance(outcome, Outcome) and isinstance(target, RunnerSpec) and target.kind == "python"
                and self._limits.get(task_type) is None):
            self._took.setdefault(task_type, deque(maxlen=RUNS_KEPT)).append(outcome.duration_s)
        else:
            self._took.pop(task_type, None)
        self.feed.want(self._batch_size(task_type))

    def _batch_size(self, task_type: str) -> int:
        """How many of `task_type` the slot leases in one round trip (1: not batched)."""
        runs = self._took.get(task_type)
        return batch_size(runs) if runs else 1

    def _record_and_lease_ahead(self, done_fd: int | None) -> None:
        """Record the outcomes held (and this task's start, if it was leased ahead) and lease the next
        tasks while the executor runs: in one round trip if nsqd has already sent their messages;
        else, as nsqd sends one a moment after our FIN, once it comes, unless the executor is done
        first (`done_fd` turns readable) or AHEAD_WAIT_S passes (a long task: what nsqd sends later
        is left for the LeaseKeeper to shed). With tasks of a batch still queued behind this one,
        nothing is recorded or leased unless it runs past AHEAD_WAIT_S. What waits behind a task
        waits at most one renewal tick: then the LeaseKeeper gives it back."""
        if self.execution.queued():
            if done_fd is None or not select.select([done_fd], [], [], AHEAD_WAIT_S)[0]:
                self._record()  # a long one: its start, and the outcomes of the batch so far
            return
        delivery = None if self.paused else self.feed.next(0.0)
        aheads = self._record(then_lease=self._batch_of(delivery))
        if delivery is None and done_fd is not None and not self.paused:
            delivery = self.feed.next(AHEAD_WAIT_S, wake_fd=done_fd)
            aheads = self._record(then_lease=self._batch_of(delivery))
        self.execution.hold_ahead(aheads)

    def _ref(self, delivery: FeedDelivery) -> TaskRef | None:
        try:
            return decode(delivery.body, self.ctx.settings.nsq.max_message_bytes)
        except ValueError as exc:
            self.ctx.publisher.dead_letter(delivery, f"tasks topic: {exc}")
            return None

    def _stand_down(self) -> None:
        """Paused or stopping: record what was run, give back what was leased ahead."""
        self._record()
        for ahead in self.execution.take_all_ahead():
            give_back(self.ctx, ahead, self.execution)

    def _record(self, then_lease: list[tuple[TaskRef, FeedDelivery]] | None = None) -> list[Ahead]:
        """Record the outcomes the slot holds, if any, and the start of the task leased ahead it now
        runs (`_unstarted`); with `then_lease`, lease those tasks too; all in one round trip. A task
        is leased ahead only while the slot holds another lease, whose outcome is recorded as it
        starts (or with its batch's), so its start costs no round trip of its own (`_started` is a
        fallback)."""
        if then_lease and self._limits.get(then_lease[0][0].type) is not None:
            self._record()  # a limited type (never batched) takes its seat before its lease
            return [ahead] if (ahead := self._lease(*then_lease[0])) is not None else []
        self._fin()
        started, self._unstarted = self._unstarted, None
        if not self._unrecorded and not then_lease:
            if started is not None and started.ahead:
                self._started(started)
            return []
        aheads = self._finish(self._unrecorded, then_lease or [], started)
        self._unrecorded = []
        self.execution.unrecorded = ()
        return aheads

    def _fin(self) -> None:
        """FIN the messages of the tasks started so far, in one write per nsqd connection. A batch's
        FINs wait for its last start (BATCH_SPAN_S at most), or, behind a long task, for the next
        `_record`, which also runs before the slot waits idle or stands down. A FIN never sent (the
        slot died) costs a redelivery, which the task's lease in Redis answers, as any duplicate."""
        fins, self._fins = self._fins, []
        if len(fins) == 1:
            fins[0].finish()
        elif fins:
            finish_all(fins)

    def _started(self, lease: Lease) -> None:
        try:
            self.ctx.store.start(lease)
        except StoreError as exc:  # it only counts as leased, not running, until its finish
            log.warning("start of %s not recorded: %s", lease.task_id, exc,
                        extra=task_fields(lease.job, lease.task_id, lease.exec_id, lease.type))

    def _lease(self, ref: TaskRef, delivery: FeedDelivery, started: Lease | None = None) -> Ahead | None:
        ahead = bool(self._unrecorded) or self.execution.current() is not None
        args = self._lease_args(ref, ahead)
        limits = self._limits.get(ref.type)
        if limits is not None and not self._take(ref.type, limits, args[2], delivery, started):
            return None
        try:
            lease, raw = self.ctx.store.lease(*args, started=started)
            LEASE_BATCH.observe(1)
        except StoreError as exc:
            log.warning("lease of %s failed, message requeued: %s", ref.task_id, exc,
                        extra=task_fields(ref.job, ref.task_id, task_type=ref.type))
            give_seat(self.ctx, self.execution, args[2])
            delivery.requeue(1.0)
            return None
        if isinstance(lease, str):
            give_seat(self.ctx, self.execution, args[2])
        elif not self._within_limits(lease, raw, limits, delivery):
            return None
        return self._leased(ref, delivery, lease, raw)

    def _take(self, task_type: str, limits: TypeLimits, exec_id: str, delivery: FeedDelivery,
              started: Lease | None = None) -> bool:
        """A seat and a token for the start of a limited type, before its lease (apart from the job's
        keys: see taskherd.store.limits). Over a limit the message goes back to nsqd, deferred until a
        token is due (or a seat may be free), and the slot takes other work meanwhile: the task stays
        pending, no attempt counted."""
        try:
            wait = self.ctx.store.limits.take(task_type, limits, exec_id,
                                              int(self.ctx.settings.worker.lease_ttl_s * 1000))
        except StoreError as exc:
            log.warning("limits of %s not checked, message requeued: %s", task_type, exc)
            wait = None
            delivery.requeue(1.0)
            if started is not None:
                self._started(started)
            return False
        if wait is not None:
            if started is not None:  # its start was to ride on this lease's round trip
                self._started(started)
            delivery.requeue(min(wait.ms, 5000) / 1000 + random.uniform(0, 0.05))
            return False
        if limits.max_concurrency is not None:
            self.execution.seat(exec_id, task_type)
        return True

    def _within_limits(self, lease: Lease, raw: str | None, taken: TypeLimits | None, delivery: FeedDelivery) -> bool:
        """Learn the type's limits from the spec its lease brought; a type limited since the slot last
        saw it (or seen for the first time) takes its seat now, and gives its lease back if over."""
        limits = limits_of(self._spec(raw)[0])
        self._limits[lease.type] = limits
        if limits is None:
            give_seat(self.ctx, self.execution, lease.exec_id)  # the limit is gone: nothing to hold
            return True
        if taken is not None:
            return True
        try:
            wait = self.ctx.store.limits.take(lease.type, limits, lease.exec_id,
                                              int(self.ctx.settings.worker.lease_ttl_s * 1000))
        except StoreError:
            wait = None  # the lease stands; a limit Redis cannot check is not a reason to fail a task
        if wait is None:
            if limits.max_concurrency is not None:
                self.execution.seat(lease.exec_id, lease.type)
            return True
        give_back(self.ctx, Ahead(lease, cast(FeedDelivery, _Deferred(delivery, wait.ms)), raw))
        return False

    def _lease_args(self, ref: TaskRef, ahead: bool) -> LeaseArgs:
        """The lease's arguments; `ahead` when the slot still holds another lease after it (its
        executor runs, or its outcome is not recorded yet)."""
        ttl_ms = int(self.ctx.settings.worker.lease_ttl_s * 1000)
        return ref.job, ref.task_id, uuid.uuid4().hex, self.name, ttl_ms, ref.type, ahead

    @staticmethod
    def _leased(ref: TaskRef, delivery: FeedDelivery, lease: Lease | str, raw: str | None) -> Ahead | None:
        if isinstance(lease, str):
            log.debug("task %s not leased: %s", ref.task_id, lease, extra=task_fields(ref.job, ref.task_id))
            delivery.finish()  # a duplicate, or a task already gone: the lease in Redis is the truth
            return None
        if log.isEnabledFor(logging.DEBUG):  # the hot path: no fields built for a line not written
            log.debug("leased %s (attempt %d of %d)", lease.task_id, lease.attempts, lease.max_attempts,
                      extra=task_fields(lease.job, lease.task_id, lease.exec_id, lease.type))
        return Ahead(lease, delivery, raw)

    def _start(self, lease: Lease, runnable: Runnable) -> Started[Outcome] | Started[str]:
        if runnable is None:
            return Started(lambda: f"no executor registered for task type {lease.type!r}")
        if isinstance(runnable, NotAllowed):  # [security] narrowed since it was registered: nothing starts
            return Started(lambda: f"executor spec for {lease.type!r} is refused by [security]: {runnable}")
        if isinstance(runnable, InvalidSpec):
            return Started(lambda: f"executor spec for {lease.type!r} is unusable: {runnable}")
        return self.runner.start(runnable, StoredPayload(lease.payload), lease.timeout_s)

    def _spec(self, raw: str | None) -> tuple[dict[str, Any] | None, Runnable]:
        """The executor spec as stored and what runs it (or why not: unusable, or not admitted by
        `[security]`), worked out once per distinct stored text: a replaced executor is new text, and
        `[security]` changes only with a restart, so there is no cache to invalidate."""
        if raw not in self._specs:
            spec = spec_from_text(raw)
            self._specs[raw] = (spec, runnable(spec, self.ctx.settings.security, self.ctx.settings.auth.on))
        return self._specs[raw]

    def _finish(self, finishing: list[Finishing], then_lease: list[tuple[TaskRef, FeedDelivery]],
                started: Lease | None) -> list[Ahead]:
        """Record outcomes (and the start of `started`); with `then_lease`, lease those tasks in the
        same round trip (what `_lease` would return for each, in order). Should that round trip fail,
        the messages go back to nsqd and the outcomes are recorded alone, with retries."""
        outcomes = [(lease, _outcome(outcome), spec) for lease, outcome, spec in finishing]
        records = [self._finishing(lease, outcome, spec) for lease, outcome, spec in outcomes]
        leased: list[Ahead] = []
        states: list[str] | None = None
        if then_lease:
            running = self.execution.current() is not None
            # the first is leased ahead only if an executor runs: the outcomes recorded first were the slot's other leases
            args = [self._lease_args(ref, running or i > 0) for i, (ref, _) in enumerate(then_lease)]
            try:
                states, got = self.ctx.store.record(records, started, args)
            except StoreError as exc:
                for ref, delivery in then_lease:
                    log.warning("lease of %s failed, message requeued: %s", ref.task_id, exc,
                                extra=task_fields(ref.job, ref.task_id, task_type=ref.type))
                    delivery.requeue(1.0)
            else:
                LEASE_BATCH.observe(len(then_lease))
                for (ref, delivery), (lease, raw) in zip(then_lease, got):
                    if isinstance(lease, str) or self._within_limits(lease, raw, None, delivery):
                        if (ahead := self._leased(ref, delivery, lease, raw)) is not None:
                            leased.append(ahead)
        if states is None and records:
            answer = _with_retries(lambda: self.ctx.store.record(records, started, [])[0])
            states = answer if isinstance(answer, list) else [answer] * len(records)
        rung = []
        for (lease, outcome, _), state in zip(outcomes, states or []):
            _count(lease.type, outcome, state)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("recorded %s: %s -> %s", lease.task_id, outcome.status, state,
                          extra=task_fields(lease.job, lease.task_id, lease.exec_id, lease.type))
            if state == "ring":  # else a doorbell of the job is already on its way to the manager
                rung.append(lease)
            elif state == "fenced":
                log.warning("result of %s discarded: execution %s was superseded", lease.task_id, lease.exec_id,
                            extra=task_fields(lease.job, lease.task_id, lease.exec_id, lease.type))
        self._ring(rung)
        return leased

    def _finishing(self, lease: Lease, outcome: Outcome, spec: dict[str, Any] | None) -> tuple[Any, ...]:
        """finish's arguments for an outcome (`StateStore.finish`)."""
        warn_unloadable(lease.type, outcome.error)
        delay_ms = retry_delay_ms(self.ctx.settings.retry, outcome, lease.attempts, lease.max_attempts, spec)
        record = {"exec": lease.exec_id, "worker": self.name, "started": lease.started_ms,
                  "duration_s": round(outcome.duration_s, 6), "status": outcome.status, "error": outcome.error,
                  "exit_code": outcome.exit_code, "error_type": outcome.error_type, "detail": outcome.detail}
        return lease, "ok" if outcome.ok else "failed", outcome.result, outcome.error or "", delay_ms, record

    def _ring(self, rung: list[Lease]) -> None:
        """The results doorbell of each job Redis said to ring for, in one publish."""
        if not rung:
            return
        try:
            self.ctx.publisher.publish(self.ctx.settings.nsq.results_topic,
                                       [TaskRef(lease.job, lease.task_id, lease.type).encode() for lease in rung])
        except QueueError as exc:
            for lease in rung:
                log.warning("result of %s not published; the TimeoutWatcher will: %s", lease.task_id, exc,
                            extra=task_fields(lease.job, lease.task_id, lease.exec_id, lease.type))


def batch_size(runs: Iterable[float]) -> int:
    """How many tasks of a type a slot leases at once, given its last runs' durations (`RUNS_KEPT`):
    as many of the shortest as fit in BATCH_SPAN_S, at most BATCH_MOST."""
    return max(1, min(BATCH_MOST, int(BATCH_SPAN_S / max(min(runs), 1e-4))))


def _outcome(outcome: Outcome | str) -> Outcome:
    """An executor's outcome; a reason it could not run (text) is a failure."""
    return Outcome("failed", None, outcome, False, 0.0) if isinstance(outcome, str) else outcome


class _Deferred:
    """A delivery whose requeue is deferred until a limit's token is due (what `give_back` calls)."""

    def __init__(self, delivery: FeedDelivery, wait_ms: int) -> None:
        self._delivery, self._wait_s = delivery, min(wait_ms, 5000) / 1000

    def requeue(self, delay_s: float = 0.0) -> None:
        self._delivery.requeue(max(delay_s, self._wait_s + random.uniform(0, 0.05)))

    def finish(self) -> None:
        self._delivery.finish()


def _with_retries(fn: Any, attempts: int = 5) -> Any:
    """Redis may blink (a restart with AOF); the lease keeps the task ours for a few seconds meanwhile."""
    for i in range(attempts):
        try:
            return fn()
        except StoreError as exc:
            if i == attempts - 1:
                log.error("giving up recording a result; the lease will expire and the task re-run: %s", exc)
                return "error"
            time.sleep(min(2.0, 0.1 * 2 ** i))
    return "error"


_unloadable: set[str] = set()
_unloadable_lock = threading.Lock()


def warn_unloadable(task_type: str, error: str | None) -> bool:
    """Log once per pod, at WARNING, a target this pod cannot import (the task fails with the same
    words; the log says where the pod looks, since that is what the user must fix)."""
    if not error or not error.startswith("cannot load "):
        return False
    with _unloadable_lock:
        if error in _unloadable:
            return False
        _unloadable.add(error)
    log.warning("task type %r: %s; this pod imports from its working directory %s and PYTHONPATH=%r "
                "(see README: how your code reaches the pods)", task_type, error, os.getcwd(),
                os.environ.get("PYTHONPATH", ""))
    return True


def _count(task_type: str, outcome: Outcome, state: str | None) -> None:
    """The execution in the pod's metrics, as Redis recorded it (`state`, finish.lua's answer)."""
    if state == "fenced":
        label = "fenced"
    elif state == "retry":
        label = "retried"
    elif outcome.ok:
        label = "succeeded"
    else:
        label = {"timeout": "timed_out", "killed": "cancelled"}.get(outcome.status, "failed")
    if state in ("ring", "analyzing", "retry", "fenced"):
        TASKS.labels(task_type, label).inc()
        EXECUTION_SECONDS.labels(task_type).observe(outcome.duration_s)
