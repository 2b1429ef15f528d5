"""Waiting for one task's result: `GET /tasks/{id}?wait_s=` answers the moment finish.lua records the
outcome (woken through Redis pub/sub, before any analysis or archive), after `wait_s` with the task as
it is, at once for an archived task; `Client.result` and `taskherd task wait` ride on it, and `POST
/tasks/run` (`Client.run`, the SDK's `run`) submits and waits in one request. Through the
real API (Manager and HttpServer actors) on real services; the worker's side is driven through the
StateStore, so the moment of the finish is the test's."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from taskherd.api.routes import tasks as tasks_routes
from taskherd.client import Client, TaskFailed, TaskTimeout
from taskherd.intake import Intake
from taskherd.jobs import Queries
from taskherd.nsq.publisher import Publisher
from taskherd.store.archive import Archive
from taskherd.store.state_store import Lease, StateStore
from tests.helpers import wait_until, write_config
from tests.integration import test_api
from tests.integration.test_api import Stack
from tests.integration.test_job_totals import analyze

stack, typed = test_api.stack, test_api.typed  # the API's fixtures: Manager and HttpServer on real services
TASKHERD = str(Path(sys.executable).parent / "taskherd")


def run_and_finish(store: StateStore, job: str, task_id: str, outcome: str = "ok", error: str = "") -> None:
    """What a worker does: lease the task, then record its outcome (final)."""
    store.promote(job, task_id)
    lease, _ = store.lease(job, task_id, uuid.uuid4().hex, "w/0", 60_000)
    assert isinstance(lease, Lease), lease
    result = {"echo": task_id} if outcome == "ok" else None
    store.finish(lease, outcome, result, error, -1, {"exec": lease.exec_id, "status": outcome, "error": error})


def test_a_wait_answers_the_moment_the_result_is_recorded_before_any_analysis(typed: Stack,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # The API runs in this process: no periodic re-read during this wait, so only the wake-up can answer it
    monkeypatch.setattr(tasks_routes, "RECHECK_S", 60.0)
    store = StateStore(typed.settings.redis)
    assert typed.http.post("/tasks", json=typed.task(id="w1")).status_code == 201
    answered: list[tuple[float, dict]] = []

    def wait() -> None:
        reply = typed.http.get("/tasks/w1", params={"wait_s": 30})
        answered.append((time.monotonic(), reply.json()))

    # Given a client waiting for the task's result (its request in flight, unanswered)
    waiter = threading.Thread(target=wait)
    waiter.start()
    waiter.join(1.0)
    assert not answered, "answered before the task had a result"
    # When a worker records its outcome
    finished_at = time.monotonic()
    run_and_finish(store, "j1", "w1")
    waiter.join(10)
    # Then the wait answers at once, with the result, the analysis still to come (nothing archives here)
    at, task = answered[0]
    print(f"\nanswered {1000 * (at - finished_at):.1f} ms after the finish was sent")
    assert task["state"] == "analyzing" and task["outcome"] == "ok" and task["result"] == {"echo": "w1"}, task
    assert at - finished_at < 1.0  # the wake-up, not the 0.5 s re-read, nor the archive
    store.close()


def test_a_wait_ends_after_wait_s_with_the_task_as_it_is(typed: Stack) -> None:
    assert typed.http.post("/tasks", json=typed.task(id="w2")).status_code == 201
    start = time.monotonic()
    reply = typed.http.get("/tasks/w2", params={"wait_s": 0.7})
    assert reply.status_code == 200 and reply.json()["state"] == "pending"
    assert time.monotonic() - start >= 0.7


def test_a_wait_on_an_unknown_id_is_a_404_at_once_and_a_bad_wait_s_a_422(typed: Stack) -> None:
    start = time.monotonic()
    assert typed.http.get("/tasks/nobody", params={"wait_s": 20}).status_code == 404
    assert time.monotonic() - start < 5
    for bad in ("-1", "61", "soon"):
        reply = typed.http.get("/tasks/nobody", params={"wait_s": bad})
        assert reply.status_code == 422 and reply.json()["errors"][0]["field"] == "wait_s", (bad, reply.json())


def test_a_wait_on_an_archived_task_answers_at_once(typed: Stack) -> None:
    store = StateStore(typed.settings.redis)
    assert typed.http.post("/tasks", json=typed.task(id="w3")).status_code == 201
    run_and_finish(store, "j1", "w3")
    s = typed.settings
    analyze(Intake(s, store, Archive(s.mysql), Publisher(s.nsq)), "j1")
    start = time.monotonic()
    task = typed.http.get("/tasks/w3", params={"wait_s": 20}).json()
    assert task["state"] == "succeeded" and time.monotonic() - start < 5
    store.close()


def test_two_hundred_waiters_are_all_answered(typed: Stack) -> None:
    store = StateStore(typed.settings.redis)
    ids = [f"many-{i}" for i in range(200)]
    for start in range(0, len(ids), test_api.MAX_BATCH):
        batch = [typed.task(id=i) for i in ids[start:start + test_api.MAX_BATCH]]
        assert typed.http.post("/tasks", json={"tasks": batch}).status_code == 201
    clients = [Client(typed.url) for _ in range(8)]
    with ThreadPoolExecutor(max_workers=200) as pool:
        # every waiter in flight (an HTTP connection each), then every task finished
        futures = [pool.submit(clients[n % 8].result, task_id, 60) for n, task_id in enumerate(ids)]
        for task_id in ids:
            run_and_finish(store, "j1", task_id)
        results = [f.result(timeout=90) for f in futures]
    assert results == [{"echo": i} for i in ids]
    for client in clients:
        client.close()
    store.close()


def test_client_result_raises_on_a_failed_executor_and_on_its_timeout(typed: Stack) -> None:
    store = StateStore(typed.settings.redis)
    assert typed.http.post("/tasks", json=typed.task(id="w4")).status_code == 201
    assert typed.http.post("/tasks", json=typed.task(id="w5")).status_code == 201
    run_and_finish(store, "j1", "w4", outcome="failed", error="boom")
    with Client(typed.url) as client:
        with pytest.raises(TaskFailed, match="boom"):
            client.result("w4", timeout=10)
        with pytest.raises(TaskTimeout, match="still pending"):
            client.result("w5", timeout=0.5)
    store.close()


def test_task_wait_on_the_command_line_prints_the_result_or_says_why_not(typed: Stack, tmp_path: Path) -> None:
    store = StateStore(typed.settings.redis)
    for task_id in ("c-ok", "c-bad", "c-slow"):
        assert typed.http.post("/tasks", json=typed.task(id=task_id)).status_code == 201
    run_and_finish(store, "j1", "c-ok")
    run_and_finish(store, "j1", "c-bad", outcome="failed", error="no such file")
    config = str(write_config(typed.settings, tmp_path))

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TASKHERD, "--config", config, "task", "wait", *argv], capture_output=True, text=True,
                              timeout=60)

    ok, bad, slow = cli("c-ok"), cli("c-bad"), cli("c-slow", "--timeout", "0.5")
    assert ok.returncode == 0 and '"echo": "c-ok"' in ok.stdout, ok
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: task 'c-bad'") and "no such file" in bad.stderr
    assert slow.returncode == 3 and slow.stderr.strip() == "error: task 'c-slow' still pending after 0.5 s", slow
    assert "Traceback" not in bad.stderr + slow.stderr
    store.close()




def test_a_run_answers_with_the_result_in_the_same_request(typed: Stack,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # No periodic re-read: only the watch, made before the task existed, can answer this wait
    monkeypatch.setattr(tasks_routes, "RECHECK_S", 60.0)
    store = StateStore(typed.settings.redis)
    answered: list[tuple[float, int, dict]] = []

    def submit_and_wait() -> None:
        reply = typed.http.post("/tasks/run", json=typed.task(id="sw1"), params={"wait_s": 30})
        answered.append((time.monotonic(), reply.status_code, reply.json()))

    # Given a submit with wait_s in flight: the task is created, the request unanswered
    waiter = threading.Thread(target=submit_and_wait)
    waiter.start()
    wait_until(lambda: store.task("j1", "sw1"), timeout=10, message="the run's task is created")
    assert not answered
    # When a worker records its outcome
    finished_at = time.monotonic()
    run_and_finish(store, "j1", "sw1")
    waiter.join(10)
    # Then that one request answers at once: created, with the task and its result
    at, status, body = answered[0]
    assert status == 201 and body["id"] == "sw1" and body["status"] == "created", body
    assert body["task"]["state"] == "analyzing" and body["task"]["result"] == {"echo": "sw1"}, body
    assert at - finished_at < 1.0  # the wake-up, not a re-read
    store.close()


def test_a_run_resubmitted_answers_the_existing_task_and_a_batch_is_refused(typed: Stack) -> None:
    store = StateStore(typed.settings.redis)
    assert typed.http.post("/tasks", json=typed.task(id="sw3")).status_code == 201
    run_and_finish(store, "j1", "sw3")
    # An id already finished: answered at once (200, exists) with its result
    start = time.monotonic()
    reply = typed.http.post("/tasks/run", json=typed.task(id="sw3"), params={"wait_s": 20})
    assert reply.status_code == 200 and reply.json()["status"] == "exists", reply.json()
    assert reply.json()["task"]["result"] == {"echo": "sw3"} and time.monotonic() - start < 5
    # A batch: 422 (one task is run), nothing created
    reply = typed.http.post("/tasks/run", json={"tasks": [typed.task(id="sw4")]}, params={"wait_s": 5})
    assert reply.status_code == 422, reply.json()
    assert typed.http.get("/tasks/sw4").status_code == 404
    # No id: the server makes one, and the wait ends after wait_s with the task as it is
    reply = typed.http.post("/tasks/run", json={k: v for k, v in typed.task(id="x").items() if k != "id"},
                            params={"wait_s": 0.3})
    body = reply.json()
    assert reply.status_code == 201 and body["task"]["id"] == body["id"] and body["task"]["state"] == "pending"
    store.close()


def test_client_run_returns_the_result_or_raises(typed: Stack) -> None:
    store = StateStore(typed.settings.redis)

    def finish_when_created(task_id: str, outcome: str, error: str = "") -> None:
        wait_until(lambda: store.task("j1", task_id), timeout=10, message=f"{task_id} is created")
        run_and_finish(store, "j1", task_id, outcome, error)

    with Client(typed.url) as client, ThreadPoolExecutor(max_workers=2) as pool:
        worker = pool.submit(finish_when_created, "r1", "ok")
        assert client.run(typed.task(id="r1"), timeout=20) == {"echo": "r1"}
        worker.result()
        worker = pool.submit(finish_when_created, "r2", "failed", "boom")
        with pytest.raises(TaskFailed, match="boom"):
            client.run(typed.task(id="r2"), timeout=20)
        worker.result()
        with pytest.raises(TaskTimeout, match="still pending"):
            client.run(typed.task(id="r3"), timeout=0.5)
    store.close()


def test_a_finish_sends_a_waiter_the_task_as_a_read_would_find_it(typed: Stack) -> None:
    """finish.lua publishes the task as recorded to a waiter subscribed on its server, so the API
    answers without reading it back; on a cluster a waiter on another node than the task is sent
    'analyzing', and reads it."""
    store = StateStore(typed.settings.redis)
    assert typed.http.post("/tasks", json=typed.task(id="sent", payload={"n": "é"})).status_code == 201
    messages: list[str] = []
    unwatch = store.finishes.watch("sent", messages.append)
    try:
        run_and_finish(store, "j1", "sent")
        wait_until(lambda: messages, timeout=5.0)
        read = Queries(store, Archive(typed.settings.mysql)).task("sent", "j1")  # before any analysis
    finally:
        unwatch()
    sent = Queries.recorded(messages[0])
    if sent is None:  # the waiter's connection is on another node than the task's slot
        assert messages == ["analyzing"] and isinstance(store.redis, RedisCluster)
        return
    assert sent == read and sent["state"] == "analyzing" and sent["result"] == {"echo": "sent"}
    assert sent["payload"] == {"n": "é"} and [e["status"] for e in sent["executions"]] == ["ok"]
