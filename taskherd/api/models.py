"""Request and response bodies of the HTTP API.

Requests forbid unknown fields, so a typo (`max_attemps`) is a 422 naming the field instead of a
silently ignored option. Runner fields (`kind`, `target`, `env`, `cwd`, `headers`) are accepted as any
JSON here and checked by `taskherd.runners.RunnerSpec`, whose messages say what a valid value is.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from taskherd.states import TaskState

MAX_SECONDS = 7 * 24 * 3600
State = TaskState


class FinalState(StrEnum):
    """A final state: what the archive can be asked about."""

    SUCCEEDED = TaskState.SUCCEEDED.value
    FAILED = TaskState.FAILED.value
    CANCELLED = TaskState.CANCELLED.value


class JobsState(StrEnum):
    """Which jobs `GET /jobs` lists: open (tasks not all archived) or done (summarized in MySQL)."""

    OPEN = "open"
    DONE = "done"


class JobPage(BaseModel):
    state: JobsState
    jobs: list[dict[str, Any]] = Field(description="Each job's status, as `GET /jobs/{job}` answers it.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskIn(_In):
    """One task to submit; without an id the server makes one and returns it."""

    id: str | None = Field(None, min_length=1, max_length=255, description="Idempotency key; the same id "
                           "and payload again answers 'exists', a different payload 'conflict'.")
    type: str = Field(description="Task type; an executor must be registered for it.")
    job: str = Field(description="The job this task belongs to (1-128 letters, digits, '_', '.', ':', '-').")
    payload: dict[str, Any] = Field(default_factory=dict, description="JSON object handed to the executor.")
    timeout_s: float | None = Field(None, gt=0, le=MAX_SECONDS, description="Overrides the executor's time-out.")
    max_attempts: int | None = Field(None, ge=1, le=1000, description="Overrides the executor's attempts.")


class TaskBatch(_In):
    """Many tasks in one request, accepted all or nothing (any invalid task rejects the batch)."""

    tasks: list[TaskIn] = Field(min_length=1)


def _shape(body: Any) -> str:
    return "batch" if isinstance(body, dict) and "tasks" in body else "one"


SubmitBody = Annotated[Annotated[TaskIn, Tag("one")] | Annotated[TaskBatch, Tag("batch")],
                       Discriminator(_shape)]
"""A single task object, or `{"tasks": [...]}`."""
SHAPE_TAGS = ("one", "batch")
"""Tags pydantic puts in an error's location; they are not part of the field path a user sees."""


class SpecIn(_In):
    id: str | None = Field(None, min_length=1, max_length=255, description="Defaults to the task type.")
    kind: Any = Field(description="python, exe or http.")
    target: Any = Field(description='"pkg.module:function" (python), an argv list (exe) or a URL (http).')
    env: Any = Field(None, description="exe only: extra environment variables (object of strings).")
    cwd: Any = Field(None, description="exe only: working directory.")
    headers: Any = Field(None, description="http only: extra request headers (object of strings).")
    timeout_s: float | None = Field(None, gt=0, le=MAX_SECONDS, description="Default time-out per call.")
    description: str | None = Field(None, max_length=2000)


class ExecutorIn(SpecIn):
    """How to run tasks of one type."""

    max_attempts: int | None = Field(None, ge=1, le=1000, description="Default attempts per task.")
    retry_on: list[str | int] | None = Field(None, description="Exception type names, exit codes or HTTP "
                                             "statuses that are retried; others fail at once.")


class AnalyzerIn(SpecIn):
    """How to analyze results of one type: returns `{"children": [...], "record": {...}}`."""


class Accepted(BaseModel):
    id: str
    status: Literal["created", "exists", "conflict", "cancelled"]
    """'cancelled': the job was cancelled and accepts no new tasks."""


class BatchAccepted(BaseModel):
    tasks: list[Accepted]
    created: int
    exists: int
    conflict: int


class Registered(BaseModel):
    task_type: str
    status: Literal["created", "unchanged", "replaced"]
    spec: dict[str, Any]


class TaskPage(BaseModel):
    job: str
    state: State
    ids: list[str]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class Teardown(BaseModel):
    job: str
    leftovers: list[str]


NODE_NUMBERS: dict[str, type[int] | type[float]] = {"pid": int, "slots": int, "started": float}
"""Fields of a node registration that are numbers (Redis keeps every field as a string)."""


def node_view(node: dict[str, Any]) -> dict[str, Any]:
    """A node registration as `GET /nodes` answers it: `pid` and `slots` integers, `started` a Unix time."""
    out = dict(node)
    for name, number in NODE_NUMBERS.items():
        try:
            out[name] = number(node[name])
        except (KeyError, ValueError):
            pass  # missing or not a number (another version's pod): shown as registered
    return out


class ErrorItem(BaseModel):
    field: str | None = Field(description="Dotted path of the bad input (`tasks.3.payload`), null if none.")
    message: str
    service: str | None = Field(None, description="On 503: the backing service that failed.")


class ErrorBody(BaseModel):
    """Every error answer, whatever its status."""

    errors: list[ErrorItem]
