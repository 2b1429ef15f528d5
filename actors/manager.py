"""Manager: the writer behind the API for everything but submissions (cancel and retry tasks, add
executors and analyzers, tear a job down), one request at a time.

Submissions go straight from the API's request threads to the thread-safe Intake, as the analyzer's
children do: a submit does not queue behind a teardown, nor pay two thread hops. Reads (task, job,
listing) go straight to `taskherd.jobs.Queries`, which only reads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import pykka

from taskherd.errors import InvalidInput
from taskherd.intake import Intake
from taskherd.jobs import write_summary
from taskherd.nsq.messages import TaskRef
from taskherd.specs import InvalidSpec, check_admitted, check_runnable, normalize_spec
from taskherd.states import WAITING_STATES, TaskState
from taskherd.supervisor import Supervised

log = logging.getLogger("taskherd.manager")


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """Ask -> 'created' | 'unchanged' | 'replaced' | 'conflict', or the InvalidSpec (InvalidInput for
    the task type) that says why not: returned, not raised (see `Manager.on_receive`)."""

    kind: str
    """'executor' or 'analyzer'"""
    task_type: str
    spec: dict[str, Any]
    replace: bool = False
    check: bool = True
    """Refuse a target that cannot run on this host (`specs.check_runnable`); off for targets that
    exist only where the workers run."""


@dataclass(frozen=True, slots=True)
class Teardown:
    """Ask -> list of Redis keys of the job still present after deletion (should be empty).
    A job still running is cancelled first, so its workers stop rather than write into the void."""

    job: str


@dataclass(frozen=True, slots=True)
class CancelTask:
    """Ask -> the state the task was in: pending/retry (cancelled now), running (killed at its next
    lease renewal), analyzing (too late), its final state when archived (succeeded, failed, cancelled),
    or 'gone' (unknown)."""

    task_id: str


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Ask -> how many live tasks were cancelled; the job accepts no new tasks from now on."""

    job: str


@dataclass(frozen=True, slots=True)
class RetryTasks:
    """Ask -> list[Accepted] for the dead letters requeued (failed or cancelled archived tasks)."""

    task_ids: tuple[str, ...] = ()
    job: str | None = None
    """Every failed task of this job, in addition to task_ids."""


class Manager(Supervised, pykka.ThreadingActor):
    def __init__(self, intake: Intake, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.intake = intake

    def on_receive(self, message: Any) -> Any:
        """A user's mistake (InvalidInput, InvalidSpec) is answered as a value, which `Pod.ask` raises in
        the API's thread: raised here, pykka would log a full traceback for what is only a 422."""
        try:
            return self._handle(message)
        except (InvalidInput, InvalidSpec) as exc:
            log.info("%s refused: %s", _describe(message), str(exc).replace("\n", "; "))
            return exc

    def _handle(self, message: Any) -> Any:
        match message:
            case RegisterSpec(kind, task_type, spec, replace, check):
                return self._register(kind, task_type, spec, replace, check)
            case Teardown(job):
                # A job done a moment ago may not have its summary in MySQL yet: write it now, or it
                # would be lost with the keys it is made from (a no-op if written or not done).
                write_summary(self.intake.store, self.intake.archive, job)
                self.intake.store.cancel_job(job)  # running executors are killed at their next renewal
                left = self.intake.store.teardown(job)
                log.info("job %s torn down%s", job, f"; {len(left)} key(s) left: {left[:5]}" if left else "")
                return left
            case CancelTask(task_id):
                return self._cancel(task_id)
            case CancelJob(job):
                moved = self.intake.store.cancel_job(job)
                self._ring_results(job, [t for t, prior in moved if prior in WAITING_STATES])
                log.info("job %s cancelled (%d live task(s))", job, len(moved))
                return len(moved)
            case RetryTasks(task_ids, job):
                return self._retry(list(task_ids), job)
            case _:
                log.warning("manager: unknown message %r", message)
        return None

    def _cancel(self, task_id: str) -> str:
        job = self.intake.store.job_of(task_id)
        prior = "gone" if job is None else self.intake.store.cancel(job, task_id)
        if job is not None and prior in WAITING_STATES:
            self._ring_results(job, [task_id])
        if prior == "gone":  # no longer live: say how it ended, as a retry of it does
            archived = self.intake.archive.task(task_id)
            return str(archived["state"]) if archived else prior
        return prior

    def _ring_results(self, job: str, task_ids: list[str]) -> None:
        """Cancelled waiting tasks go straight to analysis (to be archived as cancelled)."""
        if task_ids:
            self.intake.publisher.publish(self.intake.settings.nsq.results_topic,
                                      [TaskRef(job, t).encode() for t in task_ids])

    def _retry(self, task_ids: list[str], job: str | None) -> list[Any]:
        if job is not None:
            task_ids += self.intake.archive.task_ids(job, TaskState.FAILED, "", 1_000_000)
        accepted = self.intake.retry(task_ids)
        log.info("requeued %d dead letter(s)", len(accepted))
        return accepted

    def _register(self, kind: str, task_type: str, spec: dict[str, Any], replace: bool, check: bool) -> str:
        spec = normalize_spec(kind, task_type, spec)
        settings = self.intake.settings  # [security] is not skipped by check=false
        check_admitted(spec, settings.security, settings.auth.on)
        if check:  # the python child of a worker looks in its working directory first (`python -m`)
            check_runnable(spec, import_path=(os.getcwd(),))
        status = self.intake.store.register(kind, task_type, spec, replace)
        log.info("%s for %s: %s", kind, task_type, status)
        return status


def _describe(message: Any) -> str:
    if isinstance(message, RegisterSpec):
        return f"{message.kind} for {message.task_type!r}"
    return type(message).__name__
