"""Who may call the API: bearer tokens with scopes (`[auth]`), checked before a request reaches a route.

A token is known by the sha256 of its secret (the config never holds the secret itself); a request's
`Authorization: Bearer <token>` is hashed and compared with every known digest in constant time
(`hmac.compare_digest`, all of them, whichever matches). Missing, malformed or unknown: 401 with
`WWW-Authenticate: Bearer`; known but without the route's scope: 403. Either is answered by the
middleware, before the body is read or any route runs, so neither changes anything.

Scopes by route (`required_scope`): every GET is `read`; submitting, cancelling and retrying tasks and
jobs (`SUBMIT_ROUTES`) is `submit`; every other write is `admin` (registering executors and analyzers,
teardown, and any route added later until it is listed here: secure by default). Open to all: the
probes (`/healthz`, `/readyz`, `/metrics`), the API's description (`/docs`, `/redoc`,
`/openapi.json`) and the dashboard's page and assets (`/ui`, `/ui/static/...`), which hold no data and
which a browser must load without a header.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import compile_path

from taskherd.api.errors import error_item, error_response
from taskherd.config.settings import TokenSettings

log = logging.getLogger("taskherd.api.auth")

PROBES = ("/healthz", "/readyz", "/metrics")
OPEN_PATHS = frozenset((*PROBES, "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/ui"))
"""Paths served to anyone: the probes (kubelet and Prometheus carry no token), the API's description
and the dashboard's page (no data: its script asks for a token and sends it with every read)."""
OPEN_PREFIXES = ("/ui/static/",)
"""Path prefixes served to anyone: the dashboard's script and style sheet (no data either)."""
READ_METHODS = frozenset(("GET", "HEAD"))
SUBMIT_ROUTES = frozenset((("POST", "/tasks"), ("POST", "/tasks/{task_id:path}/cancel"),
                           ("POST", "/tasks/{task_id:path}/retry"), ("POST", "/jobs/{job}/cancel"),
                           ("POST", "/jobs/{job}/retry")))
"""(method, route path) of the writes the `submit` scope allows; other writes need `admin`."""
SCHEME = "bearer"
"""The security scheme's name in the OpenAPI document."""


def required_scope(method: str, route_path: str) -> str:
    """The scope a route needs: `read` for GET, `submit` for SUBMIT_ROUTES, else `admin`."""
    if method in READ_METHODS:
        return "read"
    return "submit" if (method, route_path) in SUBMIT_ROUTES else "admin"


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    """The token's name from the config (safe to log: the secret is never known here)."""
    scopes: frozenset[str]


class Tokens:
    """The known tokens, by the sha256 of their secret."""

    def __init__(self, tokens: Iterable[TokenSettings]) -> None:
        self._known = [(bytes.fromhex(t.sha256), Token(t.name, frozenset(t.scopes))) for t in tokens]

    @property
    def on(self) -> bool:
        return bool(self._known)

    def names(self) -> list[str]:
        return [t.name for _, t in self._known]

    def find(self, secret: str) -> Token | None:
        """The token whose digest is the secret's; every digest is compared, in constant time."""
        digest = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, token in self._known:
            if hmac.compare_digest(known, digest):
                found = token
        return found


class Auth:
    """ASGI middleware: 401 or 403 before the app sees the request (see the module's docstring)."""

    def __init__(self, app: Any, tokens: Tokens, scope_for: Callable[[dict[str, Any]], str | None]) -> None:
        self.app, self.tokens, self.scope_for = app, tokens, scope_for

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    def _refusal(self, scope: dict[str, Any]) -> Any:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        kind, _, secret = header.partition(" ")
        if not header:
            return _unauthorized("a bearer token is required: send Authorization: Bearer <token>", "")
        if kind.lower() != "bearer" or not secret.strip():
            return _unauthorized("expected Authorization: Bearer <token>", ', error="invalid_request"')
        token = self.tokens.find(secret.strip())
        if token is None:
            return _unauthorized("the bearer token is not known", ', error="invalid_token"')
        need = self.scope_for(scope)
        if need is not None and need not in token.scopes:
            log.info("403 %s %s: token %r lacks scope %s", scope["method"], scope["path"], token.name, need)
            response = error_response(403, [error_item(None, f"token {token.name!r} lacks the {need!r} scope "
                                                             f"(it has: {', '.join(sorted(token.scopes))})")])
            response.headers["WWW-Authenticate"] = f'Bearer realm="taskherd", error="insufficient_scope", scope="{need}"'
            return response
        scope.setdefault("state", {})["token"] = token  # what the dashboard asks of /ui/whoami
        return None


def _unauthorized(message: str, error: str) -> Any:
    response = error_response(401, [error_item("Authorization", message)])
    response.headers["WWW-Authenticate"] = f'Bearer realm="taskherd"{error}'
    return response


def api_routes(app: FastAPI) -> list[tuple[str, str, str, bool]]:
    """(method, path, path as in OpenAPI, in the schema) of every API route, included routers' too."""
    try:  # FastAPI ≥ 0.165 keeps an included router as one entry of app.routes
        from fastapi.routing import iter_route_contexts
    except ImportError:
        found = [(r, r.path, r.path_format) for r in app.routes if isinstance(r, APIRoute)]
    else:
        found = [(c.original_route, c.path or "", c.path_format or "") for c in iter_route_contexts(app.routes)
                 if isinstance(c.original_route, APIRoute)]
    return [(method, path, path_format, route.include_in_schema)
            for route, path, path_format in found for method in sorted(route.methods or ())]


def route_scope(app: FastAPI) -> Callable[[dict[str, Any]], str | None]:
    """The scope a request needs, from the route it matches (worked out from the app's routes at its
    first request); None when none matches: any known token then gets the router's 404 or 405."""
    table: list[tuple[str, re.Pattern[str], str]] = []

    def scope_for(scope: dict[str, Any]) -> str | None:
        if not table:
            table.extend((method, compile_path(path)[0], required_scope(method, path))
                         for method, path, _, _ in api_routes(app))
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        return next((need for m, regex, need in table if m == method and regex.match(scope["path"])), None)
    return scope_for


def install(app: FastAPI, tokens: Tokens) -> None:
    """Require tokens on `app` (when any is configured), and declare it in its OpenAPI document."""
    if not tokens.on:
        return
    app.add_middleware(Auth, tokens=tokens, scope_for=route_scope(app))
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _declare(app, build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _declare(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    """The bearer scheme, and on every operation but the open ones its scope and its 401 and 403."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http", "scheme": "bearer",
        "description": "A token of [auth]; its scopes: read (every GET), submit (submit, cancel, retry), admin."}
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for method, path, path_format, in_schema in api_routes(app):
        if not in_schema or path in OPEN_PATHS:
            continue
        operation = schema["paths"][path_format][method.lower()]
        operation["security"] = [{SCHEME: [required_scope(method, path)]}]
        operation["responses"]["401"] = {"description": "No token, or one not known (WWW-Authenticate: Bearer)",
                                         "content": body}
        operation["responses"]["403"] = {"description": "The token lacks the scope this operation needs",
                                         "content": body}
    return schema
