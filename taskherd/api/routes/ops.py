"""Routes for operators: the live pods, liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from taskherd.api.deps import Pod, PodDep
from taskherd.api.errors import error_item, error_response

router = APIRouter(tags=["ops"])


@router.get("/nodes")
def get_nodes(pod: PodDep) -> list[dict[str, Any]]:
    """Live pods, as registered in Redis (oldest first): a JSON array of node objects."""
    return pod.ctx.store.members.nodes()


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    """Liveness: the process answers HTTP. Touches no backing service."""
    return {"ok": True}


@router.get("/readyz")
def readyz(pod: PodDep) -> JSONResponse:
    """Readiness: Redis, MySQL, nsqd and the Manager actor all answer; 503 names what does not."""
    checks = {name: _probe(fn) for name, fn in _probes(pod).items()}
    down = [error_item(None, f"{name}: {why}", name) for name, why in checks.items() if why != "ok"]
    if down:
        return error_response(503, down, checks=checks)
    return JSONResponse({"ok": True, "checks": checks})


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    """Prometheus metrics of this process (default registry)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _probes(pod: Pod) -> dict[str, Callable[[], Any]]:
    ctx = pod.ctx
    return {"redis": ctx.store.ping,
            "mysql": lambda: pod.queries.archive.job("__readyz__"),
            "nsqd": lambda: ctx.publisher.backlog(ctx.settings.nsq.tasks_topic) is not None,
            "manager": lambda: pod.manager().is_alive()}


def _probe(fn: Callable[[], Any]) -> str:
    try:
        return "ok" if fn() is not False else "not answering"
    except Exception as exc:  # noqa: BLE001 - a probe reports any failure as "not ready"
        return f"{type(exc).__name__}: {exc}"
