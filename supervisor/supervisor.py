"""A pykka actor that keeps its children alive, and gives up loudly when it cannot.

Failures arrive two ways: a `Supervised` child reports from `on_failure` (fast), and a timer makes
the supervisor sweep `is_alive()` (catches an `on_start` that raised, which pykka never reports).
Past its restart intensity a supervisor stops its children and fails; its own supervisor sees that
like any child failure, and the root calls `on_escalate` so its owner can exit the process non-zero.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pykka

from taskherd.errors import SupervisorEscalation
from taskherd.metrics import ACTOR_RESTARTS
from taskherd.supervisor.intensity import RestartIntensity
from taskherd.supervisor.messages import ChildExited, ChildFailed, GetChild, Sweep, WhichChildren
from taskherd.supervisor.spec import ChildSpec
from taskherd.supervisor.strategies import OneForOne, Strategy
from taskherd.supervisor.supervised import Supervised, describe
from taskherd.supervisor.ticker import Ticker

logger = logging.getLogger("taskherd.supervisor")

EscalationHandler = Callable[[SupervisorEscalation], None]


class ChildInfo(NamedTuple):
    """What a probe needs about one slot; a tuple so callers may unpack `(name, alive, restarts)`."""

    name: str
    alive: bool
    restarts: int


@dataclass(slots=True)
class _Slot:
    """A spec with its current incarnation; only the supervisor's thread touches it."""

    spec: ChildSpec
    ref: pykka.ActorRef[Any] | None = None
    restarts: int = 0
    exited: bool = False
    """It stopped normally (a shutdown, or it chose to finish): not refilled."""
    suspect_urn: str | None = None
    """Incarnation the last sweep found dead with no report; refilled if the next sweep agrees."""
    start_error: str = ""
    """Why the factory raised, when the slot is empty because of it; for the next restart's reason."""

    def alive(self) -> bool:
        return self.ref is not None and self.ref.is_alive()

    def urn(self) -> str | None:
        return None if self.ref is None else self.ref.actor_urn

    def is_current(self, urn: str | None) -> bool:
        """Reports name an incarnation; one about an actor we already replaced must not restart twice."""
        return urn is None or urn == self.urn()


class Supervisor(Supervised, pykka.ThreadingActor):
    """Starts its children in order, restarts them by `strategy`, stops them in reverse order.

    Later children may rely on earlier ones, hence the orders. A failure refills the slot; a normal
    stop leaves it empty (see `spec`). `parent`/`name` make it a child of another supervisor.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy | None = None,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        sweep_interval_s: float = 1.0,
        on_escalate: EscalationHandler | None = None,
        parent: pykka.ActorRef[Any] | None = None,
        name: str = "root",
        stop_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(parent, name)
        _check_options(children, sweep_interval_s, stop_timeout_s)
        self._slots = {spec.name: _Slot(spec) for spec in children}
        self._strategy = strategy or OneForOne()
        self._intensity = RestartIntensity(max_restarts, max_seconds)
        self._on_escalate = on_escalate
        self._stop_timeout_s = stop_timeout_s
        self._clock = clock
        self._sweeper = Ticker(self.actor_ref, Sweep(), sweep_interval_s)

    @classmethod
    def spec(cls, name: str, children: Sequence[ChildSpec], **options: Any) -> ChildSpec:
        """Nest a supervisor as a child, wired so its escalation reaches the parent as a `ChildFailed`."""
        return ChildSpec(name, lambda parent, slot: cls.start(children, parent=parent, name=slot, **options))

    # pykka hooks

    def on_start(self) -> None:
        for slot in self._slots.values():
            self._start_child(slot)
        self._sweeper.start()

    def on_stop(self) -> None:
        self._sweeper.stop()
        self._stop_children(list(self._slots))
        super().on_stop()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """Our own crash must not orphan children: they stop before the parent hears of it."""
        self._sweeper.stop()
        self._stop_children(list(self._slots))
        super().on_failure(exception_type, exception_value, traceback)

    def on_receive(self, message: Any) -> Any:
        """Reports and ticks are told; only `WhichChildren`/`GetChild` expect an answer (edges ask)."""
        match message:
            case ChildFailed(name=name, reason=reason, urn=urn):
                self._child_failed(name, reason, urn)
            case ChildExited(name=name, urn=urn):
                self._child_exited(name, urn)
            case Sweep():
                self._sweep()
            case WhichChildren():
                return self.which_children()
            case GetChild(name=name):
                return self.child(name)
            case _:
                logger.warning("supervisor %s: unknown message %r; ignored", self.slot, message)
        return None

    # ask-able queries (through `ask(WhichChildren())` or `proxy().which_children()`)

    def which_children(self) -> list[ChildInfo]:
        """Liveness and restart counts per slot, so probes need not know the tree's refs."""
        return [ChildInfo(name, slot.alive(), slot.restarts) for name, slot in self._slots.items()]

    def child(self, name: str) -> pykka.ActorRef[Any] | None:
        """The slot's current ref; callers must ask again after a restart, as old refs stay dead."""
        if name not in self._slots:
            raise KeyError(f"supervisor {self.slot}: no child slot named {name!r}")
        return self._slots[name].ref

    # failure handling

    def _child_failed(self, name: str, reason: str, urn: str | None) -> None:
        slot = self._known_slot(name)
        if slot is None or not slot.is_current(urn) or slot.alive():
            return
        self._restart(name, reason)

    def _child_exited(self, name: str, urn: str | None) -> None:
        slot = self._known_slot(name)
        if slot is None or not slot.is_current(urn) or slot.alive():
            return
        slot.exited = True
        logger.info("supervisor %s: child %s stopped normally; its slot stays empty", self.slot, name)

    def _sweep(self) -> None:
        """A death nobody reported is acted on at the second sweep that sees it: the child's
        `ChildExited` is sent from the end of its `on_stop`, so it may trail the first sighting."""
        for name, slot in self._slots.items():
            if slot.alive() or slot.exited:
                slot.suspect_urn = None
            elif slot.ref is None:
                self._restart(name, f"not running (its factory raised {slot.start_error})")
            elif slot.suspect_urn != slot.urn():
                slot.suspect_urn = slot.urn()
            else:
                self._restart(name, "found dead by the sweep, with no report (did on_start raise?)")

    def _known_slot(self, name: str) -> _Slot | None:
        slot = self._slots.get(name)
        if slot is None:
            logger.warning("supervisor %s: report about unknown child %r; ignored", self.slot, name)
        return slot

    def _restart(self, failed: str, reason: str) -> None:
        if not self._intensity.allow(self._clock()):
            raise self._give_up(failed, reason)
        affected = self._strategy.affected(list(self._slots), failed)
        self._stop_children(affected)
        for name in affected:
            why = reason if name == failed else f"sibling {failed} failed ({reason})"
            logger.warning(
                "supervisor %s: restarting child %s (%r): %s", self.slot, name, self._strategy, why
            )
            self._slots[name].restarts += 1
            ACTOR_RESTARTS.labels(re.sub(r"-\d+$", "", name)).inc()
            self._start_child(self._slots[name])

    def _give_up(self, failed: str, reason: str) -> SupervisorEscalation:
        """Stop every child and tell the owner; the caller then raises, and a parent sees the failure."""
        i = self._intensity
        error = SupervisorEscalation(
            f"supervisor {self.slot}: more than {i.max_restarts} restarts within {i.max_seconds}s; "
            f"last: child {failed}: {reason}"
        )
        logger.error("%s; stopping all its children and escalating", error)
        self._sweeper.stop()
        self._stop_children(list(self._slots))
        if self._on_escalate is not None:
            try:
                self._on_escalate(error)
            except Exception:
                logger.exception("supervisor %s: on_escalate callback raised", self.slot)
        return error

    # starting and stopping

    def _start_child(self, slot: _Slot) -> None:
        """A factory that raises leaves the slot empty; the sweep retries it, within the intensity."""
        slot.exited = False
        slot.suspect_urn = None
        try:
            slot.ref = slot.spec.factory(self.actor_ref, slot.spec.name)
        except Exception as exc:
            slot.ref, slot.start_error = None, describe(exc)
            name, why = slot.spec.name, slot.start_error
            logger.error("supervisor %s: factory of child %s raised %s", self.slot, name, why, exc_info=True)

    def _stop_children(self, names: Sequence[str]) -> None:
        for name in reversed(names):
            ref = self._slots[name].ref
            if ref is None or not ref.is_alive():
                continue
            try:
                ref.stop(block=True, timeout=self._stop_timeout_s)
            except pykka.Timeout:
                timeout = self._stop_timeout_s
                logger.error("supervisor %s: child %s did not stop within %ss", self.slot, name, timeout)


def _check_options(children: Sequence[ChildSpec], sweep_interval_s: float, stop_timeout_s: float) -> None:
    """Checked in the caller's thread, so a bad option raises from `Supervisor.start` itself."""
    names = [spec.name for spec in children]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Supervisor children: duplicate slot names {duplicates}")
    if sweep_interval_s <= 0:
        raise ValueError(f"sweep_interval_s: expected a number > 0, got {sweep_interval_s!r}")
    if stop_timeout_s <= 0:
        raise ValueError(f"stop_timeout_s: expected a number > 0, got {stop_timeout_s!r}")
