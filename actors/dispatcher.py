"""Dispatcher: hands task messages to idle slots, and keeps leases (and their messages) alive.

RDY (how many messages nsqd may have in flight to us) is the pod's slot count, set once: a slot keeps
its message in flight until the task's outcome is recorded, so nsqd itself never sends more than the
pod can start, and a pod never prefetches work that an idle pod elsewhere could take. No RDY
traffic per task.

Leases are renewed here for every busy slot in one round trip per job, and the message of a long task
is touched so nsqd does not redeliver it meanwhile; a slot whose lease was superseded, or could not be
renewed for nearly a whole TTL (a partition from Redis), has its executor killed before the lease can
expire, so two attempts of a task never run at once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import pykka

from taskherd.actors.bus import Bus, Delivery, GetLoop, NsqLoop, Subscribe
from taskherd.actors.context import PodContext, find
from taskherd.actors.ticker import Ticker
from taskherd.actors.worker import Execution, Run
from taskherd.errors import StoreError
from taskherd.store.state_store import Lease
from taskherd.supervisor import Supervised

log = logging.getLogger("taskherd.dispatcher")

CHANNEL = "workers"


@dataclass(frozen=True, slots=True)
class Delivered:
    """From the IOLoop: a task message arrived."""

    delivery: Delivery


@dataclass(frozen=True, slots=True)
class SlotIdle:
    """From a Worker's on_start: this slot (a new incarnation after a restart) can take work."""

    index: int
    ref: pykka.ActorRef
    execution: Execution
    """The slot's current lease and execution, read for renewals and killed from this thread."""


@dataclass(frozen=True, slots=True)
class SlotDone:
    """From a Worker: it finished with a delivery and is idle again."""

    index: int


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
        self.refs: dict[int, pykka.ActorRef] = {}
        self.executions: dict[int, Execution] = {}
        self.idle: list[int] = []
        self.waiting: deque[Delivery] = deque()
        self.renewed_at: dict[str, float] = {}
        """exec id -> when its lease was last renewed (or taken)."""
        self._paused = False
        self.nsq: NsqLoop | None = None
        self._ticker: Ticker | None = None

    def on_start(self) -> None:
        bus = find(Bus)
        self.nsq = bus.ask(GetLoop(), timeout=15)
        bus.ask(Subscribe(self.topic, CHANNEL, self.ctx.settings.worker.slots, self._on_delivery), timeout=15)
        self._ticker = Ticker(self.actor_ref, RenewLeases(), self.ctx.settings.worker.lease_renew_s).start()

    def on_stop(self) -> None:
        if self._ticker:
            self._ticker.stop()
        self.pause()
        super().on_stop()

    def pause(self) -> None:
        """RDY 0: take no more messages (drain, shutdown)."""
        self._paused = True
        if self.nsq and self.nsq.loop:
            self.nsq.loop.add_callback(self.nsq.set_ready, self.topic, 0)

    def held(self) -> dict[int, Lease]:
        """Slot index -> the lease it holds now."""
        out = {}
        for index, execution in self.executions.items():
            current = execution.current()
            if current is not None:
                out[index] = current[0]
        return out

    def _on_delivery(self, delivery: Delivery) -> None:
        """IOLoop thread."""
        try:
            self.actor_ref.tell(Delivered(delivery))
        except pykka.ActorDeadError:  # being restarted: give it back now, not after nsqd's msg_timeout
            delivery.requeue(0)

    def on_receive(self, message: Any) -> Any:
        match message:
            case Delivered(delivery):
                if self._paused:
                    delivery.requeue(0)  # sent before nsqd saw RDY 0: another pod takes it
                    return None
                self.waiting.append(delivery)
                self._assign()
            case SlotIdle(index, ref, execution):
                self.refs[index], self.executions[index] = ref, execution
                self._idle(index)
            case SlotDone(index):
                self._idle(index)
            case RenewLeases():
                self._renew()
            case Drain(hand_back):
                self.pause()
                while self.waiting:
                    self.waiting.popleft().requeue(0)
                if hand_back:
                    self._hand_back()
            case HeldCount():
                return len(self.held())
            case _:
                log.warning("dispatcher: unknown message %r", message)
        return None

    def _idle(self, index: int) -> None:
        if index not in self.idle:
            self.idle.append(index)
        self._assign()

    def _assign(self) -> None:
        while self.waiting and self.idle:
            index = self.idle.pop()
            try:
                self.refs[index].tell(Run(self.waiting[0], self.actor_ref))
            except pykka.ActorDeadError:
                continue  # its restarted incarnation will say SlotIdle again
            self.waiting.popleft()

    def _renew(self) -> None:
        by_job: dict[str, list[tuple[int, Lease]]] = {}
        for index, execution in self.executions.items():
            current = execution.current()
            if current is None:
                continue
            lease, delivery = current
            self.renewed_at.setdefault(lease.exec_id, time.monotonic())
            by_job.setdefault(lease.job, []).append((index, lease))
            self._keep_in_flight(delivery)
        for delivery in self.waiting:
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

    def _keep_in_flight(self, delivery: Delivery) -> None:
        """A message held past half of nsqd's msg_timeout is touched, or nsqd would send it again."""
        if time.monotonic() - delivery.touched_at > self.ctx.settings.nsq.msg_timeout_s / 2:
            delivery.touch()

    def _kill_unrenewed(self, held: list[tuple[int, Lease]], ttl: float, exc: Exception) -> None:
        margin = self.ctx.settings.worker.lease_renew_s * 1.5
        for index, lease in held:
            if time.monotonic() - self.renewed_at.get(lease.exec_id, 0) > ttl - margin:
                self._kill(index, lease, f"its lease could not be renewed ({exc})")

    def _hand_back(self) -> None:
        """Running tasks go back to pending and their messages back to nsqd, for another pod."""
        for index, execution in self.executions.items():
            current = execution.current()
            if current is None:
                continue
            lease, delivery = current
            try:
                if self.ctx.store.release(lease):
                    delivery.requeue(0)
            except StoreError as exc:
                log.warning("could not hand back %s; its lease will expire instead: %s", lease.task_id, exc)
            self._kill(index, lease, "the pod is shutting down")

    def _kill(self, index: int, lease: Lease, why: str) -> None:
        execution = self.executions.get(index)
        if execution is not None and execution.kill(lease.exec_id):
            log.warning("killed the executor of %s (slot %d): %s", lease.task_id, index, why)
