"""The one error body of the API, and the handlers that turn every failure into it.

    {"errors": [{"field": "tasks.3.payload", "message": "...", "service": null}]}

`field` is the dotted path of the bad input (null when no input is to blame), and `service` names the
backing service (redis, mysql, nsqd, manager) when a 503 is its fault. Extra top-level keys may add
context (a failed teardown lists its `leftovers`, a 409 the conflicting `id`). FastAPI's own errors
(validation, bad JSON, unknown routes) and unexpected exceptions answer in the same shape, never with
a traceback.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from taskherd.api.models import SHAPE_TAGS
from taskherd.errors import HerdFull, InvalidInput, QueueError, StoreError
from taskherd.specs import InvalidSpec, NotAllowed, NotRunnable

log = logging.getLogger("taskherd.api")

RETRY_AFTER_S = 1
"""What a 429 (the herd is full) asks a producer to wait, in whole seconds as Retry-After has them;
clients add jitter, so producers refused together do not come back together."""


class ApiError(Exception):
    """An answer other than success: status, one error item, and optional extra top-level keys."""

    def __init__(self, status: int, field: str | None, message: str, service: str | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.extra = status, extra
        self.items = [error_item(field, message, service)]


class BodyTooLarge(HTTPException):
    """Raised while a body streams in; an HTTPException so FastAPI's body reader lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


def error_item(field: str | None, message: str, service: str | None = None) -> dict[str, Any]:
    return {"field": field, "message": message, "service": service}


def error_response(status: int, items: list[dict[str, Any]], **extra: Any) -> JSONResponse:
    return JSONResponse({"errors": items, **extra}, status_code=status)


def task_field(field: str, batch: bool) -> str:
    """Intake's `tasks[3].type` as a dotted path (`tasks.3.type`), relative to a single task's body."""
    dotted = re.sub(r"\[(\d+)\]", r".\1", field)
    return dotted if batch else dotted.removeprefix("tasks.0.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, lambda _r, e: error_response(e.status, e.items, **e.extra))
    app.add_exception_handler(RequestValidationError, lambda r, e: _validation_response(r, e.errors()))
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(InvalidInput, lambda _r, e: error_response(422, [error_item(
        task_field(e.field, True), e.problem)]))
    app.add_exception_handler(InvalidSpec, lambda _r, e: error_response(422, [_spec_item(p) for p in e.problems]))
    app.add_exception_handler(NotRunnable, lambda _r, e: error_response(409, [_spec_item(p) for p in e.problems]))
    app.add_exception_handler(NotAllowed, lambda _r, e: error_response(403, [_spec_item(p) for p in e.problems]))
    app.add_exception_handler(StoreError, lambda _r, e: _unavailable(
        "mysql" if str(e).startswith("mysql") else "redis", e))
    app.add_exception_handler(QueueError, lambda _r, e: _unavailable("nsqd", e))
    app.add_exception_handler(HerdFull, lambda _r, e: _full(e))
    app.add_exception_handler(Exception, _internal_error)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    no_route = exc.status_code in (404, 405) and exc.detail in ("Not Found", "Method Not Allowed")
    message = f"no route for {request.method} {request.url.path}" if no_route else str(exc.detail)
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        message = "not valid JSON: the body could not be decoded (is it UTF-8 text?)"
    return error_response(exc.status_code, [error_item("body" if exc.status_code in (400, 413) else None, message)])


def _full(exc: Exception) -> JSONResponse:
    """429 with Retry-After (also in the body, `retry_after_s`, for clients that read only bodies)."""
    response = error_response(429, [error_item(None, str(exc))], retry_after_s=RETRY_AFTER_S)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _unavailable(service: str, exc: Exception) -> JSONResponse:
    log.warning("%s unavailable: %s", service, exc)
    return error_response(503, [error_item(None, f"{service} unavailable: {exc}", service)])


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, [error_item(None, f"internal error ({type(exc).__name__}); see the manager's log")])


def _spec_item(problem: str) -> dict[str, Any]:
    field, sep, message = problem.partition(": ")
    return error_item(field, message) if sep and " " not in field else error_item("body", problem)


def _validation_response(request: Request, errors: list[dict[str, Any]]) -> JSONResponse:
    for e in errors:
        if e["type"] == "json_invalid":
            where = f" at character {e['loc'][1]}" if len(e["loc"]) > 1 else ""
            return error_response(400, [error_item("body", f"not valid JSON: {e['ctx']['error']}{where}")])
        if isinstance(e.get("input"), bytes) and e["loc"][0] == "body":  # FastAPI parses JSON bodies only
            kind = request.headers.get("content-type", "none")
            return error_response(415, [error_item("body", f"expected a JSON body with Content-Type: "
                                                           f"application/json, got Content-Type: {kind}")])
    return error_response(422, [error_item(_field_path(e["loc"]), _message(e)) for e in errors])


def _field_path(loc: tuple[Any, ...]) -> str:
    """pydantic's ('body', 'batch', 'tasks', 3, 'payload') as 'tasks.3.payload'."""
    parts = list(loc)
    where = parts.pop(0) if parts and parts[0] in ("body", "query", "path", "header", "cookie") else "body"
    if parts and parts[0] in SHAPE_TAGS:
        parts.pop(0)
    return ".".join(str(p) for p in parts) or where


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "required" if len(err["loc"]) > 1 else "a JSON body is required"
    given = repr(err.get("input"))
    return f"{err['msg']}, got {given if len(given) <= 80 else given[:77] + '...'}"
