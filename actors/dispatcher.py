"""Dispatcher: takes task messages only as fast as this pod has idle slots, and keeps leases alive.

RDY (how many messages nsqd may have in flight to us) always equals the number of idle slots: it is
lowered in the IOLoop thread the moment a message arrives, before the message is even handed on, and
raised when a slot frees. So a pod never prefetches work it cannot start, and an idle pod elsewhere
gets it instead.

Leases are renewed here for every busy slot in one round trip per job; a slot whose lease was
superseded, or could not be renewed for nearly a whole TTL (a partition from Redis), has its executor
killed before the lease can expire, so two attempts of a task never run at once.
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
from taskherd.errors import QueueError, StoreError
from taskherd.store.state_store import Lease
from taskherd.store.task_queue import TaskRef
from taskherd.supervisor import Supervised

log = logging.getLogger("taskherd.dispatcher")

CHANNEL = "workers"


@dataclass(frozen=True, slots=True)
class Delivered:
    """From the IOLoop: a task message arrived; a slot was already reserved for it."""

    delivery: Delivery


@dataclass(frozen=True, slots=True)
class SlotIdle:
    """From a Worker's on_start: this slot (a new incarnation after a restart) can take work."""

    index: int
    ref: pykka.ActorRef
    execution: Execution
    """The slot's current execution, so a lost lease can kill its executor from this thread."""


@dataclass(frozen=True, slots=True)
class SlotDone:
    """From a Worker: it finished with a delivery and is idle again."""

    index: int


@dataclass(frozen=True, slots=True)
class Leased:
    """From a Worker: it holds this lease; renew it until Released."""

    index: int
    lease: Lease


@dataclass(frozen=True, slots=True)
class Released:
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
        self.held: dict[int, Lease] = {}
        self.renewed_at: dict[int, float] = {}
        self._free = 0
        """Owned by the IOLoop thread: slots not yet promised to a message (briefly < 0 if nsqd
        delivered on a RDY it had not yet seen lowered; such a message waits for a slot)."""
        self._paused = False
        self.nsq: NsqLoop | None = None
        self._ticker: Ticker | None = None

    def on_start(self) -> None:
        bus = find(Bus)
        self.nsq = bus.ask(GetLoop(), timeout=15)
        bus.ask(Subscribe(self.topic, CHANNEL, 1, self._on_delivery), timeout=15)
        self.nsq.call(self.nsq.set_ready, self.topic, 0)
        self._ticker = Ticker(self.actor_ref, RenewLeases(), self.ctx.settings.worker.lease_renew_s).start()

    def on_stop(self) -> None:
        if self._ticker:
            self._ticker.stop()
        self.pause()
        super().on_stop()

    def pause(self) -> None:
        """RDY 0: take no more messages (drain, shutdown)."""
        if self.nsq and self.nsq.loop:
            self.nsq.loop.add_callback(self._pause)

    # --- IOLoop thread ------------------------------------------------------------------------------
    def _on_delivery(self, delivery: Delivery) -> None:
        self._set_free(self._free - 1)
        try:
            self.actor_ref.tell(Delivered(delivery))
        except pykka.ActorDeadError:  # being restarted: give it back now, not after nsqd's msg_timeout
            delivery.requeue(1.0)

    def _set_free(self, free: int) -> None:
        self._free = free
        assert self.nsq is not None
        self.nsq.set_ready(self.topic, 0 if self._paused else max(0, free))

    def _release(self) -> None:
        self._set_free(self._free + 1)

    def _pause(self) -> None:
        self._paused = True
        self._set_free(self._free)

    # --- actor thread -------------------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        match message:
            case Delivered(delivery):
                self.waiting.append(delivery)
                self._assign()
            case SlotIdle(index, ref, execution):
                self.refs[index], self.executions[index] = ref, execution
                self.held.pop(index, None)
                self._idle(index)
            case SlotDone(index):
                self._idle(index)
            case Leased(index, lease):
                self.held[index] = lease
                self.renewed_at[index] = time.monotonic()
            case Released(index):
                self.held.pop(index, None)
            case RenewLeases():
                self._renew()
            case Drain(hand_back):
                self.pause()
                if hand_back:
                    self._hand_back()
            case HeldCount():
                return len(self.held)
            case _:
                log.warning("dispatcher: unknown message %r", message)

    def _idle(self, index: int) -> None:
        if index in self.idle:
            return
        self.idle.append(index)
        if self.waiting:
            self._assign()
        elif self.nsq and self.nsq.loop:
            self.nsq.loop.add_callback(self._release)

    def _assign(self) -> None:
        while self.waiting and self.idle:
            index = self.idle.pop()
            try:
                self.refs[index].tell(Run(self.waiting[0]))
            except pykka.ActorDeadError:
                continue  # its restarted incarnation will say SlotIdle again
            self.waiting.popleft()

    def _renew(self) -> None:
        by_job: dict[str, list[tuple[int, Lease]]] = {}
        for index, lease in self.held.items():
            by_job.setdefault(lease.job, []).append((index, lease))
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
                    self.renewed_at[index] = now
                else:
                    self._kill(index, lease, "the task was cancelled or its execution superseded")

    def _kill_unrenewed(self, held: list[tuple[int, Lease]], ttl: float, exc: Exception) -> None:
        margin = self.ctx.settings.worker.lease_renew_s * 1.5
        for index, lease in held:
            if time.monotonic() - self.renewed_at.get(index, 0) > ttl - margin:
                self._kill(index, lease, f"its lease could not be renewed ({exc})")

    def _hand_back(self) -> None:
        refs = []
        for index, lease in list(self.held.items()):
            try:
                if self.ctx.store.release(lease):
                    refs.append(TaskRef(lease.job, lease.task_id, lease.type).encode())
            except StoreError as exc:
                log.warning("could not hand back %s; its lease will expire instead: %s", lease.task_id, exc)
            self._kill(index, lease, "the pod is shutting down")
        if refs:
            try:
                self.ctx.queue.publish(self.ctx.settings.nsq.tasks_topic, refs)
            except QueueError as exc:
                log.warning("handed-back tasks not published; the TimeoutWatcher will: %s", exc)

    def _kill(self, index: int, lease: Lease, why: str) -> None:
        if self.held.get(index) is not lease:
            return  # the slot already moved on
        self.held.pop(index, None)
        execution = self.executions.get(index)
        if execution is not None and execution.kill(lease.exec_id):
            log.warning("killed the executor of %s (slot %d): %s", lease.task_id, index, why)
