"""Dispatcher: keeps the pod's leases (and their messages) alive, and drains the pod.

Each slot reads its own nsqd connection with RDY 1 (actors/slot_feed.py): a slot keeps its message in
flight until its executor returns, so nsqd never sends more than the pod can start, and a pod never
holds work behind a long task that an idle pod elsewhere could take (at most for the moment a slot
takes to record an outcome). Nothing passes through here per task.

Leases are renewed here for every busy slot in one round trip per job, and the message of a long task
is touched so nsqd does not redeliver it meanwhile; a slot whose lease was superseded, or could not be
renewed for nearly a whole TTL (a partition from Redis), has its executor killed before the lease can
expire, so two attempts of a task never run at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import pykka

from taskherd.actors.context import PodContext
from taskherd.actors.slot_feed import FeedDelivery, SlotFeed
from taskherd.actors.ticker import Ticker
from taskherd.actors.worker import Execution, Pause
from taskherd.errors import QueueError, StoreError
from taskherd.store.state_store import Lease
from taskherd.store.task_queue import TaskRef
from taskherd.supervisor import Supervised

log = logging.getLogger("taskherd.dispatcher")


@dataclass(frozen=True, slots=True)
class SlotStarted:
    """From a Worker's on_start: this slot (a new incarnation after a restart) takes work."""

    index: int
    ref: pykka.ActorRef
    execution: Execution
    """The slot's current lease and execution, read for renewals and killed from this thread."""
    feed: SlotFeed
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


class Dispatcher(Supervised, pykka.ThreadingActor):
    def __init__(self, ctx: PodContext, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.ctx = ctx
        self.topic = ctx.settings.nsq.tasks_topic
        self.executions: dict[int, Execution] = {}
        self.slots: dict[int, tuple[pykka.ActorRef, SlotFeed]] = {}
        self.renewed_at: dict[str, float] = {}
        """exec id -> when its lease was last renewed (or taken)."""
        self.paused = False
        self._ticker: Ticker | None = None

    def on_start(self) -> None:
        self._ticker = Ticker(self.actor_ref, RenewLeases(), self.ctx.settings.worker.lease_renew_s).start()

    def on_stop(self) -> None:
        if self._ticker:
            self._ticker.stop()
        super().on_stop()

    def held(self) -> dict[int, Lease]:
        """Slot index -> the lease it holds now."""
        out = {}
        for index, execution in self.executions.items():
            current = execution.current()
            if current is not None:
                out[index] = current[0]
        return out

    def on_receive(self, message: Any) -> Any:
        match message:
            case SlotStarted(index, ref, execution, feed):
                self.executions[index], self.slots[index] = execution, (ref, feed)
                if self.paused:
                    ref.tell(Pause())
            case RenewLeases():
                self._renew()
            case Drain(hand_back):
                self._pause()
                if hand_back:
                    self._hand_back()
            case HeldCount():
                return len(self.held())
            case _:
                log.warning("dispatcher: unknown message %r", message)
        return None

    def _pause(self) -> None:
        """Every slot takes no more messages (and gives back what nsqd already sent it)."""
        self.paused = True
        for ref, _ in self.slots.values():
            try:
                ref.tell(Pause())
            except pykka.ActorDeadError:
                pass  # its restarted incarnation is told when it says SlotStarted

    def _renew(self) -> None:
        for _, feed in self.slots.values():
            feed.give_back_stale(self.ctx.settings.worker.lease_renew_s)
            feed.keep_alive()
        by_job: dict[str, list[tuple[int, Lease]]] = {}
        for index, execution in self.executions.items():
            current = execution.current()
            if current is None:
                continue
            lease, delivery = current
            self.renewed_at.setdefault(lease.exec_id, time.monotonic())
            by_job.setdefault(lease.job, []).append((index, lease))
            self._keep_in_flight(delivery)
        live = {lease.exec_id for held in by_job.values() for _, lease in held}
        self.renewed_at = {e: t for e, t in self.renewed_at.items() if e in live}
        ttl = self.ctx.settings.worker.lease_ttl_s
        for job, held in by_job.items():
            try:
                ok = self.ctx.store.renew(job, [(l.task_id, l.exec_id) for _, l in held], int(ttl * 1000))
            except StoreError as exc:
                self._kill_unrenewed(held, ttl, exc)
                continue
            now = time.monotonic()
            for (index, lease), renewed in zip(held, ok):
                if renewed:
                    self.renewed_at[lease.exec_id] = now
                else:
                    self._kill(index, lease, "the task was cancelled or its execution superseded")

    def _keep_in_flight(self, delivery: FeedDelivery) -> None:
        """A message held past half of nsqd's msg_timeout is touched, or nsqd would send it again."""
        if time.monotonic() - delivery.touched_at > self.ctx.settings.nsq.msg_timeout_s / 2:
            delivery.touch()

    def _kill_unrenewed(self, held: list[tuple[int, Lease]], ttl: float, exc: Exception) -> None:
        margin = self.ctx.settings.worker.lease_renew_s * 1.5
        for index, lease in held:
            if time.monotonic() - self.renewed_at.get(lease.exec_id, 0) > ttl - margin:
                self._kill(index, lease, f"its lease could not be renewed ({exc})")

    def _hand_back(self) -> None:
        """Running tasks go back to pending and their messages back to nsqd, for another pod (a
        message already finished, its executor having just returned, is published again)."""
        refs = []
        for index, execution in self.executions.items():
            current = execution.current()
            if current is None:
                continue
            lease, delivery = current
            try:
                if self.ctx.store.release(lease):
                    if delivery.answered:
                        refs.append(TaskRef(lease.job, lease.task_id, lease.type).encode())
                    else:
                        delivery.requeue(0)
            except StoreError as exc:
                log.warning("could not hand back %s; its lease will expire instead: %s", lease.task_id, exc)
            self._kill(index, lease, "the pod is shutting down")
        if refs:
            try:
                self.ctx.queue.publish(self.topic, refs)
            except QueueError as exc:
                log.warning("handed-back tasks not published; the TimeoutWatcher will: %s", exc)

    def _kill(self, index: int, lease: Lease, why: str) -> None:
        execution = self.executions.get(index)
        if execution is not None and execution.kill(lease.exec_id):
            log.warning("killed the executor of %s (slot %d): %s", lease.task_id, index, why)
