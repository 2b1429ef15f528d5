"""Running exe executors: one process per call, payload JSON on stdin, result JSON on stdout.

Each call gets its own session (`start_new_session=True`) so a time-out or a kill can take the
whole tree, shells' background jobs included, without touching the worker. stderr goes to a
temporary file rather than a pipe: an executor may log megabytes, and only the tail is kept.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from taskherd.runners.outcome import (
    TAIL_BYTES,
    Outcome,
    encode_payload,
    failed,
    killed,
    parse_object,
    since,
    succeeded,
    tail,
    timed_out,
)
from taskherd.runners.process_tree import CallGuard, kill_tree
from taskherd.specs import RunnerSpec

DRAIN_S = 2.0
"""After a kill, how long to wait for pipes to close: an escaped grandchild may hold them forever."""


class ExeRunner:
    """Runs argv targets. Not thread-safe: one call at a time; `kill()` may come from another thread."""

    def __init__(self) -> None:
        self._guard = CallGuard()

    def run(self, spec: RunnerSpec, payload: dict[str, Any], timeout_s: float) -> Outcome:
        """Run `spec.target` with `payload` on stdin; the deadline covers start to exit."""
        started = time.monotonic()
        data, problem = encode_payload(payload)
        if problem:
            return failed(problem, since(started), retryable=False)
        if timeout_s <= 0:
            return timed_out(timeout_s, 0.0)
        with tempfile.TemporaryFile() as stderr:
            self._guard.begin()
            try:
                proc = _start(spec, stderr)
            except OSError as exc:
                self._guard.end()
                error = f"cannot start {spec.target[0]!r}: {exc.strerror or exc}"
                return failed(error, since(started), retryable=False)
            stdout, timed_out_ = self._communicate(proc, data, timeout_s)
            was_killed = self._guard.end()
            return _conclude(proc, stdout, stderr, was_killed, timed_out_, timeout_s, started)

    def kill(self) -> bool:
        """Abort the call in flight (its `run` returns status "killed"); False if none."""
        return self._guard.kill()

    def _communicate(self, proc: subprocess.Popen[bytes], data: bytes, timeout_s: float) -> tuple[bytes, bool]:
        if not self._guard.attach(proc.pid):
            return _drain(proc), False
        try:
            stdout, _ = proc.communicate(data, timeout=timeout_s)
            return stdout, False
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)  # communicate did not reap it, so the pid is still its own
            return _drain(proc), True


def _start(spec: RunnerSpec, stderr: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, **dict(spec.env)} if spec.env else None
    return subprocess.Popen(
        list(spec.target), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
        cwd=spec.cwd, env=env, start_new_session=True, preexec_fn=_DIE_WITH_WORKER,
    )


def _pdeathsig() -> None:
    """In the forked child: SIGKILL it when the worker dies without killing it (SIGKILL, OOM).

    Otherwise an orphaned executor would run on while its task's lease expires and another worker
    runs the task again: two executions at once. Linux ties this to the forking thread, the worker
    slot's own, which lives as long as the slot. What the executable itself starts is not covered
    (on Kubernetes the container's end takes every process of the pod anyway).
    """
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the worker died between fork and prctl
        os._exit(1)


if sys.platform == "linux":
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _PR_SET_PDEATHSIG = 1
    _DIE_WITH_WORKER: Any = _pdeathsig
else:
    _DIE_WITH_WORKER = None


def _drain(proc: subprocess.Popen[bytes]) -> bytes:
    """Collect what a killed process wrote and reap it, giving up on pipes an escapee still holds."""
    try:
        stdout, _ = proc.communicate(timeout=DRAIN_S)
        return stdout or b""
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdin, proc.stdout):
            if pipe:
                pipe.close()
        proc.wait()
        return b""


def _conclude(
    proc: subprocess.Popen[bytes], stdout: bytes, stderr: Any, was_killed: bool, timed_out_: bool,
    timeout_s: float, started: float,
) -> Outcome:
    duration, detail = since(started), _stderr_tail(stderr)
    if was_killed:
        return killed(duration, detail=detail)
    if timed_out_:
        return timed_out(timeout_s, duration, detail=detail)
    code = proc.returncode
    if code != 0:
        # Like an exception in a python executor: often transient, and attempts are bounded upstream.
        return failed(_exit_error(code, detail), duration, retryable=True, exit_code=code, detail=detail)
    result, problem = parse_object(stdout, "stdout")
    if problem or result is None:
        return failed(problem or "no result", duration, retryable=False, exit_code=code, detail=detail)
    return succeeded(result, duration, exit_code=code, detail=detail)


def _exit_error(code: int, detail: str | None) -> str:
    what = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    last = next((line for line in reversed((detail or "").splitlines()) if line.strip()), "")
    return f"{what}: {last.strip()[:200]}" if last else what


def _stderr_tail(stderr: Any) -> str | None:
    size = stderr.seek(0, os.SEEK_END)
    stderr.seek(max(0, size - TAIL_BYTES))
    return tail(stderr.read())

