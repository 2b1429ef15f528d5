"""Progress reports from a running executor to its worker, coalesced at both ends.

In a python executor (the user's side, re-exported as `taskherd.progress`)::

    import taskherd

    def resize(payload: dict) -> dict:
        for i, path in enumerate(payload["paths"]):
            ...
            taskherd.progress((i + 1) / len(payload["paths"]), f"resized {path}")

An exe executor writes lines `FRACTION [MESSAGE]` to the file descriptor named by the environment
variable TASKHERD_PROGRESS_FD: `echo "0.5 halfway" >/dev/fd/$TASKHERD_PROGRESS_FD` from a shell (dash's
`>&N` takes one digit only), `os.write(int(os.environ["TASKHERD_PROGRESS_FD"]), b"0.5 halfway\n")`.

Why it never slows the task: `progress()` only stores the latest report and sets a flag; a daemon
thread of the python child writes it to a pipe of its own at most every FLUSH_S (dropped, never
waited for, should the pipe be full). The worker's LeaseKeeper reads the pipe once per lease renewal
and sends the latest report with the renewal itself (`renew.lua`, fenced by the execution id): no
round trip of its own. Lines are tagged with the child's call id, so a report written late never
lands on the slot's next task. Standard library only: the child imports this at start-up.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

PROGRESS_FD_ENV = "TASKHERD_PROGRESS_FD"
"""Names the file descriptor an exe executor writes its progress lines to."""
FLUSH_S = 0.2
"""The python child writes at most one report per FLUSH_S (the latest; those between are dropped)."""
MESSAGE_CHARS = 200
"""A message is cut to this many characters (a line stays far below PIPE_BUF, so it is written whole)."""
MAX_LINE = 4096


def progress(fraction: float, message: str = "") -> None:
    """Report how far the running task is (`fraction` from 0 to 1) and what it does now. Cheap
    enough for a tight loop; outside a worker (a unit test calling the function) it does nothing."""
    try:
        valid = 0.0 <= fraction <= 1.0
    except TypeError:
        valid = False
    if not valid:
        raise ValueError(f"taskherd.progress: fraction must be a number from 0 to 1, got {fraction!r}")
    sink = _sink
    if sink is None or sink.call is None:
        return
    sink.latest = (sink.call, fraction, message)
    if not sink.wake.is_set():
        sink.wake.set()


# --- the python child's side -----------------------------------------------------------------------
class _Sink:
    """Writes the latest report to the worker's pipe from a daemon thread, at most every FLUSH_S."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)  # what user code starts must not hold the worker's pipe
        self.fd = fd
        self.call: Any = None
        self.latest: tuple[Any, float, str] | None = None
        self.wake = threading.Event()
        threading.Thread(target=self._flush, name="taskherd-progress", daemon=True).start()

    def _flush(self) -> None:
        written = None
        while True:
            self.wake.wait()
            self.wake.clear()
            latest = self.latest
            if latest is None or latest is written:
                continue
            call, fraction, message = latest
            line = json.dumps({"id": call, "f": float(fraction), "m": str(message)[:MESSAGE_CHARS]},
                              separators=(",", ":"))
            try:
                os.write(self.fd, line.encode() + b"\n")
            except OSError:  # full (the worker reads once per renewal) or closed: a report is not worth a wait
                pass
            written = latest
            time.sleep(FLUSH_S)


_sink: _Sink | None = None


def install(fd: int) -> None:
    """In the python child, at start-up: reports go to `fd`."""
    global _sink
    _sink = _Sink(fd)


def begin(call: Any) -> None:
    """In the python child: reports made from now on belong to call `call`."""
    if _sink is not None:
        _sink.call = call


def end() -> None:
    if _sink is not None:
        _sink.call = None


# --- the worker's side -----------------------------------------------------------------------------
class ProgressPipe:
    """The read end of one executor's progress pipe, kept by the worker. `latest` may be called from
    another thread (the LeaseKeeper's) than the one that closes the pipe (the slot's)."""

    def __init__(self) -> None:
        self._read, self.write_fd = os.pipe()  # neither is inherited, unless passed with pass_fds
        os.set_blocking(self._read, False)
        self._lock = threading.Lock()
        self._buffer = b""
        self._last: tuple[Any, dict[str, Any]] | None = None

    def handed_over(self) -> None:
        """The executor holds the write end now: close ours, so its exit is the pipe's EOF."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def latest(self, call: Any = None) -> dict[str, Any] | None:
        """`{fraction, message}` last reported by call `call` (None: the pipe's only call, an exe)."""
        with self._lock:
            if self._read >= 0:
                self._drain()
            last = self._last
        return last[1] if last is not None and last[0] == call else None

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._read, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            self._buffer = b""
        for line in lines:
            report = _parse(line)
            if report is not None:
                self._last = report

    def close(self) -> None:
        with self._lock:
            if self._read >= 0:
                os.close(self._read)
                self._read = -1
            self.handed_over()


def _parse(line: bytes) -> tuple[Any, dict[str, Any]] | None:
    """A python child's JSON line (tagged with its call id) or an exe's `FRACTION [MESSAGE]`."""
    try:
        if line.startswith(b"{"):
            data = json.loads(line)
            call, fraction, message = data["id"], float(data["f"]), str(data["m"])
        else:
            text = line.decode("utf-8", "replace").strip()
            head, _, message = text.partition(" ")
            call, fraction = None, float(head)
    except (ValueError, KeyError, TypeError):
        return None
    if not 0.0 <= fraction <= 1.0:
        return None
    return call, {"fraction": fraction, "message": message.strip()[:MESSAGE_CHARS]}
