"""Authentication, scopes and allowlists at the API, against a Manager and an Api actor on real services.

With `[auth] tokens` every request but the probes and the API's description needs a bearer token (401
without one or with an unknown one), and the scope of its route (403); neither changes anything in
Redis or MySQL. `[security]` refuses a registration its lists do not admit (403 naming the list).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pykka
import pytest
from fastapi import FastAPI

from taskherd.actors.context import PodContext
from taskherd.actors.http_server import HttpServer
from taskherd.actors.manager import Manager
from taskherd.api.app import build_app
from taskherd.api.auth import api_routes
from taskherd.cli import main
from taskherd.client import Client, ClientError
from taskherd.config import Settings, from_dict
from taskherd.intake import Intake
from taskherd.nsq.publisher import Publisher
from taskherd.store.archive import Archive
from taskherd.store.state_store import StateStore
from tests.helpers import Services, mysql_connect, redis_client, wait_until

SECRETS = {"read": "tok-read-5f1c2a", "submit": "tok-submit-9b7e41", "admin": "tok-admin-c03d88",
           "all": "tok-all-7aa310"}
UNKNOWN = "tok-nobody-e8e8e8"
ECHO = {"kind": "python", "target": "tests.unit.fixtures.runner_funcs:echo"}
OPEN = {"/healthz", "/readyz", "/metrics", "/ui", "/ui/static/{name}"}
"""Routes open to all: the probes, and the dashboard's page and assets (no data in them)."""
SUBMIT = {("POST", "/tasks"), ("POST", "/tasks/{task_id:path}/cancel"), ("POST", "/tasks/{task_id:path}/retry"),
          ("POST", "/jobs/{job}/cancel"), ("POST", "/jobs/{job}/retry")}
"""The writes the issue gives the submit scope (written out here again, apart from taskherd.api.auth)."""


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def auth_on(settings: Settings, **security: list[str]) -> Settings:
    data = settings.model_dump()
    data["auth"] = {"tokens": [{"name": name, "sha256": sha(secret),
                                "scopes": ["read", "submit", "admin"] if name == "all" else [name]}
                               for name, secret in SECRETS.items()]}
    data["security"] = {"python_allow": ["tests.unit.fixtures"], **security}
    return from_dict(data)


@dataclass
class Stack:
    settings: Settings
    url: str
    app: FastAPI

    def http(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)


@pytest.fixture
def make_stack(clean: Services) -> Iterator[Any]:
    started: list[Any] = []

    def make(settings: Settings) -> Stack:
        store, queue, archive = StateStore(settings.redis), Publisher(settings.nsq), Archive(settings.mysql)
        archive.ensure_schema()
        ctx = PodContext(settings, "test-node", store, queue, archive)
        intake = Intake(settings, store, archive, queue)
        manager = Manager.start(intake, supervisor=None, slot="manager")
        apps: list[FastAPI] = []

        def app() -> FastAPI:
            apps.append(build_app(ctx, intake, lambda: manager))
            return apps[-1]

        api = HttpServer.start(app, settings.api.host, settings.api.port, supervisor=None, slot="api")
        started.extend([api, manager, queue, archive])
        url = f"http://{settings.api.host}:{settings.api.port}"
        wait_until(lambda: httpx.get(url + "/healthz").status_code == 200, timeout=15, ignore=(httpx.TransportError,))
        return Stack(settings, url, apps[-1])

    yield make
    for thing in started:
        thing.stop() if isinstance(thing, pykka.ActorRef) else thing.close()


@pytest.fixture
def stack(make_stack: Any, clean: Services) -> Stack:
    """Auth on; a registered executor `echo`, a pending task `t-1` and a failed task in job `j1`."""
    s = make_stack(auth_on(clean.settings))
    with s.http(SECRETS["all"]) as http:
        assert http.put("/executors/echo", json=ECHO).status_code == 201
        assert http.post("/tasks", json={"id": "t-1", "type": "echo", "job": "j1", "payload": {}}).status_code == 201
    return s


def snapshot(settings: Settings) -> tuple[dict[bytes, Any], dict[str, list[Any]]]:
    """Every Redis key with its value, and every MySQL row: what a refused request must leave alone."""
    r = redis_client(settings)
    try:
        read = {b"string": r.get, b"hash": r.hgetall, b"set": lambda k: sorted(r.smembers(k)),
                b"zset": lambda k: r.zrange(k, 0, -1, withscores=True), b"list": lambda k: r.lrange(k, 0, -1)}
        keys = {k: read[r.type(k)](k) for k in r.keys("*")}
    finally:
        r.close()
    conn = mysql_connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            tables = [row[0] for row in cur.fetchall()]
            rows = {}
            for table in tables:
                cur.execute(f"SELECT * FROM `{table}`")
                rows[table] = sorted(map(repr, cur.fetchall()))
    finally:
        conn.close()
    return keys, rows


def routes(app: FastAPI) -> list[tuple[str, str, str]]:
    """(method, route path, a concrete URL hitting it) for every route of the app, as it is now."""
    out = []
    for method, path, _, _ in api_routes(app):
        url = re.sub(r"\{task_id(:path)?\}", "t-1", path).replace("{job}", "j1").replace("{task_type}", "echo")
        url = url.replace("{name}", "s1")
        assert "{" not in url, f"a path parameter this test does not fill: {path}"
        out.append((method, path, url))
    return out


def expected_scope(method: str, path: str) -> str:
    return "read" if method == "GET" else "submit" if (method, path) in SUBMIT else "admin"


BODIES = {("POST", "/tasks"): {"id": "t-new", "type": "echo", "job": "j1", "payload": {}},
          ("PUT", "/executors/{task_type}"): {**ECHO, "description": "changed"},
          ("PUT", "/analyzers/{task_type}"): ECHO}
"""Bodies that would change something, were the request let through."""


def call(http: httpx.Client, method: str, path: str, url: str) -> httpx.Response:
    params = {"replace": "true"} if method == "PUT" else {"state": "failed"} if url in ("/tasks", "/jobs/j1/tasks") else {}
    return http.request(method, url, json=BODIES.get((method, path)), params=params)


def test_every_route_refuses_a_missing_unknown_or_unscoped_token_and_changes_nothing(stack: Stack) -> None:
    # Given every route of the app (walked, so a route added later is covered), Redis and MySQL as they are
    table = routes(stack.app)
    assert len(table) >= 18, table
    before = snapshot(stack.settings)
    refused = 0
    # When each is called without a token, with an unknown one, and with each token lacking its scope
    for method, path, url in table:
        if path in OPEN:
            continue
        need = expected_scope(method, path)
        for token in (None, UNKNOWN, "Basic-not-bearer"):
            with stack.http(token) as http:
                if token == "Basic-not-bearer":
                    http.headers["Authorization"] = "Basic dXNlcjpwYXNz"
                answer = call(http, method, path, url)
            # Then 401 with WWW-Authenticate: Bearer, in the API's one error shape
            assert answer.status_code == 401, (method, url, token, answer.text)
            assert answer.headers["www-authenticate"].startswith("Bearer"), answer.headers
            assert answer.json()["errors"][0]["field"] == "Authorization"
            refused += 1
        for scope in ("read", "submit", "admin"):
            if scope == need:
                continue
            with stack.http(SECRETS[scope]) as http:
                answer = call(http, method, path, url)
            assert answer.status_code == 403, (method, url, scope, answer.text)
            assert f"lacks the '{need}' scope" in answer.json()["errors"][0]["message"]
            assert f'scope="{need}"' in answer.headers["www-authenticate"]
            refused += 1
    # And none of those refusals changed a key or a row
    assert snapshot(stack.settings) == before, "a refused request changed Redis or MySQL"
    assert refused >= 60
    # While the token holding the route's scope gets past auth on every route (and the probes need none)
    for method, path, url in table:
        token = None if path in OPEN else SECRETS[expected_scope(method, path)]
        with stack.http(token) as http:
            answer = call(http, method, path, url)
        assert answer.status_code not in (401, 403), (method, url, answer.status_code, answer.text)


def test_tokens_never_appear_in_logs_errors_or_metrics(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen = []
    for token in (*SECRETS.values(), UNKNOWN):
        with stack.http(token) as http:
            seen += [http.put("/executors/other", json=ECHO).text, http.get("/jobs/nope").text,
                     http.post("/tasks", json={"type": "nope", "job": "j1", "payload": {}}).text]
    with stack.http(None) as http:
        seen.append(http.get("/metrics").text)
    text = "\n".join(seen) + caplog.text
    assert not [s for s in (*SECRETS.values(), UNKNOWN) if s in text]
    assert "lacks the 'admin' scope" in text  # the refusals were there to be read


def test_openapi_declares_the_bearer_scheme_and_401_403_and_docs_stay_open(stack: Stack) -> None:
    with stack.http(None) as http:
        assert http.get("/docs").status_code == 200
        schema = http.get("/openapi.json").json()
        ready = http.get("/readyz").json()
    assert ready["auth"] == "on"
    assert schema["components"]["securitySchemes"]["bearer"] == {**schema["components"]["securitySchemes"]["bearer"],
                                                                 "type": "http", "scheme": "bearer"}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if path in OPEN:
                assert "security" not in op and "401" not in op["responses"], (method, path)
                continue
            assert set(op["responses"]) >= {"401", "403"}, (method, path)
            route = path.replace("{task_id}", "{task_id:path}")
            assert op["security"] == [{"bearer": [expected_scope(method.upper(), route)]}], (method, path)


def test_with_no_tokens_the_api_is_open_and_readyz_says_so(make_stack: Any, clean: Services) -> None:
    s = make_stack(clean.settings)
    with s.http(None) as http:
        assert http.get("/readyz").json()["auth"] == "off"
        assert http.put("/executors/echo", json=ECHO).status_code == 201
        assert "securitySchemes" not in http.get("/openapi.json").json().get("components", {})


# --- allowlists at registration ---------------------------------------------------------------------
def test_an_exe_registration_is_refused_without_an_allowlist_and_changes_nothing(stack: Stack) -> None:
    # Given auth on and no [security].exe_allow
    before = snapshot(stack.settings)
    with stack.http(SECRETS["admin"]) as http:
        # When an admin registers an exe executor (even with check=false)
        answer = http.put("/executors/shell", json={"kind": "exe", "target": ["/bin/sh", "-c", "id"]},
                          params={"check": "false"})
    # Then 403 naming the field and the (empty) list, and nothing is stored
    assert answer.status_code == 403, answer.text
    item = answer.json()["errors"][0]
    assert item["field"] == "target" and "[security].exe_allow is empty while auth is on" in item["message"]
    assert snapshot(stack.settings) == before


def test_registrations_outside_the_allowlists_are_refused_naming_the_list(make_stack: Any, clean: Services) -> None:
    s = make_stack(auth_on(clean.settings, exe_allow=[sys.executable], http_allow=["https://hooks.example/"]))
    with s.http(SECRETS["admin"]) as http:
        ok = http.put("/executors/py", json={"kind": "exe", "target": [sys.executable, "-V"]})
        shell = http.put("/executors/sh", json={"kind": "exe", "target": ["/bin/sh", "-c", "id"]})
        hook = http.put("/executors/h", json={"kind": "http", "target": "https://hooks.example/a"}, params={"check": "false"})
        sneaky = http.put("/executors/h2", json={"kind": "http", "target": "https://hooks.example@evil.example/a"})
        module = http.put("/analyzers/m", json={"kind": "python", "target": "os:system"})
    assert ok.status_code == 201 and hook.status_code == 201, (ok.text, hook.text)
    assert shell.status_code == 403
    assert shell.json()["errors"][0] == {"field": "target", "service": None, "message":
                                         f"'/bin/sh' is not admitted by [security].exe_allow = ['{sys.executable}']"}
    assert sneaky.status_code == 403 and "'https://evil.example/a' is not admitted by [security].http_allow" \
        in sneaky.json()["errors"][0]["message"]
    assert module.status_code == 403 and "module 'os' is not admitted by [security].python_allow" \
        in module.json()["errors"][0]["message"]


# --- client and CLI ---------------------------------------------------------------------------------
def test_the_client_sends_its_token_given_or_from_the_environment(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKHERD_TOKEN", raising=False)
    with Client(stack.url) as anonymous, pytest.raises(ClientError) as refused:
        anonymous.task("t-1")
    assert refused.value.status == 401 and SECRETS["read"] not in str(refused.value)
    with Client(stack.url, token=SECRETS["read"]) as reader:
        assert reader.task("t-1")["id"] == "t-1"
        with pytest.raises(ClientError) as unscoped:
            reader.cancel("t-1")
        assert unscoped.value.status == 403
    monkeypatch.setenv("TASKHERD_TOKEN", SECRETS["submit"])
    with Client(stack.url) as submitter:
        assert submitter.cancel("t-1")["cancelled"] is True


def test_the_cli_takes_token_as_option_or_environment(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TASKHERD_TOKEN", raising=False)
    assert main(["--api", stack.url, "task", "show", "t-1"]) == 1
    err = capsys.readouterr().err
    assert "401" in err and "--token" in err and "TASKHERD_TOKEN" in err
    assert main(["--api", stack.url, "--token", SECRETS["read"], "task", "show", "t-1"]) == 0
    assert '"t-1"' in capsys.readouterr().out
    assert main(["task", "show", "t-1", "--api", stack.url, "--token", SECRETS["read"]]) == 0  # after the command too
    capsys.readouterr()
    monkeypatch.setenv("TASKHERD_TOKEN", SECRETS["read"])
    assert main(["--api", stack.url, "task", "cancel", "t-1"]) == 1
    err = capsys.readouterr().err
    assert "403" in err and "lacks the 'submit' scope" in err and SECRETS["read"] not in err
    assert main(["--api", stack.url, "task", "show", "t-1"]) == 0
