"""The LeaseKeeper's per-tick decisions on its own: what waits behind a long task is given back, what
a drain counts and hands back. Narrow: stand-ins for the store, the queue and the slot's feed; the
real thing runs in tests/e2e and tests/faults."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from taskherd.actors.lease_keeper import HeldCount, LeaseKeeper
from taskherd.actors.worker import Ahead, Execution
from taskherd.config import from_dict
from taskherd.errors import StoreError
from taskherd.store.state_store import Lease


class Store:
    """Stands in for the StateStore: every lease renews and releases."""

    def __init__(self) -> None:
        self.renewed: list[list[tuple[str, str]]] = []
        self.released: list[str] = []
        self.renew_entered: list[float] = []
        self.down = False

    def renew(self, job: str, held: list[tuple[str, str]], ttl_ms: int,
              progress: dict[str, str] | None = None) -> list[bool]:
        self.renew_entered.append(time.monotonic())
        if self.down:
            raise StoreError("redis renew: Connection refused")
        self.renewed.append(held)
        return [True] * len(held)

    def release(self, lease: Lease) -> bool:
        self.released.append(lease.task_id)
        return True


class Queue:
    def __init__(self) -> None:
        self.published: list[bytes] = []

    def publish(self, topic: str, bodies: list[bytes]) -> None:
        self.published += bodies

    def publish_tasks(self, refs: list[Any]) -> None:
        self.published += [ref.encode() for ref in refs]


class Feed:
    def __init__(self) -> None:
        self.shed_count = 0

    def shed(self) -> None:
        self.shed_count += 1

    def keep_alive(self) -> None:
        pass


class Message:
    def __init__(self) -> None:
        self.answers: list[str] = []

    def finish(self) -> None:
        self.answers.append("finish")

    def requeue(self, delay_s: float = 0.0) -> None:
        self.answers.append(f"requeue {delay_s}")


class Runner:
    def __init__(self) -> None:
        self.kills = 0

    def kill(self) -> bool:
        self.kills += 1
        return True

    def progress(self) -> dict[str, Any] | None:
        return None  # the executor reported none


def lease(task_id: str) -> Lease:
    return Lease("job", task_id, f"exec-{task_id}", "t", "{}", 60.0, 1, 3, 0)


def slot(running_for_s: float) -> tuple[LeaseKeeper, Execution, Message, Feed]:
    settings = from_dict({"worker": {"slots": 1, "lease_renew_s": 1.0}}, source="<test>")
    ctx = SimpleNamespace(settings=settings, store=Store(), publisher=Queue())
    d = LeaseKeeper(ctx, supervisor=None, slot="lease_keeper")
    execution, message, feed = Execution(Runner()), Message(), Feed()
    execution.begin(lease("running"))
    execution.began_at = time.monotonic() - running_for_s
    execution.hold_ahead([Ahead(lease("ahead"), message, None)])
    d.executions[0], d.slots[0] = execution, (None, feed)
    return d, execution, message, feed


def test_a_task_leased_ahead_of_a_long_task_goes_back_at_the_next_tick():
    d, execution, message, feed = slot(running_for_s=2.0)
    d._renew()
    assert d.ctx.store.released == ["ahead"] and message.answers == ["requeue 0"]
    assert execution.aheads() == [] and feed.shed_count == 1
    assert d.ctx.store.renewed == [[("running", "exec-running")]]


def test_a_whole_batch_leased_behind_a_long_task_goes_back_at_the_next_tick_and_counts_until_then():
    d, execution, message, feed = slot(running_for_s=0.0)
    second, third = Message(), Message()
    execution.hold_ahead([Ahead(lease("b2"), second, None), Ahead(lease("b3"), third, None)])
    execution.unrecorded = (lease("done1"), lease("done2"))
    assert d.on_receive(HeldCount()) == 6  # running, three leased ahead, two run and not yet recorded
    d._renew()
    assert d.ctx.store.renewed[0] == [
        ("running", "exec-running"), ("ahead", "exec-ahead"), ("b2", "exec-b2"), ("b3", "exec-b3"),
        ("done1", "exec-done1"), ("done2", "exec-done2")]
    execution.began_at = time.monotonic() - 2.0  # now it has run past a tick
    d._renew()
    assert d.ctx.store.released == ["ahead", "b2", "b3"]
    assert message.answers == second.answers == third.answers == ["requeue 0"]
    assert execution.aheads() == [] and feed.shed_count == 1


def test_a_task_leased_ahead_of_a_short_task_stays_and_is_renewed_with_it():
    d, execution, message, feed = slot(running_for_s=0.0)
    d._renew()
    assert d.ctx.store.released == [] and message.answers == [] and feed.shed_count == 0
    assert d.ctx.store.renewed == [[("running", "exec-running"), ("ahead", "exec-ahead")]]


def test_a_drain_counts_the_task_leased_ahead_and_hands_both_back():
    d, execution, message, _ = slot(running_for_s=0.0)
    execution.unrecorded = (lease("done"),)
    assert d.on_receive(HeldCount()) == 3  # running, leased ahead, run and not yet recorded
    d._hand_back()
    assert d.ctx.store.released == ["ahead", "running"] and message.answers == ["requeue 0"]
    assert len(d.ctx.publisher.published) == 1  # the running task's message was finished: published again


def test_the_guard_kills_an_executor_whose_lease_went_unrenewed_for_ttl_less_a_margin_once():
    # TTL 5 s, renewals every 1 s: a lease last renewed 3.4 s ago is kept, one renewed 3.6 s ago is
    # not counted on any more (it may expire before a renewal gets through)
    d, execution, message, _ = slot(running_for_s=0.0)
    d.ctx.store.down = True
    d._renew()  # fails: nothing renewed, nothing killed by the keeper itself
    runner = execution._runner
    for exec_id in ("exec-running", "exec-ahead"):
        execution.renewed(exec_id, time.monotonic() - 3.4)
    d.kill_unrenewed()
    assert runner.kills == 0 and message.answers == []
    for exec_id in ("exec-running", "exec-ahead"):
        execution.renewed(exec_id, time.monotonic() - 3.6)
    d.kill_unrenewed()
    d.kill_unrenewed()
    # Then the executor was killed once, and the task leased ahead dropped (it can no longer be started)
    assert runner.kills == 1
    assert execution.aheads() == [] and message.answers == ["finish"]


def test_a_lease_counts_from_when_its_renewal_was_sent_not_answered():
    d, execution, _, _ = slot(running_for_s=0.0)
    before = time.monotonic()
    d._renew()
    assert before <= execution.last_good(execution.current()) <= d.ctx.store.renew_entered[0]  # type: ignore[arg-type]


def test_a_new_lease_counts_from_when_it_was_asked_for():
    # A lease first seen by the keeper a tick after it was taken counts from the request that took it
    d, execution, _, _ = slot(running_for_s=0.0)
    asked = time.monotonic() - 3.6
    execution.begin(Lease("job", "late", "exec-late", "t", "{}", 60.0, 1, 3, 0, asked_at=asked))
    d.ctx.store.down = True
    d._renew()
    assert execution.last_good(execution.current()) == asked  # type: ignore[arg-type]
    d.kill_unrenewed()
    assert execution._runner.kills == 1
