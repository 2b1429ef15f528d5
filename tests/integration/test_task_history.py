"""A task's history through retries: every execution kept, each with its retry round, live in Redis
and in its MySQL row; a retry answers `retried`. Through the real API (Manager and HttpServer actors)
on real services; executions are driven through the StateStore, the analyzer's path directly."""

from __future__ import annotations

import uuid

from taskherd.intake import Intake
from taskherd.nsq.publisher import Publisher
from taskherd.store.archive import Archive
from taskherd.store.state_store import Lease, StateStore
from tests.integration import test_api
from tests.integration.test_api import Stack
from tests.integration.test_job_totals import analyze

stack, typed = test_api.stack, test_api.typed  # the API's fixtures: Manager and HttpServer on real services


def fail_for_good(intake: Intake, job: str, task_id: str, attempts: int) -> None:
    """`attempts` executions: retryable failures, the last one final; then archived as failed."""
    for n in range(1, attempts + 1):
        intake.store.promote(job, task_id)
        lease, _ = intake.store.lease(job, task_id, uuid.uuid4().hex, f"w/{n}", 60_000)
        assert isinstance(lease, Lease), lease
        final = n == attempts
        intake.store.finish(lease, "failed", None, f"boom {n}", -1 if final else 0,
                            {"exec": lease.exec_id, "worker": f"w/{n}", "status": "failed", "error": f"boom {n}"})
    analyze(intake, job)


def test_a_retried_task_keeps_every_execution_of_every_round_live_and_archived(typed: Stack) -> None:
    s = typed.settings
    intake = Intake(s, StateStore(s.redis), Archive(s.mysql), Publisher(s.nsq))
    http = typed.http
    # Given a task that failed for good after two attempts
    assert http.post("/tasks", json=typed.task(id="h")).status_code == 201
    fail_for_good(intake, "j1", "h", 2)
    first = http.get("/tasks/h").json()
    assert first["state"] == "failed" and [e["error"] for e in first["executions"]] == ["boom 1", "boom 2"]

    # When it is retried, the answer says so, and the live task still shows the first round
    answer = http.post("/tasks/h/retry")
    assert answer.status_code == 200
    live = http.get("/tasks/h").json()
    assert live["state"] == "pending" and [e["error"] for e in live["executions"]] == ["boom 1", "boom 2"]
    assert live["round"] == 1 and live["attempts"] == 0
    assert [e["round"] for e in live["executions"]] == [0, 0]

    assert answer.json() == {"id": "h", "status": "retried"}
    # Then, when it fails again (and once more after a second retry), nothing of any round is lost
    fail_for_good(intake, "j1", "h", 1)
    assert http.post("/tasks/h/retry").json()["status"] == "retried"
    fail_for_good(intake, "j1", "h", 2)
    shown = http.get("/tasks/h").json()
    expected = [("boom 1", 0), ("boom 2", 0), ("boom 1", 1), ("boom 1", 2), ("boom 2", 2)]
    assert shown["state"] == "failed" and shown["round"] == 2 and shown["attempts"] == 2
    assert [(e["error"], e["round"]) for e in shown["executions"]] == expected
    row = intake.archive.task("h")
    assert row is not None and row["retry_round"] == 2
    assert [(e["error"], e["round"]) for e in row["executions"]] == expected
    assert http.get("/jobs/j1").json()["total"] == 1


def test_retrying_a_jobs_dead_letters_counts_them_as_requeued(typed: Stack) -> None:
    s = typed.settings
    intake = Intake(s, StateStore(s.redis), Archive(s.mysql), Publisher(s.nsq))
    typed.http.post("/tasks", json={"tasks": [typed.task(id=f"d{i}", payload={"i": i}) for i in range(3)]})
    for i in range(3):
        fail_for_good(intake, "j1", f"d{i}", 1)
    answer = typed.http.post("/jobs/j1/retry")
    assert answer.status_code == 200 and answer.json() == {"job": "j1", "requeued": 3}


def test_a_running_task_shows_its_live_execution(typed: Stack) -> None:
    """`running` with `executions: []` told nothing: the live execution (worker, started, deadline) shows."""
    s = typed.settings
    store = StateStore(s.redis)
    assert typed.http.post("/tasks", json=typed.task(id="r", timeout_s=30)).status_code == 201
    lease, _ = store.lease("j1", "r", "exec-1", "pod-a/2", 60_000)
    assert isinstance(lease, Lease)
    shown = typed.http.get("/tasks/r").json()
    assert shown["state"] == "running" and shown["attempts"] == 1
    assert shown["executions"] == [{"exec": "exec-1", "worker": "pod-a/2", "started": lease.started_ms,
                                    "deadline": lease.started_ms + 30_000, "status": "running", "round": 0}]
