"""The decorator SDK: executors and analyzers as plain functions, registered and submitted by name.

    # mypkg/images.py: a module the pods can import (README: how your code reaches the pods)
    import taskherd

    app = taskherd.App("http://127.0.0.1:18080")

    @app.executor("resize", timeout_s=60, max_attempts=3)
    def resize(payload: dict) -> dict:
        return {"path": payload["path"]}

    @app.analyzer("resize")
    def after_resize(given: dict) -> dict:
        return {"children": [], "record": given["result"]}

    # anywhere that imports mypkg.images:
    app.register()                                   # python-kind specs "mypkg.images:resize", ...
    task = resize.submit({"path": "a.png"}, job="album-7")
    task.result(timeout=60)                          # the result, or TaskFailed
    app.job("album-7").wait(timeout=600)

A decorated executor is still the function (calling it calls it, so it can be unit-tested), and the
worker's runner child imports it as `module:function`: so it must be a `def` at the top level of an
importable module, never a lambda, a nested function or one defined in the script being run
(`__main__`); `@app.executor` refuses those at once, naming the function. `register()` lets the
manager check the module exists where it runs (the pods' working directory and PYTHONPATH) and turns
its refusal into one message that says how code reaches the pods.

Constructing an App makes no connection: the pods import this module with the user's, and only the
processes that register or submit talk to the API (through `taskherd.client.Client`, one
keep-alive connection per thread). It sits above the client in the layers contract and below the
demo and the CLI: a facade over the client that the demo may use.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskherd.client import Client, ClientError, TaskFailed, TaskTimeout

__all__ = ["App", "AppError", "Job", "Task", "TaskFailed", "TaskTimeout", "TaskType"]
from taskherd.errors import TaskherdError

SENT_OPTIONS = ("timeout_s", "max_attempts", "retry_on", "description", "rate_limit_per_s", "rate_burst",
                "max_concurrency", "priority")
"""Executor options that go into the registered spec (the limits hold across the herd; `priority` is
the default of the type's tasks)."""
HOW_CODE_REACHES_PODS = ("the pods import your code from their working directory and PYTHONPATH: start "
                         "`taskherd up` in the directory that holds your package, or run pods from an image "
                         "built FROM taskherd's with it installed (README: how your code reaches the pods)")


class AppError(TaskherdError):
    """A function that cannot be an executor or analyzer, or a registration the server refused."""


@dataclass(frozen=True)
class Task:
    """A submitted task: its id and job, and `status` as the server answered (created or exists)."""

    app: App = field(repr=False)
    id: str
    job: str
    status: str

    def info(self) -> dict[str, Any]:
        """GET /tasks/{id}: state, attempts, executions, result or error, `progress` while it runs."""
        return self.app.client.task(self.id)

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The executor's result the moment it is recorded (a long-poll on GET /tasks/{id}?wait_s=, not
        after the archive); TaskFailed if the executor failed or the task ended failed or cancelled,
        TaskTimeout past `timeout`."""
        return self.app.client.result(self.id, timeout)


@dataclass(frozen=True)
class Job:
    """A job by name: `wait`, `status`, `cancel`, `teardown` through the app's client."""

    app: App = field(repr=False)
    name: str

    def wait(self, timeout: float | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None
             ) -> dict[str, Any]:
        """Until the job is done (long-polls); its status `{done, counts, total, ...}`; WaitTimeout past `timeout`."""
        return self.app.client.wait(self.name, timeout=timeout, on_progress=on_progress)

    def status(self) -> dict[str, Any]:
        return self.app.client.job(self.name)

    def cancel(self) -> dict[str, Any]:
        return self.app.client.cancel_job(self.name)

    def teardown(self, cancel: bool = False) -> dict[str, Any]:
        return self.app.client.teardown(self.name, cancel=cancel)


class TaskType:
    """What `@app.executor(name)` makes of a function: still callable as the function, plus `submit`."""

    def __init__(self, app: App, name: str, function: Callable[[dict[str, Any]], dict[str, Any]],
                 spec: dict[str, Any]) -> None:
        functools.update_wrapper(self, function)
        self.app, self.name, self.function, self.spec = app, name, function, spec

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self.function(payload)

    def submit(self, payload: dict[str, Any], *, job: str, id: str | None = None, delay_s: float | None = None,
               run_at: float | str | None = None, timeout_s: float | None = None,
               max_attempts: int | None = None, priority: int | None = None) -> Task:
        """Submit one task of this type into `job`; idempotent by `id` (the same id and payload again
        answers `exists`). `delay_s` or `run_at` (epoch seconds or RFC 3339) hold it until then;
        `priority` 0-9, higher first (default: the executor's, else 5)."""
        task = {"type": self.name, "job": job, "payload": payload, "id": id, "delay_s": delay_s, "run_at": run_at,
                "timeout_s": timeout_s, "max_attempts": max_attempts, "priority": priority}
        answer = self.app.client.submit({k: v for k, v in task.items() if v is not None})
        assert isinstance(answer, dict)  # one task in, one answer out
        return Task(self.app, answer["id"], job, answer["status"])

    def run(self, payload: dict[str, Any], *, job: str, id: str | None = None, timeout: float | None = None
            ) -> dict[str, Any]:
        """Submit one task of this type into `job` and wait for its result, in one request
        (`Client.run`): the result the moment it is recorded; TaskFailed, or TaskTimeout past `timeout`."""
        task = {"type": self.name, "job": job, "payload": payload, **({"id": id} if id is not None else {})}
        return self.app.client.run(task, timeout)

    def schedule(self, name: str, payload: dict[str, Any] | None = None, *, cron: str | None = None,
                 every_s: int | None = None, timezone: str | None = None, job: str | None = None,
                 catch_up_s: int | None = None, fire_time_key: str | None = None) -> dict[str, Any]:
        """Submit a task of this type on `cron` (5 fields, read in `timezone`) or `every_s`, exactly once
        per tick, into `job` (default: a job named `name`): `PUT /schedules/{name}`, created or replaced.
        Returns the schedule with its `next_fire_at`; `app.client.delete_schedule(name)` stops it."""
        task = {"type": self.name, "payload": payload or {}, **({"job": job} if job else {})}
        body = {"cron": cron, "every_s": every_s, "timezone": timezone, "catch_up_s": catch_up_s,
                "fire_time_key": fire_time_key, "task": task}
        return self.app.client.put_schedule(name, {k: v for k, v in body.items() if v is not None})["schedule"]

    def __repr__(self) -> str:
        return f"<taskherd executor {self.name!r}: {self.spec['target']}>"


class App:
    """Executors and analyzers declared with decorators, registered with `register()`."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0) -> None:
        """`token`: the API's bearer token, else $TASKHERD_TOKEN. No connection is made here."""
        self.url, self._token, self._timeout = url, token, timeout
        self._client: Client | None = None
        self.executors: dict[str, TaskType] = {}
        self.analyzers: dict[str, dict[str, Any]] = {}

    @property
    def client(self) -> Client:
        """The API client, made at first use (importing the user's module in a pod makes none)."""
        if self._client is None:
            self._client = Client(self.url, timeout=self._timeout, token=self._token)
        return self._client

    def executor(self, task_type: str, *, timeout_s: float | None = None, max_attempts: int | None = None,
                 retry_on: Sequence[str | int] | None = None, description: str | None = None,
                 rate_limit_per_s: float | None = None, rate_burst: int | None = None,
                 max_concurrency: int | None = None, priority: int | None = None
                 ) -> Callable[[Callable[..., Any]], TaskType]:
        """Declare `function(payload) -> dict` the executor of `task_type` (registered by `register()`).
        `rate_limit_per_s` (with `rate_burst`, default max(1, rate)) and `max_concurrency` hold across
        every pod; `priority` (0-9) is the default of its tasks."""
        options = {"timeout_s": timeout_s, "max_attempts": max_attempts,
                   "retry_on": list(retry_on) if retry_on is not None else None, "description": description,
                   "rate_limit_per_s": rate_limit_per_s, "rate_burst": rate_burst,
                   "max_concurrency": max_concurrency, "priority": priority}

        def declare(function: Callable[..., Any]) -> TaskType:
            spec = {"kind": "python", "target": target_of(function, f"@app.executor({task_type!r})"),
                    **{k: v for k, v in options.items() if v is not None}}
            made = TaskType(self, task_type, function, spec)
            self.executors[task_type] = made
            return made
        return declare

    def analyzer(self, task_type: str, *, timeout_s: float | None = None, description: str | None = None
                 ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare `function({"task", "result"}) -> {"children", "record"}` the analyzer of `task_type`;
        the function itself is returned unchanged."""
        def declare(function: Callable[..., Any]) -> Callable[..., Any]:
            spec = {"kind": "python", "target": target_of(function, f"@app.analyzer({task_type!r})"),
                    "timeout_s": timeout_s, "description": description}
            self.analyzers[task_type] = {k: v for k, v in spec.items() if v is not None}
            return function
        return declare

    def register(self, replace: bool = False) -> dict[str, str]:
        """Store every declared executor and analyzer as a python-kind spec: `{"executor resize":
        "created" | "unchanged" | "replaced", ...}`. The manager checks each module exists where the
        pods look for it; a refusal raises AppError saying how code reaches the pods. A different spec
        already registered is refused unless `replace`."""
        done = {}
        for name, made in self.executors.items():
            done[f"executor {name}"] = self._put("executor", name, made.spec, replace)
        for name, spec in self.analyzers.items():
            done[f"analyzer {name}"] = self._put("analyzer", name, spec, replace)
        return done

    def job(self, name: str) -> Job:
        return Job(self, name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, kind: str, name: str, spec: dict[str, Any], replace: bool) -> str:
        add = self.client.add_executor if kind == "executor" else self.client.add_analyzer
        try:
            return str(add(name, spec, replace=replace)["status"])
        except ClientError as exc:
            if exc.status == 409 and exc.field == "target":
                raise AppError(f"{kind} {name!r} ({spec['target']}): the manager cannot find it: {exc.message}; "
                               f"{HOW_CODE_REACHES_PODS}") from None
            if exc.status == 409:
                raise AppError(f"{kind} {name!r}: {exc.message} (register(replace=True) replaces it)") from None
            raise


def target_of(function: Any, where: str) -> str:
    """`module:function` for a top-level `def` of an importable module; AppError naming it otherwise."""
    if not inspect.isfunction(function):
        raise AppError(f"{where}: expected a function defined with def, got {type(function).__name__} {function!r}")
    name, module = function.__qualname__, function.__module__
    if function.__name__ == "<lambda>":
        raise AppError(f"{where}: a lambda cannot be an executor or analyzer: the pods import it as "
                       f"module:function, so define it with def at the top level of a module")
    if "." in name:
        raise AppError(f"{where}: {name} is nested (inside {name.rsplit('.', 1)[0].replace('.<locals>', '()')}): the "
                       f"pods import it as module:function, so define it at the top level of its module")
    if module == "__main__" or not module:
        raise AppError(f"{where}: {name} is defined in the script being run (__main__), which the pods cannot "
                       f"import: define it in a module (e.g. mypkg/images.py) and import that module here")
    return f"{module}:{name}"
