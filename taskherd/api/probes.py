"""The probes every pod serves, manager or worker: liveness (`/healthz`, touches no service, so an
outage never restarts a pod), readiness (`/readyz`, the services this pod needs answer; 503 names
those that do not) and Prometheus metrics (`/metrics`). Manager pods serve them with the API
(`routes/ops.py`); worker pods from `probe_app` on `[worker] http_port`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from taskherd import __version__
from taskherd.api.errors import error_item, error_response

Checks = Mapping[str, Callable[[], Any]]
"""Service name -> a call that raises, or returns False, when the service does not answer."""


def readiness(checks: Checks, **extra: Any) -> JSONResponse:
    """200 or 503 with each check's answer; `extra` keys are added to either (the API's `auth`)."""
    results = {name: _probe(fn) for name, fn in checks.items()}
    down = [error_item(None, f"{name}: {why}", name) for name, why in results.items() if why != "ok"]
    if down:
        return error_response(503, down, checks=results, **extra)
    return JSONResponse({"ok": True, "checks": results, **extra})


def metrics_response() -> Response:
    """Prometheus metrics of this process (default registry)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def probe_app(checks: Checks) -> FastAPI:
    """A worker pod's HTTP face: the three probes, nothing else."""
    app = FastAPI(title="taskherd worker", version=__version__, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        """Liveness: the process answers HTTP. Touches no backing service."""
        return {"ok": True}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: Redis and nsqd answer and the lease keeper runs; 503 names what does not."""
        return readiness(checks)

    @app.get("/metrics", response_class=Response)
    def metrics() -> Response:
        return metrics_response()

    return app


def _probe(fn: Callable[[], Any]) -> str:
    try:
        return "ok" if fn() is not False else "not answering"
    except Exception as exc:  # noqa: BLE001 - a probe reports any failure as "not ready"
        return f"{type(exc).__name__}: {exc}"
