"""The probes every pod serves, manager or worker: liveness (`/healthz`, touches no service, so an
outage never restarts a pod), readiness (`/readyz`, the services this pod needs answer; 503 names
those that do not) and Prometheus metrics (`/metrics`). Manager pods serve them with the API
(`routes/ops.py`, from `readiness` here); worker pods from `probe_app` on `[worker] http_port`.

`probe_app` is a bare ASGI app, not FastAPI: three fixed routes need no router, validation or OpenAPI,
and a worker pod that does not import FastAPI starts 110-130 ms of CPU sooner (a fifth of its imports;
four worker pods starting on two cores take their first task that much closer together).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Checks = Mapping[str, Callable[[], Any]]
"""Service name -> a call that raises, or returns False, when the service does not answer."""

Asgi = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
                Awaitable[None]]


def readiness(checks: Checks, **extra: Any) -> tuple[int, dict[str, Any]]:
    """(200 or 503, the body): each check's answer; `extra` keys are added to either (the API's `auth`).
    A 503's body has the API's error shape, an item per service down."""
    results = {name: _probe(fn) for name, fn in checks.items()}
    down = [{"field": None, "message": f"{name}: {why}", "service": name}
            for name, why in results.items() if why != "ok"]
    if down:
        return 503, {"errors": down, "checks": results, **extra}
    return 200, {"ok": True, "checks": results, **extra}


def metrics_text() -> tuple[bytes, str]:
    """Prometheus metrics of this process (default registry), and their content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


def probe_app(checks: Checks) -> Asgi:
    """A worker pod's HTTP face: the three probes, nothing else (GET or HEAD; any other path 404,
    any other method 405, each in the API's error shape)."""

    async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                  send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path not in ("/healthz", "/readyz", "/metrics"):
            status, body, kind = _error(404, f"no route for {method} {path}")
        elif method not in ("GET", "HEAD"):
            status, body, kind = _error(405, f"no route for {method} {path}")
        elif path == "/healthz":
            status, body, kind = 200, b'{"ok":true}', "application/json"
        elif path == "/readyz":  # the checks block (a Redis ping, nsqd's /stats): off the event loop
            status, answer = await asyncio.to_thread(readiness, checks)
            body, kind = json.dumps(answer).encode(), "application/json"
        else:
            status, (body, kind) = 200, metrics_text()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return app


def _error(status: int, message: str) -> tuple[int, bytes, str]:
    return status, json.dumps({"errors": [{"field": None, "message": message, "service": None}]}).encode(), \
        "application/json"


def _probe(fn: Callable[[], Any]) -> str:
    try:
        return "ok" if fn() is not False else "not answering"
    except Exception as exc:  # noqa: BLE001 - a probe reports any failure as "not ready"
        return f"{type(exc).__name__}: {exc}"
