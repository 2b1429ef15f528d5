"""Running exe executors: one process per call, payload JSON on stdin, result JSON on stdout.

Each call gets its own session (`start_new_session=True`) so a time-out or a kill can take the
whole tree, shells' background jobs included, without touching the worker. stderr is a pipe read
in the same loop as stdout, of which only the last TAIL_BYTES are kept: an executor may log
gigabytes, and they cost the worker neither memory nor disk.

stdout is read in a bounded loop (one selector over stdin, stdout and stderr, as the payload is written):
once more than `max_result_bytes` plus RESULT_SLACK has come, the tree is killed and the call fails
naming both sizes, so an executor that writes gigabytes costs the worker no more than the bound.

Progress: each call gets a pipe of its own, whose write end the executable finds named by the
environment variable TASKHERD_PROGRESS_FD; it writes lines `FRACTION [MESSAGE]` there (`progress.py`).
"""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

from taskherd.config.settings import MAX_RESULT_BYTES
from taskherd.runners.outcome import (
    RESULT_SLACK,
    TAIL_BYTES,
    Outcome,
    Payload,
    bounded,
    encode_payload,
    failed,
    killed,
    oversize,
    parse_object,
    since,
    tail,
    timed_out,
)
from taskherd.runners.process_tree import CallGuard, kill_tree
from taskherd.runners.progress import PROGRESS_FD_ENV, ProgressPipe
from taskherd.specs import RunnerSpec

CHUNK = 1 << 16
EXIT_POLL_S = 0.01
"""While stdout is closed but stderr open, how often to look whether the process has exited."""


class ExeRunner:
    """Runs argv targets. Not thread-safe: one call at a time; `kill()` may come from another thread."""

    def __init__(self, max_result_bytes: int = MAX_RESULT_BYTES) -> None:
        self._guard = CallGuard()
        self._max_result_bytes = max_result_bytes
        self._progress: ProgressPipe | None = None

    def run(self, spec: RunnerSpec, payload: Payload, timeout_s: float) -> Outcome:
        """Run `spec.target` with `payload` on stdin; the deadline covers start to exit."""
        started = time.monotonic()
        data, problem = encode_payload(payload)
        if problem:
            return failed(problem, since(started), retryable=False)
        if timeout_s <= 0:
            return timed_out(timeout_s, 0.0)
        self._guard.begin()
        progress = ProgressPipe()
        try:
            proc = _start(spec, progress.write_fd)
        except OSError as exc:
            self._guard.end()
            progress.close()
            error = f"cannot start {spec.target[0]!r}: {exc.strerror or exc}"
            return failed(error, since(started), retryable=False)
        progress.handed_over()
        self._progress = progress
        stderr = bytearray()
        try:
            stdout, ending = self._communicate(proc, data, timeout_s, stderr)
        finally:
            self._progress = None
            progress.close()
        was_killed = self._guard.end()
        return self._conclude(proc, stdout, ending, tail(bytes(stderr)), was_killed, timeout_s, started)

    def progress(self) -> dict[str, Any] | None:
        """The latest `{fraction, message}` the call under way reported; any thread may ask."""
        pipe = self._progress
        return pipe.latest() if pipe is not None else None

    def kill(self) -> bool:
        """Abort the call in flight (its `run` returns status "killed"); False if none."""
        return self._guard.kill()

    def _communicate(self, proc: subprocess.Popen[bytes], data: bytes, timeout_s: float,
                     stderr: bytearray) -> tuple[bytes, str]:
        """stdout and how the call ended: "exit", "timeout" or "oversize" (stdout is then b"");
        the tail of stderr goes into `stderr`."""
        if not self._guard.attach(proc.pid):
            _reap(proc)
            return b"", "exit"
        limit = self._max_result_bytes + RESULT_SLACK
        stdout, ending = _exchange(proc, data, time.monotonic() + timeout_s, limit, stderr)
        if ending != "exit":
            kill_tree(proc.pid)  # not reaped yet, so the pid is still its own
            _reap(proc)
        return stdout, ending

    def _conclude(self, proc: subprocess.Popen[bytes], stdout: bytes, ending: str, detail: str | None,
                  was_killed: bool, timeout_s: float, started: float) -> Outcome:
        duration = since(started)
        if was_killed:
            return killed(duration, detail=detail)
        if ending == "timeout":
            return timed_out(timeout_s, duration, detail=detail)
        if ending == "oversize":
            limit = self._max_result_bytes
            return oversize(limit + RESULT_SLACK, limit, duration, more_than=True, detail=detail)
        code = proc.returncode
        if code != 0:
            # Like an exception in a python executor: often transient, and attempts are bounded upstream.
            return failed(_exit_error(code, detail), duration, retryable=True, exit_code=code, detail=detail)
        result, problem = parse_object(stdout, "stdout")
        if problem or result is None:
            return failed(problem or "no result", duration, retryable=False, exit_code=code, detail=detail)
        return bounded(result, self._max_result_bytes, duration, exit_code=code, detail=detail)


def _start(spec: RunnerSpec, progress_fd: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, **dict(spec.env), PROGRESS_FD_ENV: str(progress_fd)}
    return subprocess.Popen(
        list(spec.target), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=spec.cwd, env=env, start_new_session=True, preexec_fn=_DIE_WITH_WORKER, pass_fds=(progress_fd,),
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


def _exchange(proc: subprocess.Popen[bytes], data: bytes, deadline: float, limit: int,
              stderr: bytearray) -> tuple[bytes, str]:
    """Write `data` to stdin while reading stdout and stderr, until stdout's EOF and the exit, the
    deadline ("timeout"), or more than `limit` bytes of stdout ("oversize"). Holds at most
    `limit` + CHUNK of stdout and 2 x TAIL_BYTES + CHUNK of stderr."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None  # all PIPEs
    pending, out, size = memoryview(data), bytearray(), 0
    watched = (proc.stdin.fileno(), proc.stdout.fileno())  # by fd: a closed file has no fileno() to look up
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        os.set_blocking(proc.stdin.fileno(), False)
        selector.register(proc.stdin, selectors.EVENT_WRITE)
        # stderr alone does not keep this loop going: a background job may hold it open for ever
        while any(fd in selector.get_map() for fd in watched):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"", "timeout"
            for key, _ in selector.select(remaining):
                if key.fileobj is proc.stdin:
                    pending = _write(proc, selector, pending)
                elif key.fileobj is proc.stderr:
                    _read_tail(proc, selector, stderr)
                elif chunk := os.read(proc.stdout.fileno(), CHUNK):
                    out += chunk
                    size += len(chunk)
                    if size > limit:
                        return b"", "oversize"
                else:
                    selector.unregister(proc.stdout)
        return (bytes(out), "exit") if _wait(proc, selector, deadline, stderr) else (b"", "timeout")


def _read_tail(proc: subprocess.Popen[bytes], selector: selectors.BaseSelector, stderr: bytearray) -> None:
    """Read what stderr has, keeping only its tail; at EOF stop watching it."""
    assert proc.stderr is not None
    if chunk := os.read(proc.stderr.fileno(), CHUNK):
        stderr += chunk
        if len(stderr) > 2 * TAIL_BYTES:
            del stderr[:-TAIL_BYTES]
    else:
        selector.unregister(proc.stderr)


def _write(proc: subprocess.Popen[bytes], selector: selectors.BaseSelector, pending: memoryview) -> memoryview:
    """Write what stdin takes now; at the end (or if the executor closed its stdin), close it: EOF."""
    assert proc.stdin is not None
    try:
        pending = pending[os.write(proc.stdin.fileno(), pending):]
    except BlockingIOError:
        return pending
    except (BrokenPipeError, ConnectionResetError):
        pending = pending[len(pending):]  # it reads no more stdin: not an error (as communicate())
    if not pending:
        selector.unregister(proc.stdin)
        proc.stdin.close()
    return pending


def _wait(proc: subprocess.Popen[bytes], selector: selectors.BaseSelector, deadline: float,
          stderr: bytearray) -> bool:
    """Reap the process once it exits by the deadline; False if it does not. Meanwhile stderr is
    still read, so a process that logs on its way out never blocks on a full pipe; once it has
    exited, what its stderr holds is read without waiting (a background job may keep it open)."""
    assert proc.stderr is not None
    err = proc.stderr.fileno()
    while err in selector.get_map() and proc.poll() is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        for _ in selector.select(min(remaining, EXIT_POLL_S)):
            _read_tail(proc, selector, stderr)
    if err in selector.get_map():
        os.set_blocking(err, False)
        try:
            while err in selector.get_map():
                _read_tail(proc, selector, stderr)
        except BlockingIOError:
            pass
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        return False


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Close our pipe ends (an escaped grandchild may hold the others for ever) and reap the killed process."""
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe:
            pipe.close()
    proc.wait()


def _exit_error(code: int, detail: str | None) -> str:
    what = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    last = next((line for line in reversed((detail or "").splitlines()) if line.strip()), "")
    return f"{what}: {last.strip()[:200]}" if last else what



