"""Routes for operators: the live pods, liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from taskherd.api import models as m
from taskherd.api.deps import Pod, PodDep
from taskherd.api.probes import metrics_text, readiness

router = APIRouter(tags=["ops"])


@router.get("/nodes")
def get_nodes(pod: PodDep) -> list[dict[str, Any]]:
    """Live pods, as registered in Redis (oldest first): a JSON array of node objects, `pid` and
    `slots` integers and `started` a Unix time."""
    return [m.node_view(node) for node in pod.ctx.store.members.nodes()]


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    """Liveness: the process answers HTTP. Touches no backing service."""
    return {"ok": True}


@router.get("/readyz")
def readyz(pod: PodDep) -> JSONResponse:
    """Readiness: Redis, MySQL, nsqd and the Manager actor all answer; 503 names what does not. `auth`
    says whether this API wants tokens ("on") or is open to anyone who reaches it ("off")."""
    status, body = readiness(_probes(pod), auth="on" if pod.ctx.settings.auth.on else "off")
    return JSONResponse(body, status_code=status)


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    """Prometheus metrics of this process (default registry)."""
    body, kind = metrics_text()
    return Response(body, media_type=kind)


def _probes(pod: Pod) -> dict[str, Callable[[], Any]]:
    ctx = pod.ctx
    return {"redis": ctx.store.ping,
            "mysql": lambda: pod.queries.archive.job("__readyz__"),
            "nsqd": lambda: ctx.publisher.backlog(ctx.settings.nsq.tasks_topic) is not None,
            "manager": lambda: pod.manager().is_alive()}
