"""Dispatcher: hands task messages to idle slots, and keeps leases (and their messages) alive.

Matching messages to idle slots happens in the IOLoop thread, where messages arrive: a message goes
straight to a slot's mailbox, and a slot that finishes says so to the IOLoop (one thread hop each way).

RDY (how many messages nsqd may have in flight to us) is the pod's slot count, set once: a slot keeps
its message in flight until its executor returns, so nsqd itself never sends more than the pod can
start, and a pod never holds work behind a long task that an idle pod elsewhere could take (at most
for the moment a slot takes to record an outcome). No RDY traffic per task.

Leases are renewed here for every busy slot in one round trip per job, and the message of a long task
is touched so nsqd does not redeliver it meanwhile; a slot whose lease was superseded, or could not be
renewed for nearly a whole TTL (a partition from Redis), has its executor killed before the lease can
expire, so two attempts of a task never run at once.
"""

from __future__ import annotations

import functools
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
class SlotIdle:
    """From a Worker's on_start: this slot (a new incarnation after a restart) can take work."""

    index: int
    ref: pykka.ActorRef
    execution: Execution
    """The slot's current lease and execution, read for renewals and killed from this thread."""


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
        self.renewed_at: dict[str, float] = {}
        """exec id -> when its lease was last renewed (or taken)."""
        self.nsq: NsqLoop | None = None
        self._ticker: Ticker | None = None
        # Owned by the IOLoop thread:
        self._idle: list[tuple[int, pykka.ActorRef]] = []
        self._waiting: deque[Delivery] = deque()
        self._paused = False

    def on_start(self) -> None:
        bus = find(Bus)
        self.nsq = bus.ask(GetLoop(), timeout=15)
        bus.ask(Subscribe(self.topic, CHANNEL, self.ctx.settings.worker.slots, self._on_delivery), timeout=15)
        self._ticker = Ticker(self.actor_ref, RenewLeases(), self.ctx.settings.worker.lease_renew_s).start()

    def on_stop(self) -> None:
        if self._ticker:
            self._ticker.stop()
        self._in_loop(self._pause)
        super().on_stop()

    def held(self) -> dict[int, Lease]:
        """Slot index -> the lease it holds now."""
        out = {}
        for index, execution in self.executions.items():
            current = execution.current()
            if current is not None:
                out[index] = current[0]
        return out

    def _in_loop(self, fn: Any, *args: Any) -> None:
        if self.nsq and self.nsq.loop:
            self.nsq.loop.add_callback(fn, *args)

    # --- IOLoop thread ------------------------------------------------------------------------------
    def _on_delivery(self, delivery: Delivery) -> None:
        if self._paused:
            delivery.requeue(0)  # sent before nsqd saw RDY 0: another pod takes it
            return
        self._waiting.append(delivery)
        self._assign()

    def _slot_free(self, index: int, ref: pykka.ActorRef) -> None:
        self._idle.append((index, ref))
        self._assign()

    def _assign(self) -> None:
        while self._waiting and self._idle:
            index, ref = self._idle.pop()
            try:
                ref.tell(Run(self._waiting[0], functools.partial(self._in_loop, self._slot_free, index, ref)))
            except pykka.ActorDeadError:
                continue  # its restarted incarnation says SlotIdle again
            self._waiting.popleft()

    def _pause(self) -> None:
        """RDY 0 and the messages not yet started back to nsqd: take no more work (drain, shutdown)."""
        self._paused = True
        assert self.nsq is not None
        self.nsq.pause(self.topic)
        while self._waiting:
            self._waiting.popleft().requeue(0)

    def _give_back_stale(self) -> None:
        """A message waits for a slot only while one records an outcome (milliseconds), or while a
        restarted slot comes back. One still waiting a renewal tick later means every slot is busy
        (nsqd resent a message of ours that outlived its --max-msg-timeout, and so sent us one more):
        it goes back to nsqd for an idle pod rather than waiting behind long tasks."""
        now, keep = time.monotonic(), deque()
        for delivery in self._waiting:
            if now - delivery.touched_at > self.ctx.settings.worker.lease_renew_s:
                delivery.requeue(0)
            else:
                keep.append(delivery)
        self._waiting = keep

    # --- actor thread -------------------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        match message:
            case SlotIdle(index, ref, execution):
                self.executions[index] = execution
                self._in_loop(self._slot_free, index, ref)
            case RenewLeases():
                self._renew()
            case Drain(hand_back):
                self._in_loop(self._pause)
                if hand_back:
                    self._hand_back()
            case HeldCount():
                return len(self.held())
            case _:
                log.warning("dispatcher: unknown message %r", message)
        return None

    def _renew(self) -> None:
        self._in_loop(self._give_back_stale)
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
