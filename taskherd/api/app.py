"""The manager's HTTP JSON API: `build_app(ctx, intake, manager)` returns the FastAPI app the Api actor
serves.

Submissions go to the Intake; other writes (registrations, cancels, teardown) are asked of the Manager
actor; reads go straight to `taskherd.jobs.Queries`. Endpoints are plain `def`s: FastAPI runs them in
its thread pool, where blocking on Redis or on an actor's answer is harmless.

Every error answers with one body shape, `{"errors": [{"field", "message", "service"}]}` (see
`taskherd.api.errors`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any

import pykka
from fastapi import Body, Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from taskherd import __version__
from taskherd.actors.context import PodContext
from taskherd.actors.manager import RegisterSpec, Teardown, normalize_spec
from taskherd.actors.registry import live_nodes
from taskherd.api import models as m
from taskherd.api.errors import (ApiError, BodyTooLarge, error_item, error_response, install_error_handlers,
                                 task_field)
from taskherd.intake import Intake, InvalidTask, Submission
from taskherd.jobs import Queries
from taskherd.store import keys

ASK_TIMEOUT_S = 30.0
MAX_WAIT_S = 60.0
"""Longest long-poll on a job (`wait_s`); clients loop for longer waits."""
RECHECK_S = 0.5
"""A long-poll re-reads its job this often: another manager replica may have finished it."""
SPEC_BODY_LIMIT = 1 << 20
"""Bytes accepted for any body but a task submission (an executor spec is a few hundred bytes)."""
TASK_OVERHEAD_BYTES = 2048
"""Room per task for its fields around the payload, when sizing the largest sensible batch body."""

REQUESTS = Counter("taskherd_api_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("taskherd_api_request_seconds", "HTTP request latency", ["method", "route"])


class Pod:
    """What the endpoints share: the pod context, the Manager lookup and the read side (Queries)."""

    def __init__(self, ctx: PodContext, intake: Intake, manager: Callable[[], pykka.ActorRef]) -> None:
        if ctx.archive is None:
            raise ValueError("the API needs a PodContext with an archive (the manager role)")
        self.ctx, self.intake, self.manager = ctx, intake, manager
        self.queries = Queries(ctx.store, ctx.archive)

    def ask(self, message: Any) -> Any:
        """The Manager's answer; 503 while it is restarting or too busy to answer in time."""
        try:
            return self.manager().ask(message, timeout=ASK_TIMEOUT_S)
        except pykka.ActorDeadError:
            raise ApiError(503, None, "the manager is not running (restarting?); try again", "manager") from None
        except pykka.Timeout:
            raise ApiError(503, None, f"the manager did not answer within {ASK_TIMEOUT_S:g} s", "manager") from None


def _pod(request: Request) -> Pod:
    return request.app.state.pod


PodDep = Annotated[Pod, Depends(_pod)]


def build_app(ctx: PodContext, intake: Intake, manager: Callable[[], pykka.ActorRef]) -> FastAPI:
    """The API over one pod's context; submissions go straight to the (thread-safe) Intake, from the
    request's own thread; `manager` returns the current Manager (it changes on restart)."""
    errors = {code: {"model": m.ErrorBody} for code in (400, 404, 409, 413, 415, 422, 500, 503)}
    app = FastAPI(title="taskherd", version=__version__, responses=errors,
                  description="Register executors and analyzers, submit tasks, follow jobs.")
    app.state.pod = Pod(ctx, intake, manager)
    from taskherd.api.control import control_routes  # it builds on this module's Pod dependency

    for routes in (_spec_routes, control_routes, _task_routes, _job_routes, _ops_routes):
        routes(app)
    install_error_handlers(app)
    api = ctx.settings.api
    task_limit = api.max_batch * (api.max_payload_bytes + TASK_OVERHEAD_BYTES)
    app.add_middleware(BodyLimit, limit_for=lambda path: task_limit if path == "/tasks" else SPEC_BODY_LIMIT)
    app.add_middleware(Metrics)
    return app


# --- executors and analyzers ------------------------------------------------------------------------
def _spec_routes(app: FastAPI) -> None:
    @app.put("/executors/{task_type}", response_model=m.Registered, status_code=201, tags=["specs"])
    def put_executor(task_type: str, spec: m.ExecutorIn, pod: PodDep, response: Response,
                     replace: bool = False) -> m.Registered:
        """Register how to run tasks of a type: 201 created, 200 unchanged or replaced, 409 conflict."""
        return _register(pod, response, "executor", task_type, spec, replace)

    @app.put("/analyzers/{task_type}", response_model=m.Registered, status_code=201, tags=["specs"])
    def put_analyzer(task_type: str, spec: m.AnalyzerIn, pod: PodDep, response: Response,
                     replace: bool = False) -> m.Registered:
        """Register how to analyze results of a type: same answers as executors."""
        return _register(pod, response, "analyzer", task_type, spec, replace)

    for kind in ("executor", "analyzer"):
        _spec_reads(app, kind)


def _register(pod: Pod, response: Response, kind: str, task_type: str, spec: m.SpecIn,
              replace: bool) -> m.Registered:
    body = spec.model_dump(exclude_none=True)
    status = pod.ask(RegisterSpec(kind, task_type, body, replace))
    if status == "conflict":
        raise ApiError(409, "replace", f"an {kind} with a different spec is already registered for "
                                       f"{task_type!r}; pass replace=true to replace it")
    response.status_code = 201 if status == "created" else 200
    return m.Registered(task_type=task_type, status=status, spec=normalize_spec(kind, task_type, body))


def _spec_reads(app: FastAPI, kind: str) -> None:
    @app.get(f"/{kind}s", tags=["specs"], summary=f"List {kind}s by task type")
    def list_specs(pod: PodDep) -> dict[str, Any]:
        prefix = keys.SPEC_TYPES[kind]("")
        types = sorted(k[len(prefix):] for k in pod.ctx.store.redis.scan_iter(match=prefix + "*", count=1000))
        return {f"{kind}s": pod.ctx.store.specs(kind, types)}

    @app.get(f"/{kind}s/{{task_type}}", tags=["specs"], summary=f"Show the {kind} of a task type")
    def get_spec(task_type: str, pod: PodDep) -> dict[str, Any]:
        spec = pod.ctx.store.spec(kind, task_type)
        if spec is None:
            raise ApiError(404, "task_type", f"no {kind} registered for task type {task_type!r}")
        return spec


# --- tasks ------------------------------------------------------------------------------------------
def _task_routes(app: FastAPI) -> None:
    @app.post("/tasks", response_model=m.Accepted | m.BatchAccepted, status_code=201, tags=["tasks"])
    def post_tasks(body: Annotated[m.SubmitBody, Body()], pod: PodDep, response: Response) -> Any:
        """Submit one task or `{"tasks": [...]}`. 201 if any was created, else 200; one conflicting
        task is a 409, while a batch reports conflicts per task. A batch is accepted all or nothing."""
        batch = isinstance(body, m.TaskBatch)
        tasks = body.tasks if isinstance(body, m.TaskBatch) else [body]
        _check_batch(tasks, pod.ctx.settings.api.max_batch)
        subs = [Submission(type=t.type, job=t.job, payload=t.payload, id=t.id, timeout_s=t.timeout_s,
                           max_attempts=t.max_attempts) for t in tasks]
        try:
            accepted = pod.intake.submit(subs)
        except InvalidTask as exc:
            raise ApiError(422, task_field(exc.field, batch), exc.problem) from None
        statuses = [a.status for a in accepted]
        response.status_code = 201 if "created" in statuses else 200
        if not batch:
            return _single(accepted[0])
        return m.BatchAccepted(tasks=[m.Accepted(id=a.id, status=a.status) for a in accepted],
                               **{s: statuses.count(s) for s in ("created", "exists", "conflict")})

    @app.get("/tasks/{task_id:path}", tags=["tasks"])
    def get_task(task_id: str, pod: PodDep) -> dict[str, Any]:
        """A task, live or archived: state, attempts, executions, result or error. Unknown → 404."""
        task = pod.queries.task(task_id)
        if task is None:
            raise ApiError(404, "id", f"no task with id {task_id!r}")
        return task


def _check_batch(tasks: list[m.TaskIn], limit: int) -> None:
    """At most `limit` tasks, and no id twice (one answer per id could not say which copy won)."""
    if len(tasks) > limit:
        raise ApiError(422, "tasks", f"at most {limit} tasks per request, got {len(tasks)}")
    first: dict[str, int] = {}
    for i, t in enumerate(tasks):
        if t.id is not None and first.setdefault(t.id, i) != i:
            raise ApiError(422, f"tasks.{i}.id", f"id {t.id!r} appears twice in the batch (first at tasks.{first[t.id]})")


def _single(accepted: Any) -> m.Accepted:
    if accepted.status == "conflict":
        raise ApiError(409, "id", f"task {accepted.id!r} already exists with a different payload or job",
                       id=accepted.id)
    return m.Accepted(id=accepted.id, status=accepted.status)


# --- jobs -------------------------------------------------------------------------------------------
def _job_routes(app: FastAPI) -> None:
    @app.get("/jobs/{job}", tags=["jobs"])
    async def get_job(job: str, pod: PodDep,
                      wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0.0) -> dict[str, Any]:
        """Counts by state, open and total, done flag, created and finished times (ms). With `wait_s`,
        answers as soon as the job is done, or after `wait_s` seconds with its progress then (a
        long-poll: `job wait` and the client's `wait` use it, so "done" arrives within milliseconds)."""
        deadline = time.monotonic() + wait_s
        while True:
            woken = pod.ctx.job_events.register(job)
            status = await run_in_threadpool(_job, pod, job)
            remaining = deadline - time.monotonic()
            if status["done"] or remaining <= 0:
                woken.cancel()
                return status
            try:
                done = await asyncio.wait_for(woken, min(remaining, RECHECK_S))
            except asyncio.TimeoutError:
                continue
            if done is not None:
                return done  # as the analyzer summarized it; None: summarized elsewhere, read it

    @app.get("/jobs/{job}/tasks", response_model=m.TaskPage, tags=["jobs"])
    def get_job_tasks(job: str, pod: PodDep, state: m.State,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100, cursor: str = "") -> m.TaskPage:
        """One page of the job's task ids in one state; pass `next_cursor` back for the next page."""
        _job(pod, job)
        ids, next_cursor = pod.queries.job_tasks(job, state, limit, cursor)
        return m.TaskPage(job=job, state=state, ids=ids, next_cursor=next_cursor)

    @app.post("/jobs/{job}/teardown", response_model=m.Teardown, tags=["jobs"])
    def post_teardown(job: str, pod: PodDep) -> m.Teardown:
        """Delete the job's runtime state, then prove Redis holds none of it (500 lists leftovers)."""
        leftovers = pod.ask(Teardown(job))
        if leftovers:
            raise ApiError(500, "job", f"{len(leftovers)} key(s) of job {job!r} remain in Redis after teardown",
                           "redis", job=job, leftovers=leftovers)
        return m.Teardown(job=job, leftovers=[])


def _job(pod: Pod, job: str) -> dict[str, Any]:
    status = pod.queries.job(job)
    if status is None:
        raise ApiError(404, "job", f"no job named {job!r}")
    return status


# --- operations -------------------------------------------------------------------------------------
def _ops_routes(app: FastAPI) -> None:
    @app.get("/nodes", tags=["ops"])
    def get_nodes(pod: PodDep) -> list[dict[str, Any]]:
        """Live pods, as registered in Redis (oldest first): a JSON array of node objects."""
        return live_nodes(pod.ctx.store.redis)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, bool]:
        """Liveness: the process answers HTTP. Touches no backing service."""
        return {"ok": True}

    @app.get("/readyz", tags=["ops"])
    def readyz(pod: PodDep) -> JSONResponse:
        """Readiness: Redis, MySQL, nsqd and the Manager actor all answer; 503 names what does not."""
        checks = {name: _probe(fn) for name, fn in _probes(pod).items()}
        down = [error_item(None, f"{name}: {why}", name) for name, why in checks.items() if why != "ok"]
        if down:
            return error_response(503, down, checks=checks)
        return JSONResponse({"ok": True, "checks": checks})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics of this process (default registry)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _probes(pod: Pod) -> dict[str, Callable[[], Any]]:
    ctx = pod.ctx
    return {"redis": ctx.store.redis.ping,
            "mysql": lambda: ctx.archive.job("__readyz__"),
            "nsqd": lambda: ctx.queue.backlog(ctx.settings.nsq.tasks_topic) is not None,
            "manager": lambda: pod.manager().is_alive()}


def _probe(fn: Callable[[], Any]) -> str:
    try:
        return "ok" if fn() is not False else "not answering"
    except Exception as exc:  # noqa: BLE001 - a probe reports any failure as "not ready"
        return f"{type(exc).__name__}: {exc}"


# --- middleware -------------------------------------------------------------------------------------
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
