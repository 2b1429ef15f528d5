"""A worker slot's leases, shared by the slot (`Worker`) and the pod's `LeaseKeeper`.

The slot takes and runs leases; the LeaseKeeper renews them, kills an executor whose lease is lost,
gives back what waits behind a long task, and drains the pod. Both hold the slot's `Execution`,
so what they share lives here, apart from either actor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from taskherd.actors.context import PodContext
from taskherd.errors import StoreError
from taskherd.logs import task_fields
from taskherd.nsq.feed import FeedDelivery
from taskherd.runners import Runner
from taskherd.store.state_store import Lease

log = logging.getLogger("taskherd.worker")


class Execution:
    """The slot's leases, shared with the LeaseKeeper (renewals, shedding, drain).

    `current` is the lease the executor runs under, killable from the LeaseKeeper's thread but only
    while it is still the one asked for: a kill meant for a finished lease must not hit the slot's
    next task. `unrecorded` is the lease of an outcome that waits to be recorded (the slot records it
    as its next python executor runs, or before the next exe or http one starts), renewed like the
    others meanwhile: a late record must find its lease alive, or the task would run twice (a slot
    running short tasks records several outcomes at once: `unrecorded` holds them all). The tasks
    `ahead` are the next ones, leased while the current one runs (one, or a batch for a type whose
    runs are short), their messages still in flight; whichever thread takes one first (the slot to
    run it, the LeaseKeeper to give it back) has it. The pod holds them all.

    When each lease was last known good (taken or renewed: `renewed`), and which ones the LeaseKeeper
    gave up on (`kill`), live here too, for the one lease neither thread can see: the task the slot
    has taken to run and not started yet, while it records the previous outcome (a Redis round trip,
    a doorbell's publish to an nsqd that may hang for seconds). `unsafe_to_start` is the slot's last
    look before it starts an executor: a lease not renewed for as long as the guard allows, or one the
    LeaseKeeper killed meanwhile, is given back instead (the watcher may have requeued it, and another
    pod run it: CI's soak saw an exe start 1.1 s after its lease was requeued)."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self._current: Lease | None = None
        self._ahead: deque[Ahead] = deque()
        self.began_at = 0.0
        self.unrecorded: tuple[Lease, ...] = ()
        self._renewed: dict[str, float] = {}
        """exec id -> when (monotonic) the request that took or last renewed its lease was sent."""
        self._killed: dict[str, None] = {}
        """exec ids the LeaseKeeper killed or dropped (an ordered set, kept short)."""
        self._seats: dict[str, str] = {}
        """exec id -> task type: the seats of limited types (max_concurrency) this slot holds, renewed
        by the LeaseKeeper with the leases, given back when the executor ends or the task is given back."""

    def seat(self, exec_id: str, task_type: str) -> None:
        with self._lock:
            self._seats[exec_id] = task_type

    def unseat(self, exec_id: str) -> str | None:
        """The type whose seat `exec_id` held, now no longer held here (None: it held none)."""
        with self._lock:
            return self._seats.pop(exec_id, None)

    def seats(self) -> dict[str, str]:
        with self._lock:
            return dict(self._seats)

    def hold_ahead(self, aheads: list[Ahead]) -> None:
        """Queue tasks leased ahead, to run in this order after those already queued."""
        with self._lock:
            self._ahead.extend(aheads)

    def take_ahead(self, exec_id: str | None = None) -> Ahead | None:
        """The next task leased ahead (or the one whose execution is `exec_id`), now yours."""
        with self._lock:
            if exec_id is None:
                return self._ahead.popleft() if self._ahead else None
            for ahead in self._ahead:
                if ahead.lease.exec_id == exec_id:
                    self._ahead.remove(ahead)
                    return ahead
            return None

    def take_all_ahead(self) -> list[Ahead]:
        """Every task leased ahead, now yours (to give back: a long task, a drain, a stop)."""
        with self._lock:
            aheads, self._ahead = list(self._ahead), deque()
            return aheads

    def queued(self) -> int:
        """How many tasks wait leased ahead."""
        with self._lock:
            return len(self._ahead)

    def aheads(self) -> list[Lease]:
        with self._lock:
            return [ahead.lease for ahead in self._ahead]

    def begin(self, lease: Lease) -> None:
        with self._lock:
            self._current, self.began_at = lease, time.monotonic()

    def end(self) -> None:
        with self._lock:
            self._current = None

    def current(self) -> Lease | None:
        with self._lock:
            return self._current

    def current_progress(self) -> tuple[Lease | None, dict[str, Any] | None]:
        """The lease the executor runs under and the latest progress its call reported, read together:
        the slot begins its next lease only under this lock, and starts that call only after."""
        with self._lock:
            current = self._current
            return current, (self._runner.progress() if current is not None else None)

    def kill(self, exec_id: str) -> bool:
        """Kill the executor running under `exec_id`, if it is the current one; either way the lease
        is never started from now on."""
        with self._lock:
            self._killed[exec_id] = None
            _trim(self._killed)
            return self._current is not None and self._current.exec_id == exec_id and self._runner.kill()

    def renewed(self, exec_id: str, sent_at: float) -> None:
        with self._lock:
            self._renewed[exec_id] = sent_at
            _trim(self._renewed)

    def last_good(self, lease: Lease) -> float:
        """When (monotonic) the request that took or last renewed the lease was sent."""
        with self._lock:
            return self._renewed.get(lease.exec_id, lease.asked_at or time.monotonic())

    def unsafe_to_start(self, lease: Lease, stale_after_s: float) -> str | None:
        """Why the slot must not start `lease` now, or None."""
        with self._lock:
            if lease.exec_id in self._killed:
                return "the LeaseKeeper gave it up (cancelled, superseded or not renewed)"
        since = time.monotonic() - self.last_good(lease)
        if since > stale_after_s:
            return f"its lease was last renewed {since:.1f} s ago: it may have expired"
        return None


_KEPT = 64
"""Renewal times and kills kept per slot: a slot holds at most 1 + 2 × BATCH_MOST leases at once
(current, ahead, unrecorded), and a lease older than the last few dozen is long settled."""

BATCH_MOST = 8
"""The most tasks a slot leases ahead in one round trip (a type whose runs are short: see
`taskherd.actors.worker`), and so the most outcomes it records in one."""


def _trim(kept: dict[str, Any]) -> None:
    while len(kept) > _KEPT:
        del kept[next(iter(kept))]


def stale_after_s(ctx: PodContext) -> float:
    """A lease not renewed for this long may expire before the next renewal gets through: the guard
    kills its executor, and the slot does not start it (the TTL less 1.5 renewal intervals)."""
    return ctx.settings.worker.lease_ttl_s - 1.5 * ctx.settings.worker.lease_renew_s


@dataclass(frozen=True, slots=True)
class Ahead:
    """A task leased while the slot's executor runs another, with its message (still in flight) and
    its executor spec as stored."""

    lease: Lease
    delivery: FeedDelivery
    raw: str | None


def give_back(ctx: PodContext, ahead: Ahead, execution: Execution | None = None) -> None:
    """A task leased ahead goes back to pending (not counted as an attempt) and its message to nsqd,
    for an idle slot; if it is no longer ours (cancelled, superseded), its message is finished. Its
    seat, if its type is limited, is given back too."""
    if execution is not None:
        give_seat(ctx, execution, ahead.lease.exec_id)
    try:
        released = ctx.store.release(ahead.lease)
    except StoreError as exc:
        lease = ahead.lease
        log.warning("could not give back %s; its lease will expire instead: %s", lease.task_id, exc,
                    extra=task_fields(lease.job, lease.task_id, lease.exec_id, lease.type))
        released = True
    if released:
        ahead.delivery.requeue(0)
    else:
        ahead.delivery.finish()


def give_seat(ctx: PodContext, execution: Execution, exec_id: str) -> None:
    """The seat of `exec_id` back to its type (if it held one); should Redis fail, it lapses with the
    lease TTL, since nobody renews it any more."""
    task_type = execution.unseat(exec_id)
    if task_type is None:
        return
    try:
        ctx.store.limits.give(task_type, exec_id)
    except StoreError as exc:
        log.warning("seat of %s (type %s) not given back; it lapses in a lease TTL: %s", exec_id, task_type, exc)


@dataclass(frozen=True, slots=True)
class Pause:
    """Tell, from the LeaseKeeper: take no more messages (drain, shutdown)."""
