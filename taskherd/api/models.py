"""Request and response bodies of the HTTP API.

Requests forbid unknown fields, so a typo (`max_attemps`) is a 422 naming the field instead of a
silently ignored option. Runner fields (`kind`, `target`, `env`, `cwd`, `headers`) are accepted as any
JSON here and checked by `taskherd.runners.RunnerSpec`, whose messages say what a valid value is.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, WithJsonSchema

from taskherd import schedules
from taskherd.intake import MAX_DELAY_S, MAX_RUN_AT_S
from taskherd.specs import HTTP_URL_RE, NAME_RE, PYTHON_TARGET_RE
from taskherd.states import TaskState

MAX_SECONDS = 7 * 24 * 3600
MAX_ID_CHARS = 255
NAME = NAME_RE.pattern
"""The pattern of task-type and job names, declared wherever one is taken (the handlers check it too)."""
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


def _whole(value: Any) -> Any:
    """JSON Schema's integer: 3.0 is one (strict pydantic would refuse it); "3" and true are not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_whole)]
Attempts = Annotated[int, Field(ge=1, le=1000), BeforeValidator(_whole)]
Priority = Annotated[int, Field(ge=0, le=9), BeforeValidator(_whole)]
"""Bounds on the int itself, as Attempts: given on the optional field they reached the OpenAPI as `ge`/`le`,
which JSON Schema ignores, so it allowed any integer (schemathesis found 653 refused with 422)."""
RunAt = Annotated[Any, WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_RUN_AT_S},
                                                  {"type": "string", "format": "date-time"}, {"type": "null"}]})]
"""Epoch seconds or RFC 3339 text, as the schema declares; checked by the Intake, whose one message names
`run_at` (a union here would answer two, one per branch)."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    """Strict: a JSON string is no number ("5" for `timeout_s` is a 422, as the schema says)."""


def _delay_or_run_at(schema: dict[str, Any]) -> None:
    """The schema says what the Intake refuses: `delay_s` and `run_at` both given (not null)."""
    schema["not"] = {"required": ["delay_s", "run_at"],
                     "properties": {"delay_s": {"not": {"type": "null"}}, "run_at": {"not": {"type": "null"}}}}


class TaskIn(_In):
    """One task to submit; without an id the server makes one and returns it."""

    model_config = ConfigDict(json_schema_extra=_delay_or_run_at)

    id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS, description="Idempotency key; the same "
                           "id and payload again answers 'exists', a different payload 'conflict'.")
    type: str = Field(json_schema_extra={"pattern": NAME}, description="Task type; with no executor registered "
                      "for it the submit is a 409 (register one, then submit again).")
    job: str = Field(json_schema_extra={"pattern": NAME},
                     description="The job this task belongs to (1-128 letters, digits, '_', '.', ':', '-').")
    payload: dict[str, Any] = Field(default_factory=dict, description="JSON object handed to the executor; "
                                    "at most [api].max_payload_bytes (256 KiB) as compact JSON, else a 422.")
    timeout_s: float | None = Field(None, gt=0, le=MAX_SECONDS, description="Overrides the executor's time-out.")
    max_attempts: Attempts | None = Field(None, description="Overrides the executor's attempts.")
    delay_s: float | None = Field(None, ge=0, le=MAX_DELAY_S, description="Not leased before this many seconds "
                                  "from now (Redis's clock); listed `scheduled` until then. Not with run_at.")
    run_at: RunAt = Field(None, description="Not leased before this moment: epoch seconds, or an RFC 3339 "
                                 "date-time with an offset (`2026-12-24T18:00:00Z`); a moment past runs at once. "
                                 "Not with delay_s.")
    priority: Priority | None = Field(None, description="0-9, higher first: with a slot free, a waiting "
                                     "task of a higher priority is leased before any lower one. Default: the "
                                     "executor spec's `priority`, else 5.")


class TaskBatch(_In):
    """Many tasks in one request, accepted all or nothing (any invalid task rejects the batch); an id
    given twice is created once, its later copies answered as a resubmission is (exists or conflict)."""

    tasks: list[TaskIn] = Field(min_length=1, description="At most [api].max_batch tasks (the schema served "
                                "by a pod says its own as maxItems).")


def _shape(body: Any) -> str:
    return "batch" if isinstance(body, dict) and "tasks" in body else "one"


SubmitBody = Annotated[Annotated[TaskIn, Tag("one")] | Annotated[TaskBatch, Tag("batch")],
                       Discriminator(_shape)]
"""A single task object, or `{"tasks": [...]}`."""
SHAPE_TAGS = ("one", "batch")
"""Tags pydantic puts in an error's location; they are not part of the field path a user sees."""


_STRINGS: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
_NONE: dict[str, Any] = {"anyOf": [{"type": "object", "maxProperties": 0}, {"type": "null"}]}
_RUNNERS: dict[str, dict[str, Any]] = {
    "python": {"target": {"type": "string", "pattern": PYTHON_TARGET_RE.pattern, "description": '"module:function"'},
               "env": _NONE, "cwd": {"type": "null"}, "headers": _NONE},
    "exe": {"target": {"type": "array", "minItems": 1, "items": {"type": "string"},
                       "prefixItems": [{"type": "string", "minLength": 1}], "description": "argv"},
            "env": {"anyOf": [_STRINGS, {"type": "null"}]},
            "cwd": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}]}, "headers": _NONE},
    "http": {"target": {"type": "string", "pattern": HTTP_URL_RE.pattern, "description": "an http(s) URL"},
             "env": _NONE, "cwd": {"type": "null"}, "headers": {"anyOf": [_STRINGS, {"type": "null"}]}},
}
"""What each kind takes, as `taskherd.specs.RunnerSpec` checks it (the handlers keep its messages)."""


def _one_of_kinds(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """The spec's JSON schema as one object schema per kind, so that the OpenAPI says which target
    and options go with which kind (pydantic alone would declare them as any JSON)."""
    common = {k: v for k, v in schema.pop("properties").items() if k not in _RUNNERS["exe"] and k != "kind"}
    for key in ("required", "additionalProperties", "type"):
        schema.pop(key, None)
    schema["oneOf"] = [{"title": f"{model.__name__} ({kind})", "type": "object", "additionalProperties": False,
                        "required": ["kind", "target"], "properties": {"kind": {"const": kind}, **runner, **common}}
                       for kind, runner in _RUNNERS.items()]


class SpecIn(_In):
    model_config = ConfigDict(json_schema_extra=_one_of_kinds)

    id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS, description="Defaults to the task type.")
    kind: Any = Field(description="python, exe or http.")
    target: Any = Field(description='"pkg.module:function" (python), an argv list (exe) or a URL (http).')
    env: Any = Field(None, description="exe only: extra environment variables (object of strings).")
    cwd: Any = Field(None, description="exe only: working directory.")
    headers: Any = Field(None, description="http only: extra request headers (object of strings).")
    timeout_s: float | None = Field(None, gt=0, le=MAX_SECONDS, description="Default time-out per call.")
    description: str | None = Field(None, max_length=2000)


class ExecutorIn(SpecIn):
    """How to run tasks of one type."""

    max_attempts: Attempts | None = Field(None, description="Default attempts per task.")
    retry_on: list[str | Integer] | None = Field(None, description="Exception type names, exit codes or HTTP "
                                             "statuses that are retried; others fail at once.")
    rate_limit_per_s: float | None = Field(None, gt=0, le=1_000_000, description="Tasks of this type started "
                                           "per second over the whole herd (a token bucket); over it a task waits "
                                           "pending, not counted as an attempt.")
    rate_burst: Integer | None = Field(None, ge=1, le=1_000_000, description="Starts allowed at once after a quiet "
                                       "spell (the bucket's size); default max(1, rate_limit_per_s).")
    max_concurrency: Integer | None = Field(None, ge=1, le=1_000_000, description="Executions of this type running "
                                            "at once over the whole herd; over it a task waits pending.")
    priority: Priority | None = Field(None, description="Default priority of this type's tasks (0-9, "
                                     "higher first; 5 when not set).")


class AnalyzerIn(SpecIn):
    """How to analyze results of one type: returns `{"children": [...], "record": {...}}`."""


class Accepted(BaseModel):
    id: str
    status: Literal["created", "exists", "conflict", "cancelled"]
    """In a batch, 'conflict': another payload has this id; 'cancelled': the job was cancelled and accepts
    no new tasks (a single task answers either with a 409)."""


class Ran(Accepted):
    """`POST /tasks/run`'s answer: the submit's, and the task itself."""

    task: dict[str, Any] = Field(description="The task as `GET /tasks/{id}` shows it once its result is recorded "
                                 "(state `analyzing` or final), or as it is when `wait_s` ran out.")


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


# --- schedules --------------------------------------------------------------------------------------
def _cron_or_every(schema: dict[str, Any]) -> None:
    """The schema says what the handler refuses: exactly one of `cron` and `every_s` (not null)."""
    schema["oneOf"] = [{"required": [name], "properties": {name: {"not": {"type": "null"}}}}
                       for name in ("cron", "every_s")]


_TIMEZONES: list[Any] = sorted(schedules.timezones())


class ScheduleTaskIn(_In):
    """The task each tick submits."""

    type: str = Field(json_schema_extra={"pattern": NAME}, description="Task type; with no executor registered "
                      "for it the PUT is a 409 (register one first).")
    payload: dict[str, Any] = Field(default_factory=dict, description="JSON object handed to the executor, the same "
                                    "every tick (at most [api].max_payload_bytes).")
    job: str | None = Field(None, json_schema_extra={"pattern": NAME},
                            description="The job its tasks go into; by default a job named after the schedule.")
    priority: Priority | None = Field(None, description="0-9, higher first.")


class ScheduleIn(_In):
    """Submit a task on a cron expression or every N seconds, exactly once per tick."""

    model_config = ConfigDict(json_schema_extra=_cron_or_every)

    cron: str | None = Field(None, max_length=200, json_schema_extra={"pattern": schedules.CRON_PATTERN},
                             description="5 fields, minute hour day-of-month month day-of-week, read in `timezone` "
                                         "(`30 2 * * *`), or @hourly, @daily, @weekly, @monthly, @yearly. Not with every_s.")
    every_s: Integer | None = Field(None, ge=1, le=schedules.MAX_EVERY_S,
                                    description="Every N seconds, at the multiples of N since the Unix epoch. Not with cron.")
    timezone: str = Field("UTC", json_schema_extra={"enum": _TIMEZONES},
                          description="IANA time zone the cron fields are read in.")
    catch_up_s: Integer = Field(schedules.DEFAULT_CATCH_UP_S, ge=0, le=schedules.MAX_CATCH_UP_S,
                                description="A tick found overdue by at most this fires late; when the oldest "
                                            "overdue tick is older (no manager was up), the missed ticks fire once.")
    fire_time_key: str | None = Field(None, json_schema_extra={"pattern": NAME},
                                      description="Each task's payload gets its tick's time (RFC 3339, UTC) under this key.")
    task: ScheduleTaskIn


class ScheduleSaved(BaseModel):
    name: str
    status: Literal["created", "replaced", "unchanged"]
    schedule: dict[str, Any] = Field(description="As `GET /schedules/{name}` shows it.")
