"""The one object a worker slot uses to run executor and analyzer calls, whatever their kind.

A slot owns its `Runner` for its whole life: the python child and the HTTP connections it keeps
are what make the second task fast, and owning them per slot means no call ever waits for another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import httpx

from taskherd.config.settings import MAX_RESULT_BYTES
from taskherd.runners.exe_runner import ExeRunner
from taskherd.runners.http_runner import HttpRunner
from taskherd.runners.outcome import Outcome, Payload
from taskherd.runners.python_runner import PythonRunner
from taskherd.specs import RunnerSpec

T = TypeVar("T")


class Started(Generic[T]):
    """A call under way: calling it waits for the outcome. `fileno`, when not None, turns readable once
    the outcome is there (a python call's pipe from its child): the slot selects on it together with
    its feed, to take the next task's message while the executor runs, and not a moment past its end."""

    __slots__ = ("_wait", "fileno")

    def __init__(self, wait: Callable[[], T], fileno: int | None = None) -> None:
        self._wait, self.fileno = wait, fileno

    def __call__(self) -> T:
        return self._wait()


class Runner:
    """Runs one call at a time for one worker slot, with a hard time-out, and never raises for it.

    NOT thread-safe: `run` and `close` belong to the slot's thread. The exception is `kill()`, which
    another thread (cancel, lost lease, shutdown) calls to abort the call in flight at once.
    """

    def __init__(
        self,
        *,
        pythonpath: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        recycle_after: int = 10_000,
        http_client: httpx.Client | None = None,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        """`pythonpath`/`env`/`recycle_after` shape the python child (see `PythonRunner`);
        `http_client` is for callers that share or configure one (it is then not closed here);
        a result longer than `max_result_bytes` (compact JSON) fails its call, and no more than
        that (plus RESULT_SLACK) of it is ever read."""
        self._python = PythonRunner(pythonpath=pythonpath, env=env, recycle_after=recycle_after,
                                    max_result_bytes=max_result_bytes)
        self._exe = ExeRunner(max_result_bytes)
        self._http = HttpRunner(http_client, max_result_bytes)
        self._lock = threading.Lock()
        self._active: PythonRunner | ExeRunner | HttpRunner | None = None

    @property
    def python_pid(self) -> int | None:
        """The python child's pid, or None while none runs: for health checks and tests."""
        return self._python.pid

    def warm(self) -> None:
        """Boot the python child ahead of the first call (a slot calls it as it starts)."""
        self._python.warm()

    def run(self, spec: RunnerSpec, payload: Payload, timeout_s: float) -> Outcome:
        """Run `spec` on `payload`, giving up after `timeout_s` (the task's remaining time)."""
        return self.start(spec, payload, timeout_s)()

    def start(self, spec: RunnerSpec, payload: Payload, timeout_s: float) -> Started[Outcome]:
        """Start the call and return what waits for its outcome. A python call runs in the child while
        the caller goes on; the other kinds run here and now, and the wait returns their outcome."""
        runners: dict[str, PythonRunner | ExeRunner | HttpRunner] = {"python": self._python, "exe": self._exe,
                                                                     "http": self._http}
        kind_runner = runners[spec.kind]
        with self._lock:
            self._active = kind_runner
        try:
            if isinstance(kind_runner, PythonRunner):
                wait = kind_runner.start(str(spec.target), payload, timeout_s)
            else:
                done = kind_runner.run(spec, payload, timeout_s)
                wait = lambda: done
        except BaseException:
            self._idle()
            raise

        def outcome() -> Outcome:
            try:
                return wait()
            finally:
                self._idle()
        return Started(outcome, self._python.result_fd if kind_runner is self._python else None)

    def _idle(self) -> None:
        with self._lock:
            self._active = None

    def progress(self) -> dict[str, Any] | None:
        """The latest `{fraction, message}` the call in flight reported (python and exe), or None;
        any thread may ask (the LeaseKeeper, at each renewal)."""
        with self._lock:
            active = self._active
        return None if active is None or isinstance(active, HttpRunner) else active.progress()

    def kill(self) -> bool:
        """Abort the call in flight from any thread; its `run` returns status "killed". False if none."""
        with self._lock:
            active = self._active
        return active.kill() if active else False

    def close(self) -> None:
        """Kill the python child's tree and close HTTP connections; `run` may still be called after."""
        self._python.close()
        self._http.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
