"""Running python executors in a persistent child the caller owns, with a hard time-out.

The child (`taskherd.runners.child`, protocol described there) is reused for `recycle_after` calls
(so a slow leak in user code cannot grow forever), and thrown away, whole process tree included,
whenever a call times out, is killed, or leaves the child in doubt. Its successor is started ahead,
when STANDBY_SHARE of its life is left (the first child at `warm()`, when the slot starts): an
interpreter takes ~100 ms to boot on a busy machine, which a drain of short tasks paid at every
recycle (25 such stalls in a 20,000-task drain, 7 % of the slots' time). Waiting is one selector over
the child's pipes, never a thread.

Where user modules come from: the child inherits the worker's environment and its working directory
(`-m` puts the cwd first on `sys.path`); `pythonpath` entries are put in front of PYTHONPATH. The
worker's own `sys.path` is not copied: what a task can import is decided by configuration, not by
how the worker happened to be started.

Results are bounded twice: the child sends no result over `max_result_bytes` (it replies with the
failure instead), and the parent reads no reply line longer than that plus RESULT_SLACK (should one
come anyway, the child is killed).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psutil

from taskherd.config.settings import MAX_RESULT_BYTES
from taskherd.runners.outcome import (
    RESULT_SLACK,
    Outcome,
    Payload,
    encode_payload,
    failed,
    killed,
    oversize,
    since,
    succeeded,
    timed_out,
)
from taskherd.runners.process_tree import CallGuard, descendants, kill_all, kill_tree
from taskherd.runners.progress import ProgressPipe

CHILD_MODULE = "taskherd.runners.child"
RETIRE_GRACE_S = 1.0
STANDBY_SHARE = 0.1
"""The successor starts once the child has this share of its `recycle_after` calls left (at least one)."""
PROGRESS_FD = "<progress-fd>"
"""In the child's argv, replaced by the number of its progress pipe's write end."""


class _ChildGone(Exception):
    """The child's pipes closed under us: it exited or was killed."""


class _ReplyTooLong(Exception):
    """The child sent more than a reply may hold without ending the line."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class PythonRunner:
    """Runs `module:function` targets in one persistent child process.

    Not thread-safe: one call at a time. `kill()` is the one method another thread may call.
    """

    def __init__(
        self,
        *,
        pythonpath: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        recycle_after: int = 10_000,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        if recycle_after < 1:
            raise ValueError(f"recycle_after: expected an integer >= 1, got {recycle_after!r}")
        self._pythonpath = tuple(str(p) for p in pythonpath)
        self._env = dict(env or {})
        self._recycle_after = recycle_after
        self._max_result_bytes = max_result_bytes
        self._child: _Child | None = None
        self._standby: _Child | None = None
        """The next child, booting or booted, never given a call: it becomes `_child` when that one goes."""
        self._standby_at = recycle_after - max(1, int(recycle_after * STANDBY_SHARE))
        self._guard = CallGuard()
        self._last_id = 0
        self._in_flight: int | None = None
        """The id of the call under way, whose progress reports count (set and cleared by the caller's thread)."""

    @property
    def pid(self) -> int | None:
        """The current child's pid, None when none is running (before the first call, after a kill)."""
        return self._child.pid if self._child else None

    @property
    def result_fd(self) -> int | None:
        """The pipe the child answers on (readable once a call's reply, or its EOF, is there)."""
        return self._child.result_fd if self._child else None

    def progress(self) -> dict[str, Any] | None:
        """The latest `{fraction, message}` the call under way reported; any thread may ask."""
        child, call = self._child, self._in_flight
        return child.progress.latest(call) if child is not None and call is not None else None

    def run(self, target: str, payload: Payload, timeout_s: float) -> Outcome:
        """Call `target(payload)` in the child; the deadline covers start-up, import and the call."""
        return self.start(target, payload, timeout_s)()

    def start(self, target: str, payload: Payload, timeout_s: float) -> Callable[[], Outcome]:
        """Send the call to the child and return at once; calling the result waits for its outcome
        (the caller may do other work meanwhile: the worker records its previous task's outcome)."""
        started = time.monotonic()
        request, problem = self._encode_request(target, payload)
        if problem:
            return lambda: failed(problem, since(started), retryable=False)
        if timeout_s <= 0:
            return lambda: timed_out(timeout_s, 0.0)
        self._guard.begin()
        try:
            child = self._ensure_child()
        except OSError as exc:
            self._guard.end()
            why = f"cannot start the python child: {exc}"
            return lambda: failed(why, since(started), retryable=True)
        if not self._guard.attach(child.handle):
            return lambda: self._conclude(child, _ChildGone(), self._guard.end(), timeout_s, started)
        self._in_flight = self._last_id
        try:
            pending: memoryview | _ChildGone = child.send(request)
        except _ChildGone as gone:
            pending = gone

        def outcome() -> Outcome:
            line = pending if isinstance(pending, _ChildGone) else self._complete(child, pending, started + timeout_s)
            return self._conclude(child, line, self._guard.end(), timeout_s, started)
        return outcome

    def warm(self) -> None:
        """Start the child now, so the first call does not wait for an interpreter to boot."""
        try:
            self._ensure_child()
        except OSError:
            pass  # the first call starts one again and reports why it cannot

    def kill(self) -> bool:
        """Abort the call in flight from another thread (its `run` returns status "killed"); False if none."""
        return self._guard.kill()

    def close(self) -> None:
        """Kill the child (and its successor) and its tree; the runner stays usable (the next call starts
        a new child)."""
        standby, self._standby = self._standby, None
        if standby:
            self._discard(standby)
        if self._child:
            self._discard(self._child)

    def _encode_request(self, target: str, payload: Payload) -> tuple[bytes, str | None]:
        data, problem = encode_payload(payload)
        if problem:
            return b"", problem
        self._last_id += 1
        envelope = json.dumps({"id": self._last_id, "target": target}, separators=(",", ":"))
        return envelope[:-1].encode() + b',"payload":' + data + b"}\n", None  # splice: no second encoding

    def _ensure_child(self) -> _Child:
        # A child that died while it waited (the OOM killer, an operator) is replaced: the call goes to a
        # live one rather than failing an attempt on a dead one. A waitpid a call, ~1 µs.
        self._child = self._alive(self._child)
        if self._child is None:
            self._child, self._standby = self._alive(self._standby) or self._spawn(), None
        if self._standby is None and self._child.calls >= self._standby_at:
            try:
                self._standby = self._spawn()
            except OSError:
                pass  # this call has its child: the next one starts another when it needs it, or says why not
        return self._child

    def _alive(self, child: _Child | None) -> _Child | None:
        """`child` (the current one or the successor), unless it has exited: then it is discarded."""
        if child is not None and child.proc.poll() is not None:
            self._discard(child)
            return None
        return child

    def _spawn(self) -> _Child:
        return _Child(self._argv(), self._child_env(), self._max_result_bytes + RESULT_SLACK)

    def _argv(self) -> list[str]:
        """The child's command line; PROGRESS_FD becomes the write end of its progress pipe."""
        return [sys.executable, "-m", CHILD_MODULE, "--max-result-bytes", str(self._max_result_bytes),
                "--progress-fd", PROGRESS_FD]

    def _child_env(self) -> dict[str, str]:
        env = {**os.environ, **self._env}
        paths = [*self._pythonpath, env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return env

    @staticmethod
    def _complete(child: _Child, pending: memoryview, deadline: float) -> bytes | None | _ChildGone | _ReplyTooLong:
        try:
            return child.complete(pending, deadline)
        except (_ChildGone, _ReplyTooLong) as gone:
            return gone

    def _conclude(self, child: _Child, line: bytes | None | _ChildGone | _ReplyTooLong, was_killed: bool,
                  timeout_s: float, started: float) -> Outcome:
        self._in_flight = None
        if was_killed:
            self._discard(child)
            return killed(since(started))
        if line is None:
            self._discard(child)
            return timed_out(timeout_s, since(started))
        if isinstance(line, _ReplyTooLong):
            self._discard(child)
            return oversize(line.size, self._max_result_bytes, since(started), more_than=True)
        if isinstance(line, _ChildGone):
            code = self._discard(child)
            return failed(f"the python child died during the call ({_describe_exit(code)})",
                          since(started), retryable=True, exit_code=code)
        return self._read_reply(child, line, started)

    def _read_reply(self, child: _Child, line: bytes, started: float) -> Outcome:
        try:
            reply = json.loads(line)
            valid = isinstance(reply, dict) and reply.get("id") == self._last_id
        except ValueError:
            valid = False
        if not valid:
            self._discard(child)
            error = f"the python child sent an unreadable reply: {line[:80]!r}"
            return failed(error, since(started), retryable=True)
        duration = since(started)
        child.calls += 1
        if child.calls >= self._recycle_after:
            self._retire(child)
        return _outcome_from_reply(reply, duration)

    def _discard(self, child: _Child) -> int | None:
        """Kill the child's tree at once and reap it: its state is in doubt."""
        if self._child is child:
            self._child = None
        kill_tree(child.pid)
        return child.reap()

    def _retire(self, child: _Child) -> None:
        """End a healthy child gently (EOF lets it exit by itself), then kill whatever it left behind."""
        if self._child is child:
            self._child = None
        leftovers = descendants(child.pid)  # before it exits: its orphans leave its tree
        child.close_stdin()
        child.await_exit(RETIRE_GRACE_S)
        kill_all(leftovers, pgid=None, wait_s=0)
        kill_tree(child.pid)  # not reaped yet, so its pid and group are still its own
        child.reap()


def _outcome_from_reply(reply: dict[str, Any], duration: float) -> Outcome:
    if reply.get("ok") and isinstance(reply.get("result"), dict):
        return succeeded(reply["result"], duration)
    # Only an exception inside the call may go away on its own; a target that will not load or a
    # result of the wrong shape fails the same way every time.
    return failed(
        str(reply.get("error") or "the python executor failed"),
        duration,
        retryable=reply.get("stage") == "call",
        error_type=reply.get("error_type"),
        detail=reply.get("traceback"),
    )


class _Child:
    """One running child and its two pipes; knows the framing, not what the messages mean."""

    def __init__(self, argv: list[str], env: dict[str, str], max_line: int) -> None:
        self.progress = ProgressPipe()
        """Read by whoever asks the runner for progress; closed when the child is reaped."""
        try:
            self.proc = subprocess.Popen(
                [str(self.progress.write_fd) if a == PROGRESS_FD else a for a in argv], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, env=env, bufsize=0, pass_fds=(self.progress.write_fd,),
                start_new_session=True,  # its own group: a terminal's Ctrl-C does not reach it; killpg reaches all of it
            )
        except BaseException:
            self.progress.close()
            raise
        self.progress.handed_over()
        self.pid = self.proc.pid
        self.handle = psutil.Process(self.pid)
        """Made once: the child stays unreaped while we hold it, so its pid cannot be reused under us."""
        self.calls = 0
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are PIPEs
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout
        self._in, self._out = self._stdin.fileno(), self._stdout.fileno()
        os.set_blocking(self._in, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._out, selectors.EVENT_READ)
        self._writing = False
        self._buffer = bytearray()
        self._max_line = max_line

    @property
    def result_fd(self) -> int:
        return self._out

    def send(self, request: bytes) -> memoryview:
        """Write what the pipe takes of a request now; the rest (a large payload) goes in `complete`."""
        return self._send(memoryview(request))

    def complete(self, pending: memoryview, deadline: float) -> bytes | None:
        """The reply line to the request sent; None if the deadline comes first; _ChildGone on EOF."""
        try:
            while (line := self._take_line()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                pending = self._wait(pending, remaining)
            return line
        finally:
            self._set_writing(False)

    def _wait(self, pending: memoryview, remaining: float) -> memoryview:
        # A large payload may not fit the pipe while the child is still importing: write as it reads.
        self._set_writing(bool(pending))
        for key, _ in self._selector.select(remaining):
            if key.fd == self._out:
                self._receive()
            elif pending:
                pending = self._send(pending)
        return pending

    def _send(self, pending: memoryview) -> memoryview:
        try:
            while pending:
                pending = pending[os.write(self._in, pending):]
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ChildGone() from exc
        return pending

    def _receive(self) -> None:
        chunk = os.read(self._out, 1 << 16)
        if not chunk:
            raise _ChildGone()
        self._buffer += chunk

    def _take_line(self) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > self._max_line:
                raise _ReplyTooLong(len(self._buffer))
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    def _set_writing(self, on: bool) -> None:
        if on and not self._writing:
            self._selector.register(self._in, selectors.EVENT_WRITE)
        elif self._writing and not on:
            self._selector.unregister(self._in)
        self._writing = on

    def close_stdin(self) -> None:
        self._set_writing(False)
        self._stdin.close()

    def await_exit(self, timeout_s: float) -> bool:
        """Wait for EOF on the child's stdout without reaping it; True if it came in time."""
        deadline = time.monotonic() + timeout_s
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                if self._selector.select(remaining):
                    self._receive()
        except _ChildGone:
            return True
        return False

    def reap(self) -> int | None:
        """Wait for the (already killed or exited) child and free its pipes; return its exit code."""
        try:
            code = self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            code = None
        self._selector.close()
        for pipe in (self._stdin, self._stdout):
            pipe.close()
        self.progress.close()
        return code


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
