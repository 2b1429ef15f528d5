"""What the API's handlers share: the pod they serve (`Pod`, injected as `PodDep`), and lookups that
answer 404 or 503 in the API's one error shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import pykka
from fastapi import Depends, Request

from taskherd.actors.context import PodContext
from taskherd.api.errors import ApiError
from taskherd.errors import TaskherdError
from taskherd.intake import Intake
from taskherd.jobs import Queries

ASK_TIMEOUT_S = 30.0


class Pod:
    """What the endpoints share: the pod context, the Manager lookup and the read side (Queries)."""

    def __init__(self, ctx: PodContext, intake: Intake, manager: Callable[[], pykka.ActorRef[Any]]) -> None:
        if ctx.archive is None:
            raise ValueError("the API needs a PodContext with an archive (the manager role)")
        self.ctx, self.intake, self.manager = ctx, intake, manager
        self.queries = Queries(ctx.store, ctx.archive)

    def ask(self, message: Any) -> Any:
        """The Manager's answer; 503 while it is restarting or too busy to answer in time. A user's
        mistake comes back as a value (a TaskherdError), raised here for the API's error handlers."""
        try:
            answer = self.manager().ask(message, timeout=ASK_TIMEOUT_S)
        except pykka.ActorDeadError:
            raise ApiError(503, None, "the manager is not running (restarting?); try again", "manager") from None
        except pykka.Timeout:
            raise ApiError(503, None, f"the manager did not answer within {ASK_TIMEOUT_S:g} s", "manager") from None
        if isinstance(answer, TaskherdError):
            raise answer
        return answer


async def _pod(request: Request) -> Pod:
    """`async`, though it awaits nothing: FastAPI runs a plain `def` dependency in its thread pool, a
    thread hop per request (two context switches and a wake-up of the event loop) to read an attribute."""
    pod: Pod = request.app.state.pod
    return pod


PodDep = Annotated[Pod, Depends(_pod)]


def job_status(pod: Pod, job: str) -> dict[str, Any]:
    """The job's status; 404 when neither Redis nor MySQL knows it."""
    status = pod.queries.job(job)
    if status is None:
        raise ApiError(404, "job", f"no job named {job!r}")
    return status


def task_view(pod: Pod, task_id: str, job: str | None = None) -> dict[str, Any]:
    """The task, live or archived; 404 when never submitted (`job`: see `Queries.task`)."""
    task = pod.queries.task(task_id, job)
    if task is None:
        raise ApiError(404, "id", f"no task with id {task_id!r}")
    return task
