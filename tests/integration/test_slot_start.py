"""A slot never starts a task whose lease it can no longer count on: one its LeaseKeeper has not
renewed for as long as the guard allows (TTL less 1.5 renewal intervals), or one the LeaseKeeper gave
up on (cancelled, superseded, not renewed) while the slot held it. It gives it back instead.

Why: between taking the task leased ahead and starting its executor, a slot records the previous
outcome (a Redis round trip) and publishes its doorbell (to an nsqd that may hang for seconds), and
no one renews the lease it holds meanwhile. CI's soak saw an exe start 1.1 s after its lease was
requeued that way (the doorbell's nsqd host was cut off), and another pod run the task beside it.
The slot's own code path (`Worker._run`) on real services; the delivery is a stand-in.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskherd.actors.context import PodContext
from taskherd.actors.leases import Ahead, stale_after_s
from taskherd.actors.worker import Worker
from taskherd.nsq.publisher import Publisher
from taskherd.store.state_store import Lease, NewTask, StateStore
from tests.helpers import Services

JOB = "slot-start"


class Delivery:
    """What the slot answers nsqd about the task's message."""

    rank = 0

    def __init__(self) -> None:
        self.answers: list[str] = []

    def finish(self) -> None:
        self.answers.append("finish")

    def requeue(self, delay_s: float = 0.0) -> None:
        self.answers.append("requeue")


@pytest.fixture
def slot(clean: Services) -> Iterator[Worker]:
    store = StateStore(clean.settings.redis)
    store.register("executor", "t", {"kind": "python", "target": "tests.integration.limits_funcs:span"}, replace=True)
    ctx = PodContext(clean.settings, "node", store, Publisher(clean.settings.nsq), None)
    worker = Worker(ctx, 0, supervisor=None, slot="worker-0")
    yield worker
    worker.runner.close()


def taken(slot: Worker, task_id: str, log: Path) -> tuple[Lease, str | None]:
    """A task leased by the slot; its executor, if it runs, writes a line to `log`."""
    store = slot.ctx.store
    store.submit(JOB, [NewTask(task_id, JOB, "t", json.dumps({"log": str(log)}), f"d-{task_id}", 3, 60.0)])
    lease, raw = store.lease(JOB, task_id, uuid.uuid4().hex, slot.name, 60_000, "t")
    assert isinstance(lease, Lease), lease
    return lease, raw


@pytest.mark.parametrize("why", ["unrenewed past the guard's limit", "given up by the LeaseKeeper"])
def test_a_lease_the_slot_cannot_count_on_is_given_back_not_started(slot: Worker, tmp_path: Path, why: str) -> None:
    # Given a task the slot leased longer ago than the guard allows, never renewed since; or one whose
    # lease the LeaseKeeper gave up on before the slot started it
    lease, raw = taken(slot, "a", tmp_path / "calls")
    if why == "given up by the LeaseKeeper":
        slot.execution.kill(lease.exec_id)
    else:
        lease = dataclasses.replace(lease, asked_at=time.monotonic() - stale_after_s(slot.ctx) - 1)
    delivery = Delivery()
    # When the slot comes to run it
    slot._run(Ahead(lease, delivery, raw))  # type: ignore[arg-type]
    # Then no executor started, the task is pending again and its message back with nsqd
    assert slot.runner.python_pid is None and not (tmp_path / "calls").exists()
    assert slot.ctx.store.task(JOB, "a")["state"] == "pending"
    assert delivery.answers == ["requeue"]


def test_a_lease_renewed_lately_runs(slot: Worker, tmp_path: Path) -> None:
    # Given a task leased long ago but renewed a moment ago by the LeaseKeeper
    lease, raw = taken(slot, "c", tmp_path / "calls")
    old = dataclasses.replace(lease, asked_at=time.monotonic() - stale_after_s(slot.ctx) - 1)
    slot.execution.renewed(old.exec_id, time.monotonic())
    delivery = Delivery()
    # When the slot runs it
    slot._run(Ahead(old, delivery, raw))  # type: ignore[arg-type]
    # Then its executor ran and its outcome waits to be recorded
    assert len((tmp_path / "calls").read_text().splitlines()) == 1
    assert [one[0].task_id for one in slot._unrecorded] == ["c"]
    assert delivery.answers == ["finish"]
