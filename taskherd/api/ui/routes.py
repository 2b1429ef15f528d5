"""The dashboard's routes: its page and assets (open to anyone, they hold no data; see `auth.py`),
and three reads that need a `read` token like every GET: `whoami` (so the page disables the buttons a
token may not press), `pods` (registrations with heartbeat age and busy slots, the active watcher) and
`series` (the charts). None is part of the API's OpenAPI: they serve this page and may change with it.
Every other read and every button goes through the API itself, with the same token and scopes."""

from __future__ import annotations

import json
import time
from functools import cache
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from taskherd.api import models as m
from taskherd.api.deps import PodDep
from taskherd.api.errors import ApiError
from taskherd.api.ui.charts import steps
from taskherd.store import keys
from taskherd.store.series import RETENTION_S

router = APIRouter(include_in_schema=False)

ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           # every byte comes from this manager: a page that tried to load anything else would be refused
           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                      "style-src-attr 'unsafe-inline'; frame-ancestors 'none'"}
POINTS = 60
"""Points per chart, whatever its window (a step is window / POINTS seconds)."""


@cache
def _asset(name: str) -> bytes:
    return resources.files("taskherd.api.ui").joinpath("static", name).read_bytes()


@router.get("/ui")
def page() -> Response:
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/ui/static/{name}")
def asset(name: str) -> Response:
    if name not in ASSETS:
        raise ApiError(404, "name", f"no dashboard asset named {name!r}")
    return Response(_asset(name), media_type=ASSETS[name], headers=HEADERS)


@router.get("/ui/whoami")
def whoami(request: Request, pod: PodDep) -> dict[str, Any]:
    """The token's name and scopes; with auth off, every scope (anyone who reaches the API may write)."""
    token = request.scope.get("state", {}).get("token")
    if not pod.ctx.settings.auth.on or token is None:
        return {"auth": "off", "token": None, "scopes": ["read", "submit", "admin"]}
    return {"auth": "on", "token": token.name, "scopes": sorted(token.scopes)}


@router.get("/ui/pods")
def pods(pod: PodDep) -> dict[str, Any]:
    """Every live pod with `heartbeat_age_s` and `busy`/`idle` slots (as of its last heartbeat), and the
    node holding the TimeoutWatcher's lease."""
    now_ms = int(time.time() * 1000)
    nodes = []
    for node in pod.ctx.store.members.nodes():
        view = m.node_view(node)
        beat = int(node.get("beat_ms") or 0)
        slots, busy = int(view.get("slots") or 0), int(node.get("busy") or 0)
        view |= {"heartbeat_age_s": round((now_ms - beat) / 1000, 1) if beat else None,
                 "busy": min(busy, slots), "idle": max(slots - busy, 0)}
        nodes.append(view)
    return {"now_ms": now_ms, "watcher": pod.ctx.store.members.holder(keys.WATCHER_LEASE), "nodes": nodes}


@router.get("/ui/series")
def series(pod: PodDep, window_s: Annotated[int, Query(ge=60, le=RETENTION_S)] = 300) -> dict[str, Any]:
    """The last `window_s` seconds in POINTS steps: executions started and finished, tasks archived by
    final state (per second), and run-time percentiles (s)."""
    now_s = int(time.time()) - 1  # the current second is still filling
    step_s = max(1, window_s // POINTS)
    seconds = pod.ctx.store.series.window(now_s, window_s)
    return {"now_s": now_s, "window_s": window_s, "step_s": step_s, "retention_s": RETENTION_S,
            "points": steps(seconds, step_s)}


@router.get("/ui/recent")
def recent(pod: PodDep, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
    """The latest done jobs still in Redis (`[manager].retain_done_s`), newest first, with their status."""
    statuses = [pod.queries.job(name) for name in pod.ctx.store.recently_done(limit)]
    return {"jobs": [s for s in statuses if s is not None]}


@router.get("/ui/dead")
def dead(pod: PodDep, state: m.FinalState = m.FinalState.FAILED, job: Annotated[str | None, Query(pattern=m.NAME)] = None,
         limit: Annotated[int, Query(ge=1, le=200)] = 50, cursor: str = "") -> dict[str, Any]:
    """A page of dead letters (archived failed or cancelled tasks) with their job, type and last error:
    one MySQL read for the ids, one for the rows, whatever the page's size."""
    if state not in ("failed", "cancelled"):
        raise ApiError(422, "state", "dead letters are failed or cancelled tasks")
    ids = pod.queries.archived_ids(job, state, cursor, limit)
    rows = {r["id"]: r for r in pod.queries.archive.dead(ids)}
    tasks = [{"id": i, "job": rows[i]["job"], "type": rows[i]["type"], "error": _last_error(rows[i]["executions"])}
             for i in ids if i in rows]
    return {"state": state, "tasks": tasks, "next_cursor": ids[-1] if len(ids) == limit else None}


def _last_error(executions: Any) -> str | None:
    try:
        runs = json.loads(executions) if isinstance(executions, str | bytes) else executions
        return next((e.get("error") for e in reversed(runs or []) if e.get("error")), None)
    except (ValueError, AttributeError, TypeError):
        return None
