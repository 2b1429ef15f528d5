"""Cancel and retry: the API's control over work already submitted, and the dead-letter listing."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query

from taskherd.actors.manager import CancelJob, CancelTask, RetryTasks
from taskherd.api.app import PodDep, _job
from taskherd.api.errors import ApiError

FINAL = ("failed", "cancelled", "succeeded")


def control_routes(app: FastAPI) -> None:
    @app.post("/tasks/{task_id:path}/cancel", tags=["control"])
    def cancel_task(task_id: str, pod: PodDep) -> dict[str, Any]:
        """Cancel a task. Waiting: cancelled at once; running: its executor is killed within one lease
        renewal; already analyzed or finished: nothing to do (`was` says which)."""
        if pod.queries.task(task_id) is None:
            raise ApiError(404, "id", f"no task with id {task_id!r}")
        was = pod.ask(CancelTask(task_id))
        return {"id": task_id, "was": was, "cancelled": was in ("pending", "retry", "running")}

    @app.post("/tasks/{task_id:path}/retry", tags=["control"])
    def retry_task(task_id: str, pod: PodDep) -> dict[str, Any]:
        """Requeue a dead letter (an archived failed or cancelled task) with fresh attempts."""
        task = pod.queries.task(task_id)
        if task is None:
            raise ApiError(404, "id", f"no task with id {task_id!r}")
        if task["state"] not in ("failed", "cancelled"):
            raise ApiError(409, "id", f"task {task_id!r} is {task['state']}; only failed or cancelled tasks are retried")
        accepted = pod.ask(RetryTasks(task_ids=(task_id,)))
        return {"id": task_id, "status": accepted[0].status if accepted else "unchanged"}

    @app.post("/jobs/{job}/cancel", tags=["control"])
    def cancel_job(job: str, pod: PodDep) -> dict[str, Any]:
        """Cancel every live task of the job; the job accepts no new tasks afterwards."""
        _job(pod, job)
        return {"job": job, "cancelled": pod.ask(CancelJob(job))}

    @app.post("/jobs/{job}/retry", tags=["control"])
    def retry_job(job: str, pod: PodDep) -> dict[str, Any]:
        """Requeue every failed task of the job."""
        _job(pod, job)
        accepted = pod.ask(RetryTasks(job=job))
        return {"job": job, "requeued": sum(1 for a in accepted if a.status == "created")}

    @app.get("/tasks", tags=["control"])
    def list_tasks(pod: PodDep, state: Annotated[str, Query(pattern="^(failed|cancelled|succeeded)$")],
                   job: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                   cursor: str = "") -> dict[str, Any]:
        """Archived tasks in a final state, of one job or of all: `state=failed` lists the dead letters."""
        ids = pod.ctx.archive.task_ids(job, state, cursor, limit)  # type: ignore[union-attr]
        return {"state": state, "job": job, "ids": ids, "next_cursor": ids[-1] if len(ids) == limit else None}
