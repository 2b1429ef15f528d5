"""Worker: one execution slot. Takes a message from its own feed, leases the task, runs its executor,
records the outcome, rings the manager (when no doorbell of the job is on its way).

Where a task is leased (`_lease`), run under its deadline (`Runner.run` kills the whole process tree
at the time-out), and finished (`_finish`, fenced by the execution id). The slot reads its own nsqd
connection (`Feed`) in its own thread, so a message reaches the executor with no thread hop. The
slot's Runner keeps a warm Python child between tasks, so a task costs a pipe round trip, not a fork.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pykka
import redis

from taskherd.actors.context import PodContext, find
from taskherd.actors.manager import runner_spec
from taskherd.actors.feed import FeedDelivery, Feed
from taskherd.errors import QueueError, StoreError, TaskherdError
from taskherd.runners import Outcome, Runner, RunnerSpec, Started
from taskherd.store.state_store import Lease, spec_from_text
from taskherd.store.task_queue import TaskRef, decode
from taskherd.supervisor import Supervised

log = logging.getLogger("taskherd.worker")

Runnable = RunnerSpec | TaskherdError | None
"""What runs a task type's executor: None when none is registered, the error when its spec is unusable."""

CHANNEL = "workers"
POLL_S = 0.5
"""How long a slot waits on its feed before it reads its mailbox (a Pause, a stop) again."""
AHEAD_WAIT_S = 0.05
"""How long a slot whose executor runs waits for nsqd's next message (it comes ~0.5 ms after the FIN)."""


class Execution:
    """The slot's leases, shared with the Dispatcher (renewals, shedding, drain).

    `current` is the lease the executor runs under, killable from the Dispatcher's thread but only
    while it is still the one asked for: a kill meant for a finished lease must not hit the slot's
    next task. `unrecorded` is set while an outcome waits to be recorded (the slot records it as its
    next executor runs). `ahead` is the next task, leased while the current one runs, its message
    still in flight; whichever thread takes it first (the slot to run it, the Dispatcher to give it
    back) has it. The pod holds all three."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self._current: Lease | None = None
        self._ahead: Ahead | None = None
        self.began_at = 0.0
        self.unrecorded = False

    def hold_ahead(self, ahead: Ahead) -> None:
        with self._lock:
            self._ahead = ahead

    def take_ahead(self, exec_id: str | None = None) -> Ahead | None:
        """The task leased ahead (only if its execution is `exec_id`, when given), now yours."""
        with self._lock:
            ahead = self._ahead
            if ahead is None or (exec_id is not None and ahead.lease.exec_id != exec_id):
                return None
            self._ahead = None
            return ahead

    def ahead(self) -> Lease | None:
        with self._lock:
            return self._ahead.lease if self._ahead else None

    def begin(self, lease: Lease) -> None:
        with self._lock:
            self._current, self.began_at = lease, time.monotonic()

    def end(self) -> None:
        with self._lock:
            self._current = None

    def current(self) -> Lease | None:
        with self._lock:
            return self._current

    def kill(self, exec_id: str) -> bool:
        with self._lock:
            return self._current is not None and self._current.exec_id == exec_id and self._runner.kill()


@dataclass(frozen=True, slots=True)
class Ahead:
    """A task leased while the slot's executor runs another, with its message (still in flight) and
    its executor spec as stored."""

    lease: Lease
    delivery: FeedDelivery
    raw: str | None


def give_back(ctx: PodContext, ahead: Ahead) -> None:
    """A task leased ahead goes back to pending (not counted as an attempt) and its message to nsqd,
    for an idle slot; if it is no longer ours (cancelled, superseded), its message is finished."""
    try:
        released = ctx.store.release(ahead.lease)
    except StoreError as exc:
        log.warning("could not give back %s; its lease will expire instead: %s", ahead.lease.task_id, exc)
        released = True
    if released:
        ahead.delivery.requeue(0)
    else:
        ahead.delivery.finish()


@dataclass(frozen=True, slots=True)
class Poll:
    """Tell, to itself: run the next message of the slot's feed, if one comes within POLL_S."""


@dataclass(frozen=True, slots=True)
class Pause:
    """Tell, from the Dispatcher: take no more messages (drain, shutdown)."""


class Worker(Supervised, pykka.ThreadingActor):
    def __init__(self, ctx: PodContext, index: int, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.ctx, self.index = ctx, index
        self.name = f"{ctx.node_id}/{index}"
        self.runner = Runner(recycle_after=ctx.settings.worker.recycle_after)
        self.execution = Execution(self.runner)
        self.feed = Feed(ctx.settings.nsq, ctx.settings.nsq.tasks_topic, CHANNEL, self.name)
        self.paused = False
        self._unrecorded: tuple[Lease, Outcome | str, dict[str, Any] | None] | None = None
        self._specs: dict[str | None, tuple[dict[str, Any] | None, Runnable]] = {}

    def on_start(self) -> None:
        from taskherd.actors.dispatcher import SlotStarted

        find_dispatcher().tell(SlotStarted(self.index, self.actor_ref, self.execution, self.feed))
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
        next one), records the previous task's outcome and leases the next task."""
        ahead = self.execution.take_ahead()
        if ahead is None:
            # With an outcome to record, only a message nsqd has already sent is worth waiting for.
            delivery = self.feed.next(0.0 if self._unrecorded else POLL_S)
            ahead = self._lease_for(delivery) if delivery is not None else None
        if ahead is None:
            self._record()
            return
        try:
            self._run(ahead)
        except Exception:
            ahead.delivery.requeue(1.0)  # at once, not after nsqd's msg_timeout; the slot restarts
            raise

    def _run(self, task: Ahead) -> None:
        spec, runnable = self._spec(task.raw)
        self.execution.begin(task.lease)
        try:
            wait = self._start(task.lease, runnable)
            task.delivery.finish()  # after the start: nsqd's work on it overlaps the executor's
            self._record_and_lease_ahead(wait.fileno)
            outcome = wait()
        finally:
            self.execution.end()
        self._unrecorded = (task.lease, outcome, spec)
        self.execution.unrecorded = True

    def _record_and_lease_ahead(self, done_fd: int | None) -> None:
        """Record the previous outcome and lease the next task while the executor runs: in one round
        trip if nsqd has already sent its message; else, as nsqd sends it a moment after our FIN,
        once it comes, unless the executor is done first (`done_fd` turns readable) or AHEAD_WAIT_S
        passes (a long task: what nsqd sends later is left for the Dispatcher to shed). The task
        leased ahead waits behind this one at most one renewal tick: then the Dispatcher gives it back."""
        delivery = None if self.paused else self.feed.next(0.0)
        ref = self._ref(delivery) if delivery is not None else None
        ahead = self._record(then_lease=(ref, delivery) if ref is not None else None)
        if delivery is None and done_fd is not None and not self.paused:
            delivery = self.feed.next(AHEAD_WAIT_S, wake_fd=done_fd)
            ahead = self._lease_for(delivery) if delivery is not None else None
        if ahead is not None:
            self.execution.hold_ahead(ahead)

    def _lease_for(self, delivery: FeedDelivery) -> Ahead | None:
        ref = self._ref(delivery)
        return self._lease(ref, delivery) if ref is not None else None

    def _ref(self, delivery: FeedDelivery) -> TaskRef | None:
        try:
            return decode(delivery.body, self.ctx.settings.nsq.max_message_bytes)
        except ValueError as exc:
            self.ctx.dead_letter(delivery, f"tasks topic: {exc}")
            return None

    def _stand_down(self) -> None:
        """Paused or stopping: record what was run, give back what was leased ahead."""
        self._record()
        ahead = self.execution.take_ahead()
        if ahead is not None:
            give_back(self.ctx, ahead)

    def _record(self, then_lease: tuple[TaskRef, FeedDelivery] | None = None) -> Ahead | None:
        """Record the outcome the slot still holds, if any; with `then_lease`, lease that task too
        (in the same round trip when there is an outcome to record)."""
        if self._unrecorded is None:
            return self._lease(*then_lease) if then_lease else None
        lease, outcome, spec = self._unrecorded
        ahead = self._finish(lease, outcome, spec, then_lease=then_lease)
        self._unrecorded = None
        self.execution.unrecorded = False
        return ahead

    def _lease(self, ref: TaskRef, delivery: FeedDelivery) -> Ahead | None:
        try:
            lease, raw = self.ctx.store.lease(*self._lease_args(ref))
        except (StoreError, redis.RedisError) as exc:
            log.warning("lease of %s failed, message requeued: %s", ref.task_id, exc)
            delivery.requeue(1.0)
            return None
        return self._leased(ref, delivery, lease, raw)

    def _lease_args(self, ref: TaskRef) -> tuple[Any, ...]:
        ttl_ms = int(self.ctx.settings.worker.lease_ttl_s * 1000)
        return ref.job, ref.task_id, uuid.uuid4().hex, self.name, ttl_ms, ref.type

    @staticmethod
    def _leased(ref: TaskRef, delivery: FeedDelivery, lease: Lease | str, raw: str | None) -> Ahead | None:
        if isinstance(lease, str):
            log.debug("task %s not leased: %s", ref.task_id, lease)
            delivery.finish()  # a duplicate, or a task already gone: the lease in Redis is the truth
            return None
        return Ahead(lease, delivery, raw)

    def _start(self, lease: Lease, runnable: Runnable) -> Started[Outcome] | Started[str]:
        if runnable is None:
            return Started(lambda: f"no executor registered for task type {lease.type!r}")
        if isinstance(runnable, TaskherdError):
            return Started(lambda: f"executor spec for {lease.type!r} is unusable: {runnable}")
        return self.runner.start(runnable, json.loads(lease.payload), lease.timeout_s)

    def _spec(self, raw: str | None) -> tuple[dict[str, Any] | None, Runnable]:
        """The executor spec as stored and what runs it, worked out once per distinct stored text: a
        replaced executor is new text, so there is no cache to invalidate."""
        if raw not in self._specs:
            spec, runnable = spec_from_text(raw), None
            if spec is not None:
                try:
                    runnable = runner_spec(spec)
                except TaskherdError as exc:
                    runnable = exc
            self._specs[raw] = (spec, runnable)
        return self._specs[raw]

    def _finish(self, lease: Lease, outcome: Outcome | str, spec: dict[str, Any] | None,
                then_lease: tuple[TaskRef, FeedDelivery] | None = None) -> Ahead | None:
        """Record an outcome; with `then_lease`, lease that next task in the same round trip (what
        `_lease` would return). Should that round trip fail, the message goes back to nsqd and the
        outcome is recorded alone, with retries."""
        if isinstance(outcome, str):
            outcome = Outcome("failed", None, outcome, False, 0.0)
        delay_ms = retry_delay_ms(self.ctx, lease, outcome, spec)
        record = {"exec": lease.exec_id, "worker": self.name, "started": lease.started_ms,
                  "duration_s": round(outcome.duration_s, 6), "status": outcome.status, "error": outcome.error,
                  "exit_code": outcome.exit_code, "error_type": outcome.error_type, "detail": outcome.detail}
        finishing = (lease, "ok" if outcome.ok else "failed", outcome.result, outcome.error or "", delay_ms, record)
        leased = None
        if then_lease is not None:
            ref, delivery = then_lease
            try:
                state, next_lease, raw = self.ctx.store.finish_and_lease(finishing, *self._lease_args(ref))
                leased = self._leased(ref, delivery, next_lease, raw)
            except StoreError as exc:
                log.warning("lease of %s failed, message requeued: %s", ref.task_id, exc)
                delivery.requeue(1.0)
                then_lease = None
        if then_lease is None:
            state = _with_retries(lambda: self.ctx.store.finish(*finishing))
        self._rang(lease, state)
        return leased

    def _rang(self, lease: Lease, state: str | None) -> None:
        if state == "ring":  # else a doorbell of the job is already on its way to the manager
            try:
                self.ctx.queue.publish(self.ctx.settings.nsq.results_topic, [TaskRef(lease.job, lease.task_id, lease.type).encode()])
            except QueueError as exc:
                log.warning("result of %s not published; the TimeoutWatcher will: %s", lease.task_id, exc)
        elif state == "fenced":
            log.warning("result of %s discarded: execution %s was superseded", lease.task_id, lease.exec_id)


def retry_delay_ms(ctx: PodContext, lease: Lease, outcome: Outcome, spec: dict[str, Any] | None) -> int:
    """-1 when the outcome is final; else the backoff before the next attempt (exponential, jittered)."""
    if outcome.ok or lease.attempts >= lease.max_attempts:
        return -1
    if outcome.status == "killed":
        return 0  # we killed it (lease lost or cancelled, which finish.lua records): not the task's fault
    if not _retryable(outcome, spec):
        return -1
    m = ctx.settings.manager
    base = min(m.retry_backoff_max_s, m.retry_backoff_base_s * 2 ** (lease.attempts - 1))
    return int(base * random.uniform(0.5, 1.0) * 1000)


def _retryable(outcome: Outcome, spec: dict[str, Any] | None) -> bool:
    """A spec's `retry_on` (exception type names, exit codes, HTTP statuses) narrows the runner's view."""
    retry_on = (spec or {}).get("retry_on")
    if outcome.status == "timeout" or retry_on is None:
        return outcome.retryable or outcome.status == "timeout"
    return outcome.error_type in retry_on or outcome.exit_code in retry_on


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


def find_dispatcher() -> pykka.ActorRef:
    from taskherd.actors.dispatcher import Dispatcher

    return find(Dispatcher)
