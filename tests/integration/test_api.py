"""The HTTP API, the Python client and the CLI, against a Manager and an Api actor on real services.

No worker runs here: tasks stay pending, which is what these tests look at (intake, idempotency,
validation, queries, teardown). Every bad input must answer 4xx naming the field, and change
nothing in Redis or NSQ.
"""

from __future__ import annotations

import json
import socket
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pykka
import pytest
import redis

from taskherd.actors.context import PodContext
from taskherd.actors.http_server import HttpServer
from taskherd.actors.manager import Manager
from taskherd.api.app import build_app
from taskherd.cli import main
from taskherd.client import ApiUnreachable, Client, ClientError, WaitTimeout
from taskherd.config import Settings
from taskherd.config.toml_out import dumps
from taskherd.intake import Intake
from taskherd.nsq.publisher import Publisher
from taskherd.store import keys
from taskherd.store.archive import Archive
from taskherd.store.state_store import StateStore
from tests.helpers import Services, free_port, nsqd_url, redis_client, wait_until

ECHO = {"kind": "python", "target": "tests.unit.fixtures.runner_funcs:echo"}
MAX_BATCH, MAX_PAYLOAD = 5, 1024


@dataclass
class Stack:
    settings: Settings
    url: str
    http: httpx.Client
    redis: redis.Redis
    manager: pykka.ActorRef
    api: pykka.ActorRef

    def task(self, **fields: object) -> dict[str, object]:
        return {"type": "echo", "job": "j1", "payload": {"n": 1}, **fields}

    def depth(self) -> int | None:
        """Messages waiting on the task topic (None: no such topic; nsqd lists no topics as null)."""
        topic = self.settings.nsq.tasks_topic
        stats = httpx.get(nsqd_url(self.settings, "/stats"), params={"format": "json", "topic": topic}).json()
        return next((int(t["depth"]) for t in stats.get("topics") or [] if t["topic_name"] == topic), None)

    def frozen(self) -> tuple[int, int | None]:
        """What a rejected request must leave alone: Redis's key count and the task topic's depth."""
        return self.redis.dbsize(), self.depth()


def small_limits(settings: Settings) -> Settings:
    api = settings.api.model_copy(update={"max_batch": MAX_BATCH, "max_payload_bytes": MAX_PAYLOAD})
    return settings.model_copy(update={"api": api})


@pytest.fixture
def stack(clean: Services) -> Iterator[Stack]:
    settings = small_limits(clean.settings)
    store, queue, archive = StateStore(settings.redis), Publisher(settings.nsq), Archive(settings.mysql)
    archive.ensure_schema()
    ctx = PodContext(settings, "test-node", store, queue, archive)
    intake = Intake(settings, store, archive, queue)
    manager = Manager.start(intake, supervisor=None, slot="manager")
    api = HttpServer.start(lambda: build_app(ctx, intake, lambda: manager), settings.api.host, settings.api.port,
                           supervisor=None, slot="api")
    url = f"http://{settings.api.host}:{settings.api.port}"
    http = httpx.Client(base_url=url, timeout=30)
    wait_until(lambda: http.get("/healthz").status_code == 200, timeout=15, ignore=(httpx.TransportError,),
               message=f"API answering at {url}")
    client = redis_client(settings)
    try:
        yield Stack(settings, url, http, client, manager, api)
    finally:
        http.close()
        client.close()
        api.stop()
        manager.stop()
        queue.close()
        archive.close()


@pytest.fixture
def typed(stack: Stack) -> Stack:
    """The stack with an executor registered for task type `echo`."""
    assert stack.http.put("/executors/echo", json=ECHO).status_code == 201
    return stack


def error(response: httpx.Response) -> dict[str, object]:
    """The first error item of an error body, after checking the body has the one shape."""
    body = response.json()
    assert set(body) >= {"errors"} and body["errors"], body
    assert all(set(e) == {"field", "message", "service"} for e in body["errors"]), body
    return body["errors"][0]


# --- executors and analyzers ------------------------------------------------------------------------
def test_registering_an_executor_answers_created_unchanged_conflict_then_replaced(stack: Stack) -> None:
    http = stack.http
    first = http.put("/executors/echo", json=ECHO)
    assert first.status_code == 201 and first.json()["status"] == "created"
    assert first.json()["spec"] == {"id": "echo", **ECHO}
    again = http.put("/executors/echo", json=ECHO)
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    other = {**ECHO, "target": "tests.unit.fixtures.runner_funcs:whoami"}
    conflict = http.put("/executors/echo", json=other)
    assert conflict.status_code == 409
    assert error(conflict)["field"] == "replace" and "replace=true" in error(conflict)["message"]
    replaced = http.put("/executors/echo", params={"replace": "true"}, json=other)
    assert replaced.status_code == 200 and replaced.json()["status"] == "replaced"
    assert http.get("/executors/echo").json()["target"] == other["target"]
    assert list(http.get("/executors").json()["executors"]) == ["echo"]


def test_registering_an_analyzer_works_like_an_executor(stack: Stack) -> None:
    spec = {"kind": "http", "target": "http://127.0.0.1:9/analyze", "headers": {"x-k": "v"}}
    assert stack.http.put("/analyzers/echo", json=spec).status_code == 201
    assert stack.http.put("/analyzers/echo", json=spec).json()["status"] == "unchanged"
    assert stack.http.get("/analyzers/echo").json()["headers"] == {"x-k": "v"}


@pytest.mark.parametrize("path, spec, field", [
    ("/executors/echo", {"kind": "java", "target": "x"}, "kind"),
    ("/executors/echo", {"kind": "python", "target": "not a module path"}, "target"),
    ("/executors/echo", {"kind": "exe", "target": []}, "target"),
    ("/executors/echo", {"kind": "http", "target": "ftp://host/x"}, "target"),
    ("/executors/echo", {**ECHO, "bogus": 1}, "bogus"),
    ("/executors/echo", {**ECHO, "max_attempts": 0}, "max_attempts"),
    ("/executors/echo", {"target": "a:b"}, "kind"),
    ("/analyzers/echo", {**ECHO, "max_attempts": 2}, "max_attempts"),
    ("/executors/bad%20type", ECHO, "task_type"),
])
def test_a_bad_spec_is_a_4xx_naming_the_field_and_registers_nothing(stack: Stack, path: str, spec: dict,
                                                                    field: str) -> None:
    before = stack.frozen()
    response = stack.http.put(path, json=spec)
    assert response.status_code == 422
    assert error(response)["field"] == field
    assert stack.frozen() == before


# --- submit -----------------------------------------------------------------------------------------
def test_submitting_the_same_task_twice_answers_created_then_exists(typed: Stack) -> None:
    first = typed.http.post("/tasks", json=typed.task(id="t1"))
    assert first.status_code == 201 and first.json() == {"id": "t1", "status": "created"}
    again = typed.http.post("/tasks", json=typed.task(id="t1"))
    assert again.status_code == 200 and again.json() == {"id": "t1", "status": "exists"}
    assert typed.depth() == 1


def test_the_same_id_with_another_payload_is_a_409(typed: Stack) -> None:
    typed.http.post("/tasks", json=typed.task(id="t1"))
    response = typed.http.post("/tasks", json=typed.task(id="t1", payload={"n": 2}))
    assert response.status_code == 409
    assert error(response)["field"] == "id" and response.json()["id"] == "t1"


def test_a_task_without_an_id_gets_one_from_the_server(typed: Stack) -> None:
    response = typed.http.post("/tasks", json=typed.task())
    assert response.status_code == 201
    assert typed.http.get(f"/tasks/{response.json()['id']}").json()["state"] == "pending"


def test_a_batch_answers_per_task_conflicts_included(typed: Stack) -> None:
    typed.http.post("/tasks", json=typed.task(id="a"))
    typed.http.post("/tasks", json=typed.task(id="c"))
    batch = [typed.task(id="a"), typed.task(id="b"), typed.task(id="b2", payload={"x": 1}),
             typed.task(id="c", payload={"n": 9})]
    response = typed.http.post("/tasks", json={"tasks": batch})
    assert response.status_code == 201
    body = response.json()
    assert [(t["id"], t["status"]) for t in body["tasks"]] == [
        ("a", "exists"), ("b", "created"), ("b2", "created"), ("c", "conflict")]
    assert (body["created"], body["exists"], body["conflict"]) == (2, 1, 1)
    repeat = typed.http.post("/tasks", json={"tasks": batch[:3]})
    assert repeat.status_code == 200 and {t["status"] for t in repeat.json()["tasks"]} == {"exists"}


@pytest.mark.parametrize("body, status, field", [
    ({"type": "nope", "job": "j1", "payload": {}}, 409, "type"),  # well formed; no executor registered
    ({"tasks": [{"type": "echo", "job": "j1", "id": "ok1"}, {"type": "nope", "job": "j1"}]}, 409, "tasks.1.type"),
    ({"type": "echo", "job": "bad job!", "payload": {}}, 422, "job"),
    ({"type": "echo", "job": "j1", "payload": [1, 2]}, 422, "payload"),
    ({"type": "echo", "job": "j1", "payload": {"s": "x" * 2 * MAX_PAYLOAD}}, 422, "payload"),
    ({"tasks": [{"type": "echo", "job": "j1", "payload": {"s": "x" * 2 * MAX_PAYLOAD}}]}, 422, "tasks.0.payload"),
    ({"type": "echo", "job": "j1", "bogus": 1}, 422, "bogus"),
    ({"tasks": [{"type": "echo", "job": "j1", "timeout_s": -1}]}, 422, "tasks.0.timeout_s"),
    ({"tasks": [{"type": "echo", "job": "j1"}] * (MAX_BATCH + 1)}, 422, "tasks"),
    ({"tasks": []}, 422, "tasks"),
    ({"job": "j1"}, 422, "type"),
    ([{"type": "echo", "job": "j1"}], 422, "body"),
])
def test_a_bad_task_is_a_4xx_naming_the_field_and_enqueues_nothing(typed: Stack, body: object, status: int,
                                                                   field: str) -> None:
    typed.http.post("/tasks", json=typed.task(id="before"))  # the topic exists, with one message
    before = typed.frozen()
    response = typed.http.post("/tasks", json=body)
    assert response.status_code == status, response.text
    assert error(response)["field"] == field
    assert typed.frozen() == before


@pytest.mark.parametrize("content, status, field", [
    (b'{"type": "echo", "job": ', 400, "body"),
    (b"\xff\xfe not json", 400, "body"),
    (b"", 422, "body"),
    (b'{"type": "echo", "job": "j1", "payload": {"s": "' + b"x" * 40_000 + b'"}}', 413, "body"),
])
def test_a_body_that_is_not_json_or_too_large_is_rejected_naming_the_body(typed: Stack, content: bytes,
                                                                          status: int, field: str) -> None:
    before = typed.frozen()
    response = typed.http.post("/tasks", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert error(response)["field"] == field
    assert "Traceback" not in response.text
    assert typed.frozen() == before


@pytest.mark.parametrize("content, field", [
    (b'{"type": "echo", "job": "j1", "payload": {"x": NaN}}', "payload"),
    (b'{"tasks": [{"type": "echo", "job": "j1"}, {"type": "echo", "job": "j1", "payload": {"x": [-Infinity]}}]}',
     "tasks.1.payload"),
])
def test_a_payload_with_nan_or_infinity_is_a_422_naming_it(typed: Stack, content: bytes, field: str) -> None:
    # Python's json reads and writes them; they are not JSON, and the payload's stored text goes to the
    # executor as it is
    before = typed.frozen()
    response = typed.http.post("/tasks", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert error(response)["field"] == field and "NaN" in str(error(response)["message"])
    assert typed.frozen() == before


def test_a_body_that_is_not_sent_as_json_is_a_415(typed: Stack) -> None:
    response = typed.http.post("/tasks", content=b'{"type": "echo", "job": "j1"}',
                               headers={"content-type": "text/plain"})
    assert response.status_code == 415 and error(response)["field"] == "body"
    assert "application/json" in error(response)["message"]


def test_a_streamed_body_over_the_limit_is_a_413(typed: Stack) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"tasks": ['
        for _ in range(40):
            yield b'{"type": "echo", "job": "j1", "payload": {"s": "' + b"x" * 1000 + b'"}},'
        yield b'{"type": "echo", "job": "j1"}]}'

    response = typed.http.post("/tasks", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and error(response)["field"] == "body"


# --- reads ------------------------------------------------------------------------------------------
def test_an_unknown_task_is_404_never_pending(stack: Stack) -> None:
    response = stack.http.get("/tasks/nobody")
    assert response.status_code == 404 and error(response)["field"] == "id"


def test_a_submitted_task_reads_back_pending_with_its_payload(typed: Stack) -> None:
    task_id = "http://127.0.0.1:8000/a/b?c=d"  # ids may be URLs (the demo's are)
    with Client(typed.url) as client:
        client.submit(typed.task(id=task_id, payload={"url": task_id}))
        task = client.task(task_id)
    assert (task["id"], task["job"], task["type"], task["state"]) == (task_id, "j1", "echo", "pending")
    assert task["payload"] == {"url": task_id} and task["attempts"] == 0


def test_a_job_reads_counts_and_lists_tasks_by_state(typed: Stack) -> None:
    typed.http.post("/tasks", json={"tasks": [typed.task(id=f"t{i}") for i in range(3)]})
    job = typed.http.get("/jobs/j1").json()
    assert job["counts"]["pending"] == 3 and job["total"] == 3 and job["open"] == 3 and job["done"] is False
    with Client(typed.url) as client:
        first, cursor = client.job_tasks("j1", "pending", limit=2)
        rest, end = client.job_tasks("j1", "pending", limit=2, cursor=cursor)
        assert sorted(first + rest) == ["t0", "t1", "t2"] and end is None
        assert client.job_tasks("j1", "succeeded") == ([], None)


def test_listing_tasks_needs_a_known_state_and_job(typed: Stack) -> None:
    typed.http.post("/tasks", json=typed.task(id="t1"))
    bad_state = typed.http.get("/jobs/j1/tasks", params={"state": "sleeping"})
    assert bad_state.status_code == 422 and error(bad_state)["field"] == "state"
    bad_limit = typed.http.get("/jobs/j1/tasks", params={"state": "pending", "limit": 0})
    assert bad_limit.status_code == 422 and error(bad_limit)["field"] == "limit"
    assert typed.http.get("/jobs/nobody").status_code == 404
    assert typed.http.get("/jobs/nobody/tasks", params={"state": "pending"}).status_code == 404


def archive_cancelled(stack: Stack, job: str) -> None:
    """Cancel the job and do the analyzer's part (none runs here): its tasks archived as cancelled."""
    from tests.integration.test_job_totals import analyze

    s = stack.settings
    assert stack.http.post(f"/jobs/{job}/cancel").status_code == 200
    analyze(Intake(s, StateStore(s.redis), Archive(s.mysql), Publisher(s.nsq)), job)


def test_teardown_refuses_an_open_job_naming_what_is_open_and_deletes_nothing(typed: Stack) -> None:
    typed.http.post("/tasks", json={"tasks": [typed.task(id=f"t{i}") for i in range(3)]})
    before = typed.redis.dbsize()
    response = typed.http.post("/jobs/j1/teardown")
    assert response.status_code == 409 and error(response)["field"] == "job"
    assert "3 pending" in error(response)["message"] and "cancel=true" in error(response)["message"]
    assert typed.redis.dbsize() == before and typed.http.get("/tasks/t0").json()["state"] == "pending"


def test_teardown_leaves_no_key_of_the_job_in_redis(typed: Stack) -> None:
    typed.http.post("/tasks", json={"tasks": [typed.task(id=f"t{i}") for i in range(3)]})
    typed.http.post("/tasks", json=typed.task(id="other", job="j2"))
    archive_cancelled(typed, "j1")
    response = typed.http.post("/jobs/j1/teardown")
    assert response.status_code == 200 and response.json() == {"job": "j1", "leftovers": []}
    assert list(typed.redis.scan_iter(match=keys.job_pattern("j1"), count=1000)) == []
    assert 0 < typed.redis.pttl(keys.index("t0")) <= 10_000  # an archived id's entry only lapses (its tombstone)
    assert typed.http.get("/tasks/t0").json()["state"] == "cancelled"  # archived, still readable
    assert typed.http.get("/tasks/other").json()["state"] == "pending"


# --- operations -------------------------------------------------------------------------------------
def test_health_readiness_metrics_and_openapi_answer(stack: Stack) -> None:
    http = stack.http
    assert http.get("/healthz").json() == {"ok": True}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and set(ready.json()["checks"]) == {"redis", "mysql", "nsqd", "manager"}
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and "taskherd_api_requests_total" in metrics.text
    assert 'route="/readyz"' in metrics.text
    spec = http.get("/openapi.json").json()
    assert {"/tasks", "/executors/{task_type}", "/jobs/{job}/tasks", "/readyz"} <= set(spec["paths"])
    assert http.get("/docs").status_code == 200
    assert http.get("/nodes").json() == []
    missing = http.get("/no/such/route")
    assert missing.status_code == 404 and "no route" in error(missing)["message"]


def test_readyz_names_a_backing_service_that_is_down(stack: Stack, clean: Services) -> None:
    clean.manager.stop_one("redis")  # the `clean` fixture of the next test starts it again
    ready = stack.http.get("/readyz")
    assert ready.status_code == 503
    assert [e["service"] for e in ready.json()["errors"]] == ["redis"]
    job = stack.http.get("/jobs/j1")
    assert job.status_code == 503 and error(job)["service"] == "redis"
    assert stack.http.get("/healthz").status_code == 200


def test_a_stopped_manager_answers_503_not_a_hang(typed: Stack) -> None:
    typed.manager.stop()
    response = typed.http.put("/executors/other", json=ECHO)
    assert response.status_code == 503 and error(response)["service"] == "manager"
    assert typed.http.get("/readyz").status_code == 503
    # Submissions do not wait on the Manager: they go straight to the Intake.
    assert typed.http.post("/tasks", json=typed.task(id="t1")).status_code == 201


def test_the_http_server_actor_fails_to_start_on_a_taken_port(clean: Services) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = clean.settings.model_copy(update={"api": clean.settings.api.model_copy(update={"port": port})})
        store, queue, archive = StateStore(settings.redis), Publisher(settings.nsq), Archive(settings.mysql)
        ctx = PodContext(settings, "test-node", store, queue, archive)
        intake = Intake(settings, store, archive, queue)
        ref = HttpServer.start(lambda: build_app(ctx, intake, lambda: None), settings.api.host, settings.api.port,
                               supervisor=None, slot="api")
        wait_until(lambda: not ref.is_alive(), timeout=10, message="HttpServer actor stopped after a failed start")


# --- client and CLI ---------------------------------------------------------------------------------
def test_client_errors_carry_status_and_field(typed: Stack) -> None:
    with Client(typed.url) as client:
        client.submit(typed.task(id="t1"))
        with pytest.raises(ClientError) as raised:
            client.submit(typed.task(id="t1", payload={"other": True}))
        assert raised.value.status == 409 and raised.value.field == "id"
        with pytest.raises(WaitTimeout):
            client.wait("j1", timeout=0.3, interval=0.1)
    with Client(f"http://127.0.0.1:{free_port()}") as client, pytest.raises(ApiUnreachable) as raised:
        client.job("j1")
    assert "127.0.0.1" in str(raised.value)


def test_cli_registers_submits_and_shows_a_task(typed: Stack, capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    api = ["--api", typed.url]
    assert main(api + ["executor", "add", "tool", "--kind", "exe", "--target", "python3 -c 'print(1)'"]) == 0
    assert capsys.readouterr().out.strip() == "executor for tool: created"
    assert typed.http.get("/executors/tool").json()["target"] == ["python3", "-c", "print(1)"]
    assert main(api + ["submit", "--job", "j1", "--type", "echo", "--id", "c1", "--payload", '{"n": 1}']) == 0
    assert capsys.readouterr().out.strip() == "c1 created"
    assert main(api + ["task", "show", "c1"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "pending"
    lines = tmp_path / "tasks.jsonl"
    lines.write_text('{"id": "c1", "payload": {"n": 1}}\n\n{"id": "c2"}\n')
    assert main(api + ["submit", "--job", "j1", "--type", "echo", "--file", str(lines)]) == 0
    assert capsys.readouterr().out.split() == ["c1", "exists", "c2", "created"]
    assert main(api + ["job", "status", "j1"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 2
    assert main(api + ["job", "wait", "j1", "--timeout", "0.5"]) == 3
    assert main(api + ["job", "teardown", "j1"]) == 1
    assert "is open (2 pending)" in capsys.readouterr().err
    archive_cancelled(typed, "j1")
    assert main(api + ["job", "teardown", "j1"]) == 0
    assert "torn down" in capsys.readouterr().out


def test_cli_reports_api_errors_on_one_line_with_exit_1(typed: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    api = ["--api", typed.url]
    main(api + ["submit", "--job", "j1", "--type", "echo", "--id", "c1"])
    capsys.readouterr()
    assert main(api + ["submit", "--job", "j1", "--type", "echo", "--id", "c1", "--payload", '{"n": 2}']) == 1
    assert capsys.readouterr().err.startswith("error: 409 id: ")
    assert main(api + ["submit", "--job", "j1", "--type", "nope"]) == 1
    assert capsys.readouterr().err.startswith("error: 409 type: ")
    assert main(api + ["task", "show", "missing"]) == 1
    assert capsys.readouterr().err.startswith("error: 404 id: ")
    assert main(api + ["submit", "--job", "j1", "--type", "echo", "--payload", "{nope"]) == 2
    assert "--payload: not valid JSON" in capsys.readouterr().err
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--api", url, "job", "status", "j1"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach the taskherd API at {url}" in err and "Traceback" not in err


def test_cli_config_check_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[worker]\nslots = 8\n[api]\nport = 18081\n")
    assert main(["config", "check", str(good)]) == 0
    assert capsys.readouterr().out.strip() == "ok"


@pytest.mark.parametrize("name, content, expected", [
    ("unknown.toml", b"[worker]\nslotz = 2\n", "[worker].slotz: unknown key"),
    ("type.toml", b'[worker]\nslots = "two"\n', "[worker].slots: wrong type"),
    ("range.toml", b"[redis]\nport = 70000\n", "[redis].port: out of range"),
    ("section.toml", b"[nope]\nx = 1\n", "nope: unknown key"),
    ("syntax.toml", b"[worker\nslots = 2\n", "not valid TOML"),
    ("latin1.toml", b'[log]\nlevel = "\xe9"\n', "not UTF-8"),
    ("missing.toml", None, "no such file"),
    ("dir.toml", "dir", "is a directory"),
])
def test_cli_config_check_names_the_file_and_key_of_each_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 name: str, content: bytes | str | None,
                                                                 expected: str) -> None:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert main(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.startswith(str(path)) and expected in captured.err


def test_cli_config_show_prints_toml_that_reads_back(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show"]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["api"]["port"] == Settings().api.port and shown["nsq"]["tasks_topic"] == "taskherd.tasks"


def test_nodes_are_listed_by_the_api_and_by_the_cli_from_redis(stack: Stack, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from taskherd.actors.registry import NodeInfo, Registry

    info = NodeInfo.for_this_process("worker", 3)
    Registry.start(StateStore(stack.settings.redis).members, info, stack.settings.registry, supervisor=None,
                   slot="registry")
    wait_until(lambda: stack.http.get("/nodes").json(), timeout=10, message="node registered")
    assert [n["id"] for n in stack.http.get("/nodes").json()] == [info.id]
    config = tmp_path / "taskherd.toml"
    config.write_text(dumps(stack.settings))
    assert main(["--config", str(config), "nodes"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["ID", "ROLE", "HOST"] and row.split()[:2] == [info.id, "worker"]


@pytest.mark.parametrize("failed, code", [(0, 0), (2, 1)])
def test_cli_job_wait_polls_until_done_and_exits_by_outcome(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str],
                                                            failed: int, code: int) -> None:
    # Given a job that is done on the third poll (the API answered by a stub transport)
    polls = iter([(0, 1, False), (1, 3, False), (3, 3, True)])

    def answer(method: str, target: str, body: bytes | None) -> tuple[int, bytes]:
        assert (method, target.split("?")[0]) == ("GET", "/jobs/j1")
        done, total, finished = next(polls)
        counts = {"pending": total - done, "succeeded": done - (failed if finished else 0),
                  "failed": failed if finished else 0, "cancelled": 0}
        return 200, json.dumps({"job": "j1", "counts": counts, "total": total, "open": total - done,
                                "done": finished}).encode()

    stub = Client("http://stub", transport=answer)
    monkeypatch.setattr("taskherd.cli.jobs.client", lambda args: stub)
    monkeypatch.setattr("taskherd.client.time.sleep", lambda s: None)
    # When `job wait` follows it, Then it exits 0 when all succeeded and 1 when some failed
    assert main(["job", "wait", "j1", "--timeout", "30"]) == code
    out = capsys.readouterr()
    assert f"{3 - failed} succeeded, {failed} failed" in out.out and "3/3" in out.err
