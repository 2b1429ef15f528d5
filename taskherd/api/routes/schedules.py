"""Routes of schedules: create or replace (idempotent), list with next fire times, show, delete.

Writes go straight to Redis (one script each, `taskherd.schedules.Schedules`): a schedule touches no
task and no actor's state, so nothing is gained by queueing it behind the Manager. Scopes as for every
route (`auth.py`): GET is read, PUT and DELETE admin, like registering an executor.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from taskherd.api import models as m
from taskherd.api.deps import Pod, PodDep
from taskherd.api.errors import ApiError
from taskherd.errors import InvalidInput
from taskherd.intake import canonical
from taskherd.schedules import Schedule, Schedules

router = APIRouter(tags=["schedules"])

Name = Annotated[str, Path(pattern=m.NAME, description="1-128 letters, digits, '_', '.', ':', '-'")]
SAVED: dict[int | str, dict[str, Any]] = {
    201: {"description": "Created: it fires first at its first tick from now"},
    200: {"model": m.ScheduleSaved, "description": "Replaced (it fires first at its first tick from now), or "
          "unchanged (the same schedule again: its next fire time stays)"}}


def _schedules(pod: Pod) -> Schedules:
    return Schedules(pod.ctx.store)


@router.put("/schedules/{name}", response_model=m.ScheduleSaved, status_code=201, responses=SAVED)
def put_schedule(name: Name, body: m.ScheduleIn, pod: PodDep, response: Response) -> m.ScheduleSaved:
    """Create or replace a schedule: 201 created, 200 replaced or unchanged; 409 when its task type has
    no executor; 422 naming the field (cron, timezone, every_s, task...)."""
    schedule = Schedule.from_input(name, body.model_dump(exclude_none=True))
    size, limit = len(canonical(schedule.task["payload"], "task.payload").encode()), pod.ctx.settings.api.max_payload_bytes
    if size > limit:
        raise InvalidInput("task.payload", f"{size} bytes exceeds the limit of {limit}")
    if pod.ctx.store.spec("executor", schedule.task["type"]) is None:
        raise ApiError(409, "task.type", f"no executor registered for task type {schedule.task['type']!r}; "
                                         "register one, then the schedule")
    status = _schedules(pod).put(schedule)
    response.status_code = 201 if status == "created" else 200
    return m.ScheduleSaved(name=name, status=status, schedule=_shown(pod, name))


@router.get("/schedules", summary="List schedules with their next fire times and last firings")
def list_schedules(pod: PodDep) -> dict[str, Any]:
    return {"schedules": _schedules(pod).all()}


@router.get("/schedules/{name}", summary="Show a schedule, its next fire time and its last firing")
def get_schedule(name: Name, pod: PodDep) -> dict[str, Any]:
    return _shown(pod, name)


@router.delete("/schedules/{name}", summary="Delete a schedule: it fires no more")
def delete_schedule(name: Name, pod: PodDep) -> dict[str, Any]:
    if not _schedules(pod).delete(name):
        raise ApiError(404, "name", f"no schedule named {name!r}")
    return {"name": name, "deleted": True}


def _shown(pod: Pod, name: str) -> dict[str, Any]:
    shown = _schedules(pod).get(name)
    if shown is None:
        raise ApiError(404, "name", f"no schedule named {name!r}")
    return shown
