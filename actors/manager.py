"""Manager: the one writer behind the API (add task, add executor or analyzer, tear a job down).

Writes go through this actor so that the API's threads never interleave a registration with a
submission; reads (task, job, listing) go straight to `taskherd.jobs.Queries`, which only reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pykka

from taskherd.intake import Intake, Submission
from taskherd.runners import RunnerSpec
from taskherd.supervisor import Supervised

log = logging.getLogger("taskherd.manager")

RUNNER_FIELDS = {"kind", "target", "env", "cwd", "headers"}
SPEC_FIELDS = {"executor": RUNNER_FIELDS | {"id", "timeout_s", "max_attempts", "retry_on", "description"},
               "analyzer": RUNNER_FIELDS | {"id", "timeout_s", "description"}}


@dataclass(frozen=True, slots=True)
class SubmitTasks:
    """Ask -> list[Accepted]; raises InvalidTask (nothing written) when any task is unusable."""

    tasks: tuple[Submission, ...]


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """Ask -> 'created' | 'unchanged' | 'replaced' | 'conflict'; raises InvalidSpec."""

    kind: str
    """'executor' or 'analyzer'"""
    task_type: str
    spec: dict[str, Any]
    replace: bool = False


@dataclass(frozen=True, slots=True)
class Teardown:
    """Ask -> list of Redis keys of the job still present after deletion (should be empty)."""

    job: str


class Manager(Supervised, pykka.ThreadingActor):
    def __init__(self, intake: Intake, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.intake = intake

    def on_receive(self, message: Any) -> Any:
        match message:
            case SubmitTasks(tasks):
                return self.intake.submit(list(tasks))
            case RegisterSpec(kind, task_type, spec, replace):
                return self._register(kind, task_type, spec, replace)
            case Teardown(job):
                left = self.intake.store.teardown(job)
                log.info("job %s torn down%s", job, f"; {len(left)} key(s) left: {left[:5]}" if left else "")
                return left
            case _:
                log.warning("manager: unknown message %r", message)
        return None

    def _register(self, kind: str, task_type: str, spec: dict[str, Any], replace: bool) -> str:
        spec = normalize_spec(kind, task_type, spec)
        status = self.intake.store.register(kind, task_type, spec, replace)
        log.info("%s for %s: %s", kind, task_type, status)
        return status


def normalize_spec(kind: str, task_type: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A stored spec: validated (raises InvalidSpec naming the field), with its id defaulted."""
    from taskherd.intake import InvalidTask, check_name

    check_name("task_type", task_type)
    unknown = set(spec) - SPEC_FIELDS[kind]
    if unknown:
        raise InvalidTask(sorted(unknown)[0], "unknown field")
    runner_spec(spec)
    return {"id": task_type, **{k: v for k, v in spec.items() if v is not None}}


def runner_spec(spec: dict[str, Any]) -> RunnerSpec:
    """The part of a stored executor/analyzer spec that says how to call it."""
    return RunnerSpec.from_dict({k: v for k, v in spec.items() if k in RUNNER_FIELDS})
