"""Tasks a slot leases ahead, while its executor runs another, are counted and shown as leased, not
running: `running` counts started executions only (issue 13, item 3: "16 running on 2 pods x 4
slots"). On real services: the StateStore's transitions directly, then one worker pod of 2 slots."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from taskherd.client import Client, ClientError
from taskherd.intake import Intake, Submission
from taskherd.jobs import Queries
from taskherd.store import keys
from taskherd.store.state_store import Lease
from tests.helpers import wait_until
from tests.integration import test_job_totals, test_pod
from tests.integration.test_pod import PY, Pods, registered

intake = test_job_totals.intake
"""test_job_totals' fixture: an Intake on the real services with an executor for type `t`."""
pods = test_pod.pods
"""test_pod's fixture: pods on one config file with fast timings, all stopped at the end."""

JOB = "ahead"
RECORD = {"exec": "x", "status": "ok"}


def live(intake: Intake) -> dict[str, int]:
    counts = intake.store.job(JOB)["counts"]
    return {s: counts[s] for s in ("pending", "leased", "running", "analyzing")}


def lease(intake: Intake, task_id: str, ahead: bool) -> Lease:
    got, _ = intake.store.lease(JOB, task_id, uuid.uuid4().hex, "w/0", 60_000, ahead=ahead)
    assert isinstance(got, Lease), got
    return got


def submitted(intake: Intake, *ids: str) -> None:
    intake.submit([Submission(type="t", job=JOB, payload={"i": i}, id=i) for i in ids])


def test_a_task_leased_ahead_counts_as_leased_until_its_slot_starts_it_then_running(intake: Intake) -> None:
    # Given a slot running `a` that leases `b` ahead
    submitted(intake, "a", "b")
    a, b = lease(intake, "a", ahead=False), lease(intake, "b", ahead=True)
    # Then b is leased, not running, and its live execution says so
    assert live(intake) == {"pending": 0, "leased": 1, "running": 1, "analyzing": 0}
    queries = Queries(intake.store, intake.archive)
    shown = queries.task("b")["executions"][-1]
    assert shown["status"] == "leased" and shown["leased"] == b.started_ms and shown["started"] is None
    assert queries.task("a")["executions"][-1]["status"] == "running"
    assert queries.job(JOB)["open"] == 2
    # When a's outcome and b's start go in one round trip (finish, then start)
    assert intake.store.finish(a, "ok", {}, "", -1, RECORD, started=b) in ("ring", "analyzing")
    # Then b is running
    assert live(intake) == {"pending": 0, "leased": 0, "running": 1, "analyzing": 1}
    assert queries.task("b")["executions"][-1]["status"] == "running"
    # And when b finishes, nothing is left leased or running
    intake.store.finish(b, "ok", {}, "", -1, RECORD)
    assert live(intake) == {"pending": 0, "leased": 0, "running": 0, "analyzing": 2}
    assert not intake.store.redis.exists(keys.leased(JOB))


def test_a_task_leased_ahead_and_given_back_is_pending_not_leased(intake: Intake) -> None:
    submitted(intake, "b")
    b = lease(intake, "b", ahead=True)
    assert live(intake)["leased"] == 1
    assert intake.store.release(b)
    assert live(intake) == {"pending": 1, "leased": 0, "running": 0, "analyzing": 0}


def test_a_task_leased_ahead_whose_lease_expires_leaves_the_leased_count(intake: Intake) -> None:
    submitted(intake, "b")
    got, _ = intake.store.lease(JOB, "b", uuid.uuid4().hex, "w/0", 0, ahead=True)  # a ttl of 0: expired
    assert isinstance(got, Lease)
    assert intake.store.requeue(JOB, "b") == "pending"
    assert live(intake) == {"pending": 1, "leased": 0, "running": 0, "analyzing": 0}


def test_a_superseded_execution_cannot_start_the_tasks_next_lease(intake: Intake) -> None:
    # Given b leased ahead by one slot, expired and requeued, then leased ahead by another slot
    submitted(intake, "b")
    old, _ = intake.store.lease(JOB, "b", uuid.uuid4().hex, "w/0", 0, ahead=True)
    assert isinstance(old, Lease) and intake.store.requeue(JOB, "b") == "pending"
    lease(intake, "b", ahead=True)
    # When the first slot records its start, fenced by its execution id
    assert intake.store.start(old) is False
    # Then the second slot's lease is still counted leased
    assert live(intake)["leased"] == 1


def test_a_teardown_deletes_the_leased_set(intake: Intake) -> None:
    submitted(intake, "b")
    lease(intake, "b", ahead=True)
    assert intake.store.teardown(JOB) == []
    assert not intake.store.redis.exists(keys.leased(JOB))


def test_a_busy_pod_counts_its_slots_running_and_what_it_leased_ahead_as_leased(
        pods: Callable[..., Pods]) -> None:
    """Given one worker pod of 2 slots running tasks longer than a renewal tick, with more waiting:
    at every look the job counts at most 2 running, and a task a slot leased ahead (given back after
    a tick: renewals every 2 s here) shows as leased, in the counts and in GET /tasks."""
    group = pods(worker={"slots": 2, "lease_renew_s": 2.0, "lease_ttl_s": 6.0})
    manager, worker = group.start("manager", "manager"), group.start("worker", "worker")
    registered(group.settings, manager)
    registered(group.settings, worker)
    client = group.client
    wait_until(lambda: client.ready(), timeout=30, ignore=(ClientError,), message="manager API ready")
    client.add_executor("sleepy", {"kind": "python", "target": f"{PY}:sleepy", "timeout_s": 60})
    client.submit([{"id": f"s{i}", "type": "sleepy", "job": "busy", "payload": {"sleep_s": 3, "i": i}}
                   for i in range(8)])
    seen = wait_until(lambda: _leased_ahead_seen(client), timeout=60, ignore=(ClientError,),
                      message="a task leased ahead, counted and shown as leased")
    assert seen["counts"]["running"] <= 2 and seen["counts"]["leased"] >= 1, seen


def _leased_ahead_seen(client: Client) -> dict[str, Any] | None:
    """The job's status once it counts a leased task and GET /tasks shows one; asserts, at every
    look, that no more tasks count as running than the pod has slots."""
    status = client.job("busy")
    counts = status["counts"]
    assert counts["running"] <= 2, counts
    if not counts.get("leased"):
        return None
    running, _ = client.job_tasks("busy", "running")
    shown = [client.task(tid)["executions"][-1]["status"] for tid in running]
    return status if "leased" in shown else None
