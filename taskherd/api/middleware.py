"""ASGI middleware of the API: a body size limit enforced before a body is parsed, and request
metrics by route template."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Histogram

from taskherd.api.errors import BodyTooLarge, error_item, error_response

REQUESTS = Counter("taskherd_api_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("taskherd_api_request_seconds", "HTTP request latency", ["method", "route"])


class BodyLimit:
    """413 for a body larger than makes sense, before it is read (Content-Length) or while it streams."""

    def __init__(self, app: Any, limit_for: Callable[[str], int]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            response = error_response(413, [error_item("body", f"request body of {int(length)} bytes exceeds "
                                                               f"the limit of {limit}")])
            return await response(scope, receive, send)
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


class Metrics:
    """Counts and times requests by method, route template (never the raw path) and status."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status[0])).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - start)
