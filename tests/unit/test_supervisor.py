"""Supervisor trees with real pykka actors: restarts, strategies, intensity and escalation."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from taskherd.errors import SupervisorEscalation
from taskherd.supervisor import (
    ChildFailed,
    ChildSpec,
    GetChild,
    OneForAll,
    RestForOne,
    Supervised,
    Supervisor,
    Sweep,
    WhichChildren,
)

ASK_TIMEOUT_S = 2.0
FAST_SWEEP_S = 0.02
NO_SWEEP_S = 60.0  # for tests that drive sweeps by hand, so the timer never interferes


# --- helpers -------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.005)


@dataclass(frozen=True, slots=True)
class Crash:
    """Make the child raise inside a tell handler."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Ask the child to prove it is alive and serving."""


class Echo(Supervised, pykka.ThreadingActor):
    def __init__(
        self,
        supervisor: pykka.ActorRef[Any] | None,
        slot: str,
        *,
        fail_on_start: bool = False,
        journal: list[str] | None = None,
    ) -> None:
        super().__init__(supervisor, slot)
        self.fail_on_start = fail_on_start
        self.journal = journal

    def on_start(self) -> None:
        if self.fail_on_start:
            raise RuntimeError("boom in on_start")

    def on_stop(self) -> None:
        if self.journal is not None:
            self.journal.append(self.slot)
        super().on_stop()

    def on_receive(self, message: Any) -> Any:
        match message:
            case Crash():
                raise RuntimeError("crash requested by the test")
            case Ping():
                return "pong"
            case _:
                return super().on_receive(message)


def echo(name: str, **options: Any) -> ChildSpec:
    return ChildSpec(name, lambda sup, slot: Echo.start(sup, slot, **options))


def start(children: list[ChildSpec], **options: Any) -> pykka.ActorRef[Supervisor]:
    options.setdefault("sweep_interval_s", FAST_SWEEP_S)
    return Supervisor.start(children, **options)


def which(sup: pykka.ActorRef[Any]) -> list[tuple[str, bool, int]]:
    return [tuple(info) for info in sup.ask(WhichChildren(), timeout=ASK_TIMEOUT_S)]


def child(sup: pykka.ActorRef[Any], name: str) -> pykka.ActorRef[Any]:
    return sup.ask(GetChild(name), timeout=ASK_TIMEOUT_S)


def crash(sup: pykka.ActorRef[Any], name: str) -> pykka.ActorRef[Any]:
    ref = child(sup, name)
    ref.tell(Crash())
    return ref


def replaced(sup: pykka.ActorRef[Any], name: str, old: pykka.ActorRef[Any]) -> bool:
    ref = child(sup, name)
    return ref is not None and ref.actor_urn != old.actor_urn and ref.is_alive()


class Escalations:
    """Collects what `on_escalate` receives, and lets a test wait for it."""

    def __init__(self) -> None:
        self.errors: list[SupervisorEscalation] = []
        self.called = threading.Event()

    def __call__(self, error: SupervisorEscalation) -> None:
        self.errors.append(error)
        self.called.set()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def stop_all_actors() -> Any:
    yield
    for _ in range(5):  # a supervisor may refill a slot while stop_all walks the registry
        if not pykka.ActorRegistry.get_all():
            break
        pykka.ActorRegistry.stop_all(timeout=5)
    assert not pykka.ActorRegistry.get_all(), "actors left running after the test"


# --- restarts ------------------------------------------------------------------------------------


def test_child_crashing_in_tell_handler_is_replaced_in_the_same_slot() -> None:
    sup = start([echo("echo")])
    old = crash(sup, "echo")

    wait_until(lambda: replaced(sup, "echo", old), what="a new actor in slot echo")

    assert not old.is_alive()
    assert child(sup, "echo").ask(Ping(), timeout=ASK_TIMEOUT_S) == "pong"
    assert which(sup) == [("echo", True, 1)]


def test_restart_is_logged_with_child_name_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskherd.supervisor")
    sup = start([echo("echo")])
    old = crash(sup, "echo")

    wait_until(lambda: replaced(sup, "echo", old), what="a restart")

    lines = [r.getMessage() for r in caplog.records if r.name == "taskherd.supervisor"]
    assert any("restarting child echo" in line and "crash requested by the test" in line for line in lines)


def test_child_whose_on_start_raises_is_found_by_the_sweep_and_restarted() -> None:
    attempts = itertools.count()
    flaky = ChildSpec("flaky", lambda sup, slot: Echo.start(sup, slot, fail_on_start=next(attempts) == 0))
    sup = start([flaky])

    wait_until(lambda: which(sup) == [("flaky", True, 1)], what="the sweep to restart flaky")

    assert child(sup, "flaky").ask(Ping(), timeout=ASK_TIMEOUT_S) == "pong"


def test_factory_that_raises_leaves_the_slot_empty_until_the_sweep_fills_it() -> None:
    attempts = itertools.count()

    def factory(sup: pykka.ActorRef[Any], slot: str) -> pykka.ActorRef[Any]:
        if next(attempts) == 0:
            raise OSError("port busy")
        return Echo.start(sup, slot)

    sup = start([ChildSpec("late", factory)])

    wait_until(lambda: which(sup) == [("late", True, 1)], what="the sweep to fill slot late")


def test_factory_that_always_raises_escalates_instead_of_spinning() -> None:
    escalations = Escalations()

    def broken(sup: pykka.ActorRef[Any], slot: str) -> pykka.ActorRef[Any]:
        raise OSError("port busy")

    start([ChildSpec("broken", broken)], max_restarts=2, on_escalate=escalations)

    assert escalations.called.wait(ASK_TIMEOUT_S), "on_escalate was not called"
    assert "child broken" in str(escalations.errors[0])
    assert "OSError: port busy" in str(escalations.errors[0])


def test_child_that_stops_normally_leaves_its_slot_empty() -> None:
    sup = start([echo("job"), echo("other")], sweep_interval_s=NO_SWEEP_S)

    child(sup, "job").stop()  # its ChildExited is in the supervisor's inbox before stop() returns
    sup.tell(Sweep())
    sup.tell(Sweep())

    assert which(sup) == [("job", False, 0), ("other", True, 0)]


def test_registry_stop_all_leaves_no_refilled_slot_behind() -> None:
    sup = start([echo("a"), echo("b")], sweep_interval_s=NO_SWEEP_S)
    refs = [sup, child(sup, "a"), child(sup, "b")]

    pykka.ActorRegistry.stop_all(timeout=ASK_TIMEOUT_S)  # stops the children first, then sup

    assert pykka.ActorRegistry.get_all() == []
    assert not any(ref.is_alive() for ref in refs)


def test_failure_report_about_an_earlier_incarnation_is_ignored() -> None:
    sup = start([echo("echo")], sweep_interval_s=NO_SWEEP_S)
    current = child(sup, "echo")

    sup.tell(ChildFailed("echo", "RuntimeError: long ago", urn="urn:uuid:an-actor-already-replaced"))

    assert which(sup) == [("echo", True, 0)]
    assert child(sup, "echo") is current


# --- strategies ----------------------------------------------------------------------------------


def test_one_for_all_restarts_every_sibling() -> None:
    sup = start([echo("a"), echo("b"), echo("c")], strategy=OneForAll())
    before = {name: child(sup, name) for name in "abc"}

    crash(sup, "b")

    wait_until(lambda: all(replaced(sup, name, before[name]) for name in "abc"), what="all three restarted")
    assert which(sup) == [("a", True, 1), ("b", True, 1), ("c", True, 1)]


def test_rest_for_one_restarts_the_failed_child_and_later_siblings_only() -> None:
    sup = start([echo("a"), echo("b"), echo("c")], strategy=RestForOne())
    before = {name: child(sup, name) for name in "abc"}

    crash(sup, "b")

    wait_until(lambda: replaced(sup, "b", before["b"]) and replaced(sup, "c", before["c"]), what="b and c")
    assert child(sup, "a") is before["a"]
    assert which(sup) == [("a", True, 0), ("b", True, 1), ("c", True, 1)]


def test_siblings_restart_in_start_order_after_stopping_in_reverse_order() -> None:
    journal: list[str] = []
    sup = start([echo(name, journal=journal) for name in "abc"], strategy=OneForAll())
    before = {name: child(sup, name) for name in "abc"}

    crash(sup, "a")

    wait_until(lambda: all(replaced(sup, name, before[name]) for name in "abc"), what="all three restarted")
    assert journal == ["c", "b"]  # a crashed, so pykka skipped its on_stop


def test_stopping_the_supervisor_stops_children_in_reverse_order() -> None:
    journal: list[str] = []
    sup = start([echo(name, journal=journal) for name in "abc"])
    refs = [child(sup, name) for name in "abc"]

    sup.stop(timeout=ASK_TIMEOUT_S)

    assert journal == ["c", "b", "a"]
    assert not any(ref.is_alive() for ref in refs)


# --- intensity and escalation --------------------------------------------------------------------


def test_exceeding_max_restarts_within_max_seconds_escalates() -> None:
    escalations = Escalations()
    sup = start([echo("a"), echo("b")], max_restarts=2, max_seconds=60, on_escalate=escalations)
    b = child(sup, "b")
    for _ in range(2):
        old = crash(sup, "a")
        wait_until(lambda old=old: replaced(sup, "a", old), what="a restart within the intensity")

    last_a = crash(sup, "a")

    assert escalations.called.wait(ASK_TIMEOUT_S), "on_escalate was not called"
    assert isinstance(escalations.errors[0], SupervisorEscalation)
    assert "child a" in str(escalations.errors[0])
    wait_until(lambda: not sup.is_alive(), what="the supervisor to stop")
    assert not b.is_alive() and not last_a.is_alive()
    assert pykka.ActorRegistry.get_all() == []


def test_restarts_older_than_max_seconds_do_not_count() -> None:
    clock, escalations = FakeClock(), Escalations()
    sup = start([echo("a")], max_restarts=1, max_seconds=10, on_escalate=escalations, clock=clock)
    old = crash(sup, "a")
    wait_until(lambda: replaced(sup, "a", old), what="first restart")

    clock.now += 11
    old = crash(sup, "a")
    wait_until(lambda: replaced(sup, "a", old), what="second restart, the first out of the window")
    assert not escalations.called.is_set()

    crash(sup, "a")  # two within ten seconds now
    assert escalations.called.wait(ASK_TIMEOUT_S), "on_escalate was not called"


def test_nested_supervisor_escalation_makes_the_parent_restart_it() -> None:
    escalations = Escalations()
    sub = Supervisor.spec("sub", [echo("w")], max_restarts=0, sweep_interval_s=FAST_SWEEP_S)
    root = start([sub], max_restarts=3, on_escalate=escalations)
    old_sub = child(root, "sub")
    old_w = crash(old_sub, "w")

    wait_until(lambda: replaced(root, "sub", old_sub), what="root to restart sub")

    assert which(root) == [("sub", True, 1)]
    assert not old_w.is_alive() and not old_sub.is_alive()
    assert child(child(root, "sub"), "w").ask(Ping(), timeout=ASK_TIMEOUT_S) == "pong"
    assert not escalations.called.is_set()


def test_nested_escalation_past_the_root_reaches_on_escalate_and_stops_the_tree() -> None:
    escalations = Escalations()
    sub = Supervisor.spec("sub", [echo("w")], max_restarts=0, sweep_interval_s=FAST_SWEEP_S)
    root = start([sub, echo("sibling")], max_restarts=0, on_escalate=escalations)

    crash(child(root, "sub"), "w")

    assert escalations.called.wait(ASK_TIMEOUT_S), "root on_escalate was not called"
    assert "child sub" in str(escalations.errors[0])
    wait_until(lambda: pykka.ActorRegistry.get_all() == [], what="the whole tree to stop")


# --- edges ---------------------------------------------------------------------------------------


def test_unknown_message_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskherd.supervisor")
    sup = start([echo("echo")], sweep_interval_s=NO_SWEEP_S)

    sup.tell("not a supervisor message")

    assert which(sup) == [("echo", True, 0)]
    assert any("unknown message" in r.getMessage() for r in caplog.records)


def test_queries_are_also_reachable_through_a_proxy() -> None:
    sup = start([echo("echo")], sweep_interval_s=NO_SWEEP_S)

    proxy = sup.proxy()

    assert proxy.which_children().get(timeout=ASK_TIMEOUT_S) == [("echo", True, 0)]
    assert proxy.child("echo").get(timeout=ASK_TIMEOUT_S) is child(sup, "echo")


def test_unknown_child_name_is_a_key_error_for_the_caller() -> None:
    sup = start([echo("echo")], sweep_interval_s=NO_SWEEP_S)

    with pytest.raises(KeyError):
        child(sup, "nobody")


def test_duplicate_slot_names_are_rejected_at_start() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Supervisor.start([echo("a"), echo("a")])
