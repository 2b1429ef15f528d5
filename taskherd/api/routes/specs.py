"""Routes of executors and analyzers: register (idempotent, `replace` to change), list, show."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from taskherd.actors.manager import RegisterSpec
from taskherd.api import models as m
from taskherd.api.deps import Pod, PodDep
from taskherd.api.errors import ApiError
from taskherd.specs import SPEC_KINDS, normalize_spec

router = APIRouter(tags=["specs"])

REGISTERED: dict[int | str, dict[str, Any]] = {
    201: {"description": "Registered: no spec was registered for this type"},
    200: {"model": m.Registered, "description": "The same spec again (unchanged), or another one with "
          "replace=true (replaced)"}}
TaskType = Annotated[str, Path(pattern=m.NAME, description="1-128 letters, digits, '_', '.', ':', '-'")]


@router.put("/executors/{task_type}", response_model=m.Registered, status_code=201, responses=REGISTERED)
def put_executor(task_type: TaskType, spec: m.ExecutorIn, pod: PodDep, response: Response,
                 replace: bool = False, check: bool = True) -> m.Registered:
    """Register how to run tasks of a type: 201 created, 200 unchanged or replaced, 409 a different
    spec without `replace` or (unless `check=false`) a target that cannot run on this host, 422 a bad spec."""
    return _register(pod, response, "executor", task_type, spec, replace, check)


@router.put("/analyzers/{task_type}", response_model=m.Registered, status_code=201, responses=REGISTERED)
def put_analyzer(task_type: TaskType, spec: m.AnalyzerIn, pod: PodDep, response: Response,
                 replace: bool = False, check: bool = True) -> m.Registered:
    """Register how to analyze results of a type: same answers as executors."""
    return _register(pod, response, "analyzer", task_type, spec, replace, check)


def _register(pod: Pod, response: Response, kind: str, task_type: str, spec: m.SpecIn,
              replace: bool, check: bool) -> m.Registered:
    body = spec.model_dump(exclude_none=True)
    status = pod.ask(RegisterSpec(kind, task_type, body, replace, check))
    if status == "conflict":
        raise ApiError(409, "replace", f"an {kind} with a different spec is already registered for "
                                       f"{task_type!r}; pass replace=true to replace it")
    response.status_code = 201 if status == "created" else 200
    return m.Registered(task_type=task_type, status=status, spec=normalize_spec(kind, task_type, body))


def _spec_reads(kind: str) -> None:
    @router.get(f"/{kind}s", summary=f"List {kind}s by task type")
    def list_specs(pod: PodDep) -> dict[str, Any]:
        return {f"{kind}s": pod.ctx.store.specs(kind, pod.ctx.store.spec_types(kind))}

    @router.get(f"/{kind}s/{{task_type}}", summary=f"Show the {kind} of a task type")
    def get_spec(task_type: TaskType, pod: PodDep) -> dict[str, Any]:
        spec = pod.ctx.store.spec(kind, task_type)
        if spec is None:
            raise ApiError(404, "task_type", f"no {kind} registered for task type {task_type!r}")
        return spec


for _kind in SPEC_KINDS:
    _spec_reads(_kind)
