"""Routes of tasks: submit (one or a batch, idempotent by id), show one, cancel, retry a dead
letter, and list archived tasks by final state (`state=failed`: the dead letters)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response

from taskherd.actors.manager import CancelTask, RetryTasks
from taskherd.api import models as m
from taskherd.api.deps import PodDep, task_view
from taskherd.api.errors import ApiError, task_field
from taskherd.errors import InvalidTask
from taskherd.intake import Accepted, Submission
from taskherd.states import DEAD_STATES, WAITING_STATES, TaskState

router = APIRouter(tags=["tasks"])

FULL: dict[int | str, dict[str, Any]] = {429: {"model": m.ErrorBody, "headers": {"Retry-After": {
    "description": "Seconds to wait before sending the same submission again", "schema": {"type": "integer"}}},
    "description": "The herd is full: the submission would pass [manager].max_open_tasks or "
                   "max_open_tasks_per_job. Nothing of it was created; send it again after Retry-After."}}


@router.post("/tasks", response_model=m.Accepted | m.BatchAccepted, status_code=201, responses=FULL)
def post_tasks(body: Annotated[m.SubmitBody, Body()], pod: PodDep, response: Response) -> Any:
    """Submit one task or `{"tasks": [...]}`. 201 if any was created, else 200; one conflicting
    task is a 409, while a batch reports conflicts per task. A batch is accepted all or nothing:
    one that would pass a bound on open tasks is a 429 with Retry-After, creating nothing."""
    batch = isinstance(body, m.TaskBatch)
    tasks = body.tasks if isinstance(body, m.TaskBatch) else [body]
    _check_batch(tasks, pod.ctx.settings.api.max_batch)
    subs = [Submission(type=t.type, job=t.job, payload=t.payload, id=t.id, timeout_s=t.timeout_s,
                       max_attempts=t.max_attempts) for t in tasks]
    try:
        accepted = pod.intake.submit(subs, bounded=True)
    except InvalidTask as exc:
        raise ApiError(422, task_field(exc.field, batch), exc.problem) from None
    statuses = [a.status for a in accepted]
    response.status_code = 201 if "created" in statuses else 200
    if not batch:
        return _single(accepted[0])
    return m.BatchAccepted(tasks=[m.Accepted(id=a.id, status=a.status) for a in accepted],
                           **{s: statuses.count(s) for s in ("created", "exists", "conflict")})


@router.get("/tasks/{task_id:path}")
def get_task(task_id: str, pod: PodDep) -> dict[str, Any]:
    """A task, live or archived: state, attempts, executions, result or error. Unknown → 404."""
    return task_view(pod, task_id)


@router.post("/tasks/{task_id:path}/cancel")
def cancel_task(task_id: str, pod: PodDep) -> dict[str, Any]:
    """Cancel a task. Waiting: cancelled at once; running: its executor is killed within one lease
    renewal; already analyzed or finished: nothing to do (`was` says which)."""
    task_view(pod, task_id)
    was = pod.ask(CancelTask(task_id))
    return {"id": task_id, "was": was, "cancelled": was in (*WAITING_STATES, TaskState.RUNNING)}


@router.post("/tasks/{task_id:path}/retry")
def retry_task(task_id: str, pod: PodDep) -> dict[str, Any]:
    """Requeue a dead letter (an archived failed or cancelled task) with fresh attempts, in a new
    retry round (its earlier executions are kept): `retried`, or `exists` if it is live again already."""
    task = task_view(pod, task_id)
    if task["state"] not in DEAD_STATES:
        raise ApiError(409, "id", f"task {task_id!r} is {task['state']}; only failed or cancelled tasks are retried")
    accepted = pod.ask(RetryTasks(task_ids=(task_id,)))
    return {"id": task_id, "status": accepted[0].status if accepted else "unchanged"}


@router.get("/tasks")
def list_tasks(pod: PodDep, state: m.FinalState,
               job: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
               cursor: str = "") -> dict[str, Any]:
    """Archived tasks in a final state, of one job or of all: `state=failed` lists the dead letters."""
    ids = pod.queries.archived_ids(job, state, cursor, limit)
    return {"state": state, "job": job, "ids": ids, "next_cursor": ids[-1] if len(ids) == limit else None}


def _check_batch(tasks: list[m.TaskIn], limit: int) -> None:
    """At most `limit` tasks, and no id twice (one answer per id could not say which copy won)."""
    if len(tasks) > limit:
        raise ApiError(422, "tasks", f"at most {limit} tasks per request, got {len(tasks)}")
    first: dict[str, int] = {}
    for i, t in enumerate(tasks):
        if t.id is not None and first.setdefault(t.id, i) != i:
            raise ApiError(422, f"tasks.{i}.id", f"id {t.id!r} appears twice in the batch (first at tasks.{first[t.id]})")


def _single(accepted: Accepted) -> m.Accepted:
    if accepted.status == "conflict":
        raise ApiError(409, "id", f"task {accepted.id!r} already exists with a different payload or job",
                       id=accepted.id)
    return m.Accepted(id=accepted.id, status=accepted.status)
