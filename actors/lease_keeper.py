"""LeaseKeeper: keeps the pod's leases alive, sheds what waits behind long tasks, drains the pod.

Each slot reads its own nsqd connection with RDY 1 (taskherd/nsq/feed.py; up to a batch for a type
whose runs are short) and finishes a message once it holds the task's lease, so nsqd sends the slot's
next message while its executor runs, and the slot leases that next task (or batch) ahead. Nothing
passes through here per task. Behind a task that runs past
a renewal tick, what waits is given back (the tasks leased ahead to pending and their messages to nsqd,
for an idle slot; RDY 0 until the slot is free), so a pod never holds work behind a long task that
an idle pod elsewhere could take.

Leases (running and ahead) are renewed here in one round trip per job; a slot whose lease was
superseded has its executor killed. A lease that could not be renewed for nearly a whole TTL (a
partition from Redis, a Redis that hangs) is the guard's: a thread of its own that looks every
GUARD_TICK_S, so the kill comes before the lease can expire even while a renewal is stuck in a
socket read for longer than the TTL. Its clock starts when the request that took or last renewed the
lease was sent, never when the answer came: Redis counts the TTL from a moment between the two, and
a slow answer must not move the kill past it. That is what makes "two attempts of a task never run
at once" hold on a loaded or partitioned host.

The renewal also carries each running executor's latest progress report, when it changed since the
last one sent (`taskherd.progress`): at most one write per task per tick, in a round trip made anyway.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import pykka

from taskherd.actors.context import PodContext
from taskherd.actors.leases import Execution, Pause, give_back, stale_after_s
from taskherd.errors import QueueError, StoreError
from taskherd.logs import task_fields
from taskherd.metrics import LEASES_HELD, SLOTS
from taskherd.nsq.feed import Feed
from taskherd.nsq.messages import TaskRef
from taskherd.store.state_store import Lease
from taskherd.supervisor import Supervised, Ticking

log = logging.getLogger("taskherd.lease_keeper")

GUARD_TICK_S = 0.1
"""How often the guard looks for leases it can no longer count on; a kill comes at most this late."""


@dataclass(frozen=True, slots=True)
class SlotStarted:
    """From a Worker's on_start: this slot (a new incarnation after a restart) takes work."""

    index: int
    ref: pykka.ActorRef[Any]
    execution: Execution
    """The slot's current lease and execution, read for renewals and killed from this thread."""
    feed: Feed
    """The slot's subscription: kept alive and rid of stale messages from this thread."""


@dataclass(frozen=True, slots=True)
class RenewLeases:
    """From the ticker."""


@dataclass(frozen=True, slots=True)
class Drain:
    """Ask (SIGTERM): take no more messages; with hand_back, also give running tasks back to pending
    at once (not counted as an attempt) and kill their executors."""

    hand_back: bool = False


@dataclass(frozen=True, slots=True)
class HeldCount:
    """Ask -> how many leases this pod still holds."""


class LeaseKeeper(Ticking, Supervised, pykka.ThreadingActor):
    def __init__(self, ctx: PodContext, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.ctx = ctx
        self.topic = ctx.settings.nsq.tasks_topic
        self.executions: dict[int, Execution] = {}
        self.slots: dict[int, tuple[pykka.ActorRef[Any], Feed]] = {}
        self.progress_sent: dict[str, str] = {}
        """exec id -> the progress report last written for it (JSON), so an unchanged one is not sent again."""
        self.paused = False
        self._guarding = threading.Event()
        self._guard_killed: set[str] = set()
        """Exec ids the guard has killed or dropped: once each, not again every tick until the slot ends it."""

    def on_start(self) -> None:
        self.tick_every(RenewLeases(), self.ctx.settings.worker.lease_renew_s)
        threading.Thread(target=self._guard, name="lease-guard", daemon=True).start()

    def on_stop(self) -> None:
        self._guarding.set()
        super().on_stop()

    def on_failure(self, *exc_info: Any) -> None:
        self._guarding.set()  # the restarted keeper starts its own guard
        super().on_failure(*exc_info)

    def _guard(self) -> None:
        while not self._guarding.wait(GUARD_TICK_S):
            try:
                self.kill_unrenewed()
            except Exception:  # the guard must outlive any one bad look
                log.exception("lease guard")

    def kill_unrenewed(self) -> None:
        """Kill every executor (drop every task leased ahead) whose lease was last renewed or taken
        more than the TTL less 1.5 renewal intervals ago. From the guard's thread."""
        worker = self.ctx.settings.worker
        limit = stale_after_s(self.ctx)
        now, held = time.monotonic(), set()
        for index, execution in list(self.executions.items()):
            for lease in (execution.current(), *execution.aheads()):
                if lease is None:
                    continue
                held.add(lease.exec_id)
                since = now - execution.last_good(lease)
                if since > limit and lease.exec_id not in self._guard_killed:
                    self._guard_killed.add(lease.exec_id)
                    self._kill(index, lease, f"its lease was last renewed {since:.1f} s ago (TTL "
                                             f"{worker.lease_ttl_s:g} s): it may expire before a renewal gets through")
        self._guard_killed &= held

    def held(self) -> dict[int, Lease]:
        """Slot index -> the lease its executor runs under now."""
        out = {}
        for index, execution in self.executions.items():
            current = execution.current()
            if current is not None:
                out[index] = current
        return out

    def on_receive(self, message: Any) -> Any:
        match message:
            case SlotStarted(index, ref, execution, feed):
                self.executions[index], self.slots[index] = execution, (ref, feed)
                self._gauge()  # the slot counts from its start, not from the next renewal tick
                if self.paused:
                    ref.tell(Pause())
            case RenewLeases():
                self._renew()
                self._gauge()
            case Drain(hand_back):
                self._pause()
                if hand_back:
                    self._hand_back()
            case HeldCount():
                return self._held_count()
            case _:
                log.warning("lease keeper: unknown message %r", message)
        return None

    def _pause(self) -> None:
        """Every slot takes no more messages (and gives back what nsqd already sent it)."""
        self.paused = True
        for ref, _ in self.slots.values():
            try:
                ref.tell(Pause())
            except pykka.ActorDeadError:
                pass  # its restarted incarnation is told when it says SlotStarted

    def _held_count(self) -> int:
        """Leases held: running, leased ahead, or run and not yet recorded."""
        return sum((e.current() is not None) + len(e.aheads()) + len(e.unrecorded) for e in self.executions.values())

    def _gauge(self) -> None:
        busy = sum(e.current() is not None for e in self.executions.values())
        SLOTS.labels("busy").set(busy)
        SLOTS.labels("idle").set(len(self.executions) - busy)
        LEASES_HELD.set(self._held_count())

    def _hold_seats(self, ttl_ms: int) -> None:
        """Renew the concurrency seats this pod holds (limited types only), like their leases: a pod
        that stops renewing them (SIGKILL) loses them within a TTL."""
        seats: dict[str, str] = {}
        for execution in self.executions.values():
            seats.update(execution.seats())
        if seats:
            try:
                self.ctx.store.limits.hold(seats, ttl_ms)
            except StoreError as exc:
                log.warning("could not renew %d concurrency seat(s): %s", len(seats), exc)

    def _renew(self) -> None:
        by_job: dict[str, list[tuple[int, Lease]]] = {}
        progress: dict[str, str] = {}
        for index, execution in self.executions.items():
            feed = self.slots[index][1]
            feed.keep_alive()
            lease, report = execution.current_progress()
            if lease is not None and report is not None:
                text = json.dumps({"exec": lease.exec_id, **report}, separators=(",", ":"))
                if self.progress_sent.get(lease.exec_id) != text:
                    progress[lease.exec_id] = text
            if lease is not None and time.monotonic() - execution.began_at > self.ctx.settings.worker.lease_renew_s:
                # A long task: what waits behind it goes to an idle slot (the tasks leased ahead, and
                # the messages nsqd sent meanwhile).
                for ahead in execution.take_all_ahead():
                    give_back(self.ctx, ahead, execution)
                feed.shed()
            for one in (lease, *execution.aheads(), *execution.unrecorded):
                if one is not None:
                    by_job.setdefault(one.job, []).append((index, one))
        live = {one.exec_id for held in by_job.values() for _, one in held}
        self.progress_sent = {e: t for e, t in self.progress_sent.items() if e in live}
        ttl = self.ctx.settings.worker.lease_ttl_s
        self._hold_seats(int(ttl * 1000))
        for job, held in by_job.items():
            sent = time.monotonic()
            try:
                ok = self.ctx.store.renew(job, [(lease.task_id, lease.exec_id) for _, lease in held], int(ttl * 1000),
                                          progress)
            except StoreError as exc:
                log.warning("could not renew %d lease(s) of %s (the guard kills what it cannot count on): %s",
                            len(held), job, exc, extra=task_fields(job))
                continue
            for (index, lease), renewed in zip(held, ok):
                if renewed:
                    self.executions[index].renewed(lease.exec_id, sent)
                    if lease.exec_id in progress:
                        self.progress_sent[lease.exec_id] = progress[lease.exec_id]
                else:
                    self._kill(index, lease, "the task was cancelled or its execution superseded")

    def _hand_back(self) -> None:
        """Running tasks go back to pending and are published again, for another pod (their messages
        were finished when their leases were taken)."""
        refs = []
        for index, execution in self.executions.items():
            for ahead in execution.take_all_ahead():
                give_back(self.ctx, ahead, execution)
            lease = execution.current()
            if lease is None:
                continue
            try:
                if self.ctx.store.release(lease):
                    refs.append(TaskRef(lease.job, lease.task_id, lease.type, lease.priority))
            except StoreError as exc:
                log.warning("could not hand back %s; its lease will expire instead: %s", lease.task_id, exc,
                            extra=task_fields(lease.job, lease.task_id, lease.exec_id, lease.type))
            self._kill(index, lease, "the pod is shutting down")
        if refs:
            try:
                self.ctx.publisher.publish_tasks(refs)
            except QueueError as exc:
                log.warning("handed-back tasks not published; the TimeoutWatcher will: %s", exc)

    def _kill(self, index: int, lease: Lease, why: str) -> None:
        """Kill the executor running under `lease`, or drop the task if it was only leased ahead."""
        execution = self.executions.get(index)
        if execution is None:
            return
        if execution.kill(lease.exec_id):
            log.warning("killed the executor of %s (slot %d): %s", lease.task_id, index, why,
                        extra=task_fields(lease.job, lease.task_id, lease.exec_id, lease.type))
        elif (ahead := execution.take_ahead(lease.exec_id)) is not None:
            log.warning("dropped %s, leased ahead on slot %d: %s", lease.task_id, index, why,
                        extra=task_fields(lease.job, lease.task_id, lease.exec_id, lease.type))
            ahead.delivery.finish()
