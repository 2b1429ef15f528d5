"""Executors the fault suite registers, and the executor-side log they all write.

Imported by the pods' python runner children, by the exe script (`exe_task.py`) and by the test's
slow HTTP server, so only the standard library is used here.

Every call appends JSON lines to the file named in its payload (`log`), one `write` each on an
O_APPEND descriptor, so lines from many processes never interleave:

    {"ev": "begin", "task": ID, "kind": "python", "pid": P, "t": T0, "overlap": false}
    {"ev": "end",   "task": ID, "kind": "python", "pid": P, "t0": T0, "t": T1, "status": "ok"}
    {"ev": "spawn", "task": ID, "pid": P, "pids": [...]}     (an exe's grandchildren)

A call that is killed leaves its `begin` line only. `overlap` is measured, not inferred: a call holds
an exclusive `flock` on `locks/ID.lock` from begin to end, and the kernel drops it when the process
dies; a call that finds the lock taken started while another execution of the same task was alive.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any


def append(path: str, record: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
    finally:
        os.close(fd)


class CallLog:
    """One executor call: logs begin and end, and holds the task's lock in between."""

    def __init__(self, payload: dict[str, Any], kind: str) -> None:
        self.task, self.path, self.kind = payload["id"], payload["log"], kind
        self.lock_path = os.path.join(payload["locks"], f"{self.task}.lock")
        self.status = "ok"
        self._fd = -1
        self.t0 = 0.0

    def __enter__(self) -> CallLog:
        self.t0 = time.time()
        self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            overlap = False
        except BlockingIOError:
            overlap = True  # never wait for it: waiting would hide the overlap it proves
        append(self.path, {"ev": "begin", "task": self.task, "kind": self.kind, "pid": os.getpid(),
                           "t": self.t0, "overlap": overlap})
        return self

    def note(self, **fields: Any) -> None:
        append(self.path, {"ev": "spawn", "task": self.task, "pid": os.getpid(), **fields})

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        status = self.status if exc_type is None else "raised"
        append(self.path, {"ev": "end", "task": self.task, "kind": self.kind, "pid": os.getpid(), "t0": self.t0,
                           "t": time.time(), "status": status})
        os.close(self._fd)  # releases the lock


def work(payload: dict[str, Any]) -> dict[str, Any]:
    """A healthy task: sleeps `sleep_s` (20-50 ms in most cases)."""
    with CallLog(payload, "python"):
        time.sleep(float(payload["sleep_s"]))
    return {"id": payload["id"], "pid": os.getpid()}


def boom(payload: dict[str, Any]) -> dict[str, Any]:
    """Poison: always raises."""
    with CallLog(payload, "python"):
        time.sleep(0.01)
        raise ValueError(f"poison task {payload['id']} always fails")


def die(payload: dict[str, Any]) -> dict[str, Any]:
    """Poison: kills the python child that runs it (no end line, like a segfault)."""
    CallLog(payload, "python").__enter__()
    os._exit(3)


def scheduled(payload: dict[str, Any]) -> dict[str, Any]:
    """A schedule's tick (`fire_time_key` "fired_at"): a healthy task whose log and lock go by the tick's
    task id, `sched-NAME-20261206T143000Z`, rebuilt from the schedule's name and the tick's time."""
    stamp = payload["fired_at"].replace("-", "").replace(":", "")
    return work({**payload, "id": f"sched-{payload['schedule']}-{stamp}"})
