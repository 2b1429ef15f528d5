"""What keeps the API exactly its OpenAPI document, beyond what the models and routes declare.

- 405 answers carry `Allow` (RFC 9110), listing the methods the OpenAPI declares at the path: the
  API's error handler dropped FastAPI's header, and FastAPI's lists the first route that matched,
  which for `/tasks/a/cancel` is `GET /tasks/{task_id:path}` (the task `a/cancel`), not the cancel.
- A path is routed as the OpenAPI reads it, segment by segment (`SegmentRouting`).
- The served schema states the pod's own limits: `TaskBatch.tasks` has `maxItems` = `[api].max_batch`.

The rest of the contract is in `models.py` (patterns, lengths, the one-object-per-kind spec schema),
the routes (path and query constraints, the 409/429 answers) and `auth.py` (401/403 when auth is on).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from taskherd.api.auth import api_routes
from taskherd.api.errors import error_item, error_response


class SegmentRouting:
    """ASGI middleware: a request is routed as the OpenAPI reads its path, segment by segment, before
    a `{task_id:path}` route may take more than one segment. `GET /tasks/a/retry` is then a 405 (the
    retry is a POST), not a look-up of the task `a/retry` (whose id a client sends as `a%2Fretry`)."""

    def __init__(self, app: Any, fastapi: FastAPI) -> None:
        self.app, self.fastapi = app, fastapi
        self.table: list[tuple[str, re.Pattern[str]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            if not self.table:
                self.table = [(method, _segments(path)) for method, path, _, _ in api_routes(self.fastapi)]
            raw = _raw_path(scope)
            methods = {method for method, regex in self.table if regex.match(raw)}
            if methods and scope["method"] not in methods:
                return await _not_allowed(scope["method"], scope["path"], methods)(scope, receive, send)
        await self.app(scope, receive, send)


def _segments(route_path: str) -> re.Pattern[str]:
    return compile_path(route_path.replace(":path}", "}"))[0]


def _raw_path(scope: Mapping[str, Any]) -> str:
    raw: bytes = scope.get("raw_path") or b""
    return raw.decode("latin-1").partition("?")[0] or scope["path"]


def _not_allowed(method: str, path: str, allow: set[str]) -> JSONResponse:
    shown = ", ".join(sorted(allow))
    response = error_response(405, [error_item(None, f"no route for {method} {path}; allowed: {shown}")])
    response.headers["Allow"] = shown
    return response


def allowed_methods(app: FastAPI, raw_path: str, path: str) -> list[str]:
    """The methods `app` serves at a path, as its OpenAPI has them: matched segment by segment on the
    path as sent (`/tasks/a/cancel` is the cancel of task `a`; the id `a/b` is sent as `a%2Fb`), else,
    for a path that only a `{name:path}` parameter matches (`/tasks/a/b`), the routes that match it."""
    routes = [(method, route_path) for method, route_path, _, _ in api_routes(app)]
    by_segment = {m for m, p in routes if _segments(p).match(raw_path)}
    return sorted(by_segment or {m for m, p in routes if compile_path(p)[0].match(path)})


def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    allow = set(allowed_methods(request.app, _raw_path(request.scope), request.url.path))
    if not allow:  # a route outside the API's (the docs): the framework's own answer
        allow = {m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()}
    return _not_allowed(request.method, request.url.path, allow)


def install(app: FastAPI, max_batch: int) -> None:
    """Routing by segment, the 405 handler, and the pod's limits in its schema (call after the routes
    are included, and before the auth middleware, so a request without a token is a 401 first)."""
    app.add_middleware(SegmentRouting, fastapi=app)
    app.add_exception_handler(405, _method_not_allowed)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema["components"]["schemas"]["TaskBatch"]["properties"]["tasks"]["maxItems"] = max_batch
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
