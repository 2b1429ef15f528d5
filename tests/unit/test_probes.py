"""A worker pod's probe app (a bare ASGI app): the three routes, HEAD without a body, and an unknown
path or method answered in the API's error shape."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from taskherd.api.probes import probe_app, readiness


def _call(app: Any, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": method, "path": path, "headers": []}, receive, send))
    start, body = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, body["body"]


def test_the_probes_answer_and_readiness_names_what_is_down() -> None:
    def redis_down() -> None:
        raise ConnectionError("refused")

    up = probe_app({"redis": lambda: True})
    assert _call(up, "GET", "/healthz")[::2] == (200, b'{"ok":true}')
    status, headers, body = _call(up, "GET", "/readyz")
    assert (status, json.loads(body)) == (200, {"ok": True, "checks": {"redis": "ok"}})
    assert headers["content-length"] == str(len(body))
    status, headers, body = _call(up, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain") and b"# TYPE" in body

    down = probe_app({"redis": redis_down, "nsqd": lambda: False})
    status, _, body = _call(down, "GET", "/readyz")
    assert status == 503
    assert json.loads(body)["errors"] == [
        {"field": None, "message": "redis: ConnectionError: refused", "service": "redis"},
        {"field": None, "message": "nsqd: not answering", "service": "nsqd"}]


def test_head_has_no_body_and_other_paths_or_methods_are_refused_by_name() -> None:
    app = probe_app({})
    status, headers, body = _call(app, "HEAD", "/healthz")
    assert (status, body, headers["content-length"]) == (200, b"", "11")
    status, _, body = _call(app, "GET", "/tasks")
    assert status == 404 and json.loads(body)["errors"][0]["message"] == "no route for GET /tasks"
    status, _, body = _call(app, "POST", "/healthz")
    assert status == 405 and json.loads(body)["errors"][0]["message"] == "no route for POST /healthz"


def test_readiness_adds_extra_keys_to_either_answer() -> None:
    assert readiness({}, auth="off") == (200, {"ok": True, "checks": {}, "auth": "off"})
    status, body = readiness({"mysql": lambda: False}, auth="on")
    assert status == 503 and body["auth"] == "on" and body["checks"] == {"mysql": "not answering"}
