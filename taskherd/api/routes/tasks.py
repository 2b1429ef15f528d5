"""Routes of tasks: submit (one or a batch, idempotent by id), show one, cancel, retry a dead
letter, and list archived tasks by final state (`state=failed`: the dead letters)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from taskherd.actors.manager import CancelTask, RetryTasks
from taskherd.api import models as m
from taskherd.api.deps import PodDep, task_view
from taskherd.api.errors import ApiError, task_field
from taskherd.api.routes.jobs import MAX_WAIT_S, RECHECK_S
from taskherd.errors import InvalidTask, StoreError
from taskherd.intake import Accepted, Submission, UnknownType
from taskherd.states import DEAD_STATES, RESULT_STATES, WAITING_STATES, TaskState

router = APIRouter(tags=["tasks"])

TaskId = Annotated[str, Path(min_length=1, max_length=m.MAX_ID_CHARS)]
JobName = Annotated[str | None, Query(pattern=m.NAME)]

FULL: dict[int | str, dict[str, Any]] = {429: {"model": m.ErrorBody, "headers": {"Retry-After": {
    "description": "Seconds to wait before sending the same submission again", "schema": {"type": "integer"}}},
    "description": "The herd is full: the submission would pass [manager].max_open_tasks or "
                   "max_open_tasks_per_job. Nothing of it was created; send it again after Retry-After."}}
RUN_WAIT_S = 30.0
"""`POST /tasks/run`'s wait when the request names none."""
RAN: dict[int | str, dict[str, Any]] = {
    201: {"description": "The task was created; `task` shows it with its result, or as it is if `wait_s` ran out"},
    200: {"model": m.Ran, "description": "It existed already (same id and payload), and was waited for as it is"}}
SUBMITTED: dict[int | str, dict[str, Any]] = {
    201: {"description": "At least one task was created"},
    200: {"model": m.Accepted | m.BatchAccepted, "description": "None was created: each exists already "
          "(same id and payload), or conflicts within a batch, or its job was cancelled"}}


@router.post("/tasks", response_model=m.Accepted | m.BatchAccepted, status_code=201,
             responses={**SUBMITTED, **FULL})
def post_tasks(body: Annotated[m.SubmitBody, Body()], pod: PodDep, response: Response) -> m.Accepted | m.BatchAccepted:
    """Submit one task or `{"tasks": [...]}`. 201 if any was created, else 200; one conflicting
    task, or one for a cancelled job, is a 409, while a batch reports those per task. A batch is accepted all or nothing:
    one that would pass a bound on open tasks is a 429 with Retry-After, creating nothing. A type with
    no executor registered is a 409 (the body is well formed; the server lacks the executor)."""
    return _submit(body, pod, response)


def _submit(body: m.SubmitBody, pod: PodDep, response: Response, minted: str = "") -> m.Accepted | m.BatchAccepted:
    """`POST /tasks`; `minted`: an id the route made with uuid4 (`Submission.minted`)."""
    batch = isinstance(body, m.TaskBatch)
    tasks = body.tasks if isinstance(body, m.TaskBatch) else [body]
    _check_batch(tasks, pod.ctx.settings.api.max_batch)
    subs = [Submission(type=t.type, job=t.job, payload=t.payload, id=t.id, timeout_s=t.timeout_s,
                       max_attempts=t.max_attempts, delay_s=t.delay_s, run_at=t.run_at, priority=t.priority,
                       minted=bool(minted) and t.id == minted)
            for t in tasks]
    try:
        accepted = pod.intake.submit(subs, bounded=True)
    except UnknownType as exc:
        raise ApiError(409, task_field(exc.field, batch), exc.problem) from None
    except InvalidTask as exc:
        raise ApiError(422, task_field(exc.field, batch), exc.problem) from None
    statuses = [a.status for a in accepted]
    response.status_code = 201 if "created" in statuses else 200
    if not batch:
        return _single(accepted[0], tasks[0].job)
    return m.BatchAccepted(tasks=[m.Accepted(id=a.id, status=a.status) for a in accepted],
                           **{s: statuses.count(s) for s in ("created", "exists", "conflict")})


@router.post("/tasks/run", response_model=m.Ran, status_code=201, responses={**RAN, **FULL})
async def run_task(body: Annotated[m.TaskIn, Body()], pod: PodDep, response: Response,
                   wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = RUN_WAIT_S) -> m.Ran:
    """Submit one task and wait for its result in the same request: answers the moment the result is
    recorded (as `GET /tasks/{id}?wait_s=` would), or after `wait_s` seconds, with the task as it is
    then in `task`. Refused as `POST /tasks` refuses one task (409, 429). Resubmitting an id (the same
    payload) waits for that task as it is."""
    task_id = body.id or uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    finishes = pod.ctx.store.finishes

    def submit_subscribed() -> tuple[m.Accepted | m.BatchAccepted, bool]:
        early = finishes.subscribed(task_id)
        accepted = _submit(body.model_copy(update={"id": task_id}), pod, response, "" if body.id else task_id)
        if not early:
            finishes.wait_subscribed(task_id)  # the task's state is read after this: no finish slips by
        return accepted, early

    # Redis confirms the subscription while the task is created, not before (off the answer's path)
    async with _watching(pod, task_id, confirmed=False) as woken:
        accepted, early = await run_in_threadpool(submit_subscribed)
        assert isinstance(accepted, m.Accepted)  # one task in, one answer out
        # subscribed before it was created: its finish will wake us, no read can find one before
        unfinished = early and accepted.status == "created"
        task = await _until_result(pod, task_id, deadline, woken, body.job, read=not unfinished)
    return m.Ran(id=accepted.id, status=accepted.status, task=task)


@router.get("/tasks/{task_id:path}")
async def get_task(task_id: TaskId, pod: PodDep,
                   wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0.0) -> dict[str, Any]:
    """A task, live or archived: state, attempts, executions, result or error (and, while the analysis
    is to come, `outcome`: ok, failed or cancelled). Unknown → 404. With `wait_s`, a long-poll: answers
    the moment the task's result is recorded (state `analyzing`, before the analysis and the archive)
    or it is final, or after `wait_s` seconds with the task as it is then."""
    if wait_s <= 0:
        return await run_in_threadpool(task_view, pod, task_id)
    return await _wait_result(pod, task_id, wait_s)


async def _wait_result(pod: PodDep, task_id: str, wait_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    async with _watching(pod, task_id) as woken:
        return await _until_result(pod, task_id, deadline, woken)


class _Woken(asyncio.Event):
    """Set whenever finish.lua publishes a result of the task; `message` the latest it published."""

    message = ""

    def wake(self, message: str) -> None:
        self.message = message
        self.set()


@contextlib.asynccontextmanager
async def _watching(pod: PodDep, task_id: str, confirmed: bool = True) -> AsyncIterator[_Woken]:
    """An event set whenever finish.lua publishes a result of `task_id` (`Finishes`), subscribed on
    entry (Redis has confirmed it): a finish after that is never missed. `confirmed=False`: only
    asked for on entry (no thread hop); the caller then waits with `Finishes.wait_subscribed`."""
    loop = asyncio.get_running_loop()
    woken = _Woken()

    def wake(message: str) -> None:
        loop.call_soon_threadsafe(woken.wake, message)

    finishes = pod.ctx.store.finishes
    if confirmed:
        unwatch = await run_in_threadpool(finishes.watch, task_id, wake)
    else:
        unwatch = finishes.watch(task_id, wake, confirm_s=0)  # a lock and a pipe write: no blocking
    try:
        yield woken
    finally:
        unwatch()


async def _until_result(pod: PodDep, task_id: str, deadline: float, woken: _Woken, job: str | None = None,
                        read: bool = True) -> dict[str, Any]:
    """The task once it has a result (or is final), or as it is at `deadline`: as the finish published
    it, else read after each wake-up, and every RECHECK_S besides, for the ways to a result that
    publish nothing (a cancel, a time-out the watcher ends). A read that fails while time is left
    (Redis restarting) is tried again at the next wake-up. `job`: the task's, when known (one Redis
    round trip a read, not two); `read` False: the first read is skipped (the caller knows it has no
    result yet and is watched)."""
    while True:
        if read:
            woken.clear()
            try:
                task = await run_in_threadpool(task_view, pod, task_id, job)
                job = task["job"]
            except StoreError:
                if time.monotonic() >= deadline:
                    raise
                task = None
            if task is not None and (task["state"] in RESULT_STATES or deadline <= time.monotonic()):
                return task
        read = True
        remaining = deadline - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), max(0.0, min(remaining, RECHECK_S)))
        recorded = pod.queries.recorded(woken.message) if woken.is_set() else None
        if recorded is not None:
            return recorded


@router.post("/tasks/{task_id:path}/cancel")
def cancel_task(task_id: TaskId, pod: PodDep) -> dict[str, Any]:
    """Cancel a task. Waiting: cancelled at once; running: its executor is killed within one lease
    renewal; already analyzed or finished: nothing to do (`was` says which)."""
    task_view(pod, task_id)
    was = pod.ask(CancelTask(task_id))
    return {"id": task_id, "was": was, "cancelled": was in (*WAITING_STATES, TaskState.RUNNING)}


@router.post("/tasks/{task_id:path}/retry")
def retry_task(task_id: TaskId, pod: PodDep) -> dict[str, Any]:
    """Requeue a dead letter (an archived failed or cancelled task) with fresh attempts, in a new
    retry round (its earlier executions are kept): `retried`, or `exists` if it is live again already."""
    task = task_view(pod, task_id)
    if task["state"] not in DEAD_STATES:
        raise ApiError(409, "id", f"task {task_id!r} is {task['state']}; only failed or cancelled tasks are retried")
    accepted = pod.ask(RetryTasks(task_ids=(task_id,)))
    return {"id": task_id, "status": accepted[0].status if accepted else "unchanged"}


@router.get("/tasks")
def list_tasks(pod: PodDep, state: m.FinalState,
               job: JobName = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
               cursor: str = "") -> dict[str, Any]:
    """Archived tasks in a final state, of one job or of all: `state=failed` lists the dead letters."""
    ids = pod.queries.archived_ids(job, state, cursor, limit)
    return {"state": state, "job": job, "ids": ids, "next_cursor": ids[-1] if len(ids) == limit else None}


def _check_batch(tasks: list[m.TaskIn], limit: int) -> None:
    """At most `limit` tasks (the OpenAPI's maxItems). An id given twice is no error: its later copies
    answer as a resubmission would (exists, or conflict for another payload), like an analyzer's."""
    if len(tasks) > limit:
        raise ApiError(422, "tasks", f"at most {limit} tasks per request, got {len(tasks)}")


def _single(accepted: Accepted, job: str) -> m.Accepted:
    """A single task's answer; what was not accepted is a 409 (a batch says it per task instead)."""
    if accepted.status == "conflict":
        raise ApiError(409, "id", f"task {accepted.id!r} already exists with a different payload or job",
                       id=accepted.id)
    if accepted.status == "cancelled":  # nothing was created: a 2xx would name a task that does not exist
        raise ApiError(409, "job", f"job {job!r} was cancelled and accepts no new tasks", job=job)
    return m.Accepted(id=accepted.id, status=accepted.status)
