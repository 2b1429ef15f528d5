"""The manager's HTTP JSON API: `build_app(ctx, intake, manager)` returns the FastAPI app the pod's
HttpServer actor serves.

Submissions go to the Intake; other writes (registrations, cancels, teardown) are asked of the Manager
actor; reads go straight to `taskherd.jobs.Queries`. Endpoints are plain `def`s: FastAPI runs them in
its thread pool, where blocking on Redis or on an actor's answer is harmless.

Routes live one module per resource in `routes/`; what they share (the pod, lookups that 404) in
`deps.py`; the one error shape in `errors.py`; bodies in `models.py`; size limit and metrics in
`middleware.py`; who may call what (bearer tokens, scopes) in `auth.py`; what keeps the API exactly
its OpenAPI (405 with Allow, the pod's limits in the schema) in `contract.py`. Every error answers
`{"errors": [{"field", "message", "service"}]}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pykka
from fastapi import FastAPI

from taskherd import __version__
from taskherd.actors.context import PodContext
from taskherd.api import auth, contract
from taskherd.api import models as m
from taskherd.api.deps import Pod
from taskherd.api.errors import install_error_handlers
from taskherd.api.middleware import BodyLimit, Metrics
from taskherd.api.routes import jobs, ops, schedules, specs, system, tasks
from taskherd.api.ui import routes as ui
from taskherd.config.loader import tokens
from taskherd.intake import Intake

SPEC_BODY_LIMIT = 1 << 20
"""Bytes accepted for any body but a task submission (an executor spec is a few hundred bytes)."""
TASK_OVERHEAD_BYTES = 2048
"""Room per task for its fields around the payload, when sizing the largest sensible batch body."""


def build_app(ctx: PodContext, intake: Intake, manager: Callable[[], pykka.ActorRef[Any]]) -> FastAPI:
    """The API over one pod's context; submissions go straight to the (thread-safe) Intake, from the
    request's own thread; `manager` returns the current Manager (it changes on restart)."""
    errors: dict[int | str, dict[str, Any]] = {code: {"model": m.ErrorBody}
                                               for code in (400, 404, 409, 413, 415, 422, 500, 503)}
    app = FastAPI(title="taskherd", version=__version__, responses=errors,
                  description="Register executors and analyzers, submit tasks, follow jobs.")
    app.state.pod = Pod(ctx, intake, manager)
    for routes in (specs, tasks, jobs, ops, system, schedules, ui):
        app.include_router(routes.router)
    install_error_handlers(app)
    contract.install(app, ctx.settings.api.max_batch)
    api = ctx.settings.api
    task_limit = api.max_batch * (api.max_payload_bytes + TASK_OVERHEAD_BYTES)
    app.add_middleware(BodyLimit, limit_for=lambda path: task_limit if path == "/tasks" else SPEC_BODY_LIMIT)
    auth.install(app, auth.Tokens(tokens(ctx.settings.auth)))  # outside BodyLimit: a 401 reads no body
    app.add_middleware(Metrics)
    return app
