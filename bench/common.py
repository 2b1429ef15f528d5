"""What both sides of the harness share: statistics, deadlines, process bookkeeping, a private Redis.

Imported by the harness (taskherd's venv) and by the peers' driver (the bench-only peers venv), so it
uses the standard library only; psutil is used when importable (both venvs have it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

try:
    import psutil
except ImportError:  # pragma: no cover - both venvs install it
    psutil = None  # type: ignore[assignment]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
"""The repository root: every process of the harness runs with this cwd (so `bench.*` imports)."""
RESULTS = ROOT / "bench" / "results"
PIDFILE = RESULTS / "processes.tmp"
"""Every long-lived process the harness or a driver starts, one `pid create_time what` a line, so a
later run can end what a crashed run left behind (by pid and start time, never by name)."""


class BenchError(Exception):
    """A workload could not be measured (a deadline passed, a check failed to run)."""


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


# --- figures -------------------------------------------------------------------------------------
def summary(values: Iterable[float | None], unit: str, better: str, note: str = "") -> dict[str, Any]:
    """min / median / max of one figure over repetitions (None entries: a repetition that gave no
    value, e.g. a capped wait, are kept in `values` and make the summary a lower bound)."""
    vals = list(values)
    got = [v for v in vals if v is not None]
    out: dict[str, Any] = {"values": vals, "unit": unit, "better": better}
    if got:
        out |= {"min": min(got), "median": statistics.median(got), "max": max(got)}
    if note:
        out["note"] = note
    return out


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


# --- waiting -------------------------------------------------------------------------------------
def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05,
             ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Poll until `predicate()` is truthy and return it; BenchError naming `what` past the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise BenchError(f"{what}: not within {timeout:.0f} s (last: {str(last)[:200]})")
        time.sleep(interval)


# --- processes -----------------------------------------------------------------------------------
def record_pid(pid: int, what: str) -> None:
    """Note a process we started in the pid file (see PIDFILE)."""
    with contextlib.suppress(Exception):
        created = psutil.Process(pid).create_time() if psutil else 0.0
        RESULTS.mkdir(parents=True, exist_ok=True)
        with PIDFILE.open("a") as f:
            f.write(f"{pid} {created:.3f} {what}\n")


def reap_leftovers() -> list[str]:
    """Kill what an earlier run recorded in PIDFILE and that still runs (same pid AND start time),
    then empty the file; returns what was killed."""
    killed: list[str] = []
    if psutil is None or not PIDFILE.exists():
        return killed
    for line in PIDFILE.read_text().splitlines():
        try:
            pid_s, created_s, what = line.split(" ", 2)
            proc = psutil.Process(int(pid_s))
            if abs(proc.create_time() - float(created_s)) > 0.01:
                continue
        except (ValueError, psutil.Error):
            continue
        kill_tree(proc.pid)
        killed.append(f"{pid_s} ({what})")
    PIDFILE.unlink(missing_ok=True)
    return killed


def tree_pids(pid: int) -> list[int]:
    """`pid` and every descendant (whatever their session or process group)."""
    if psutil is None:
        return [pid]
    try:
        proc = psutil.Process(pid)
        return [pid] + [c.pid for c in proc.children(recursive=True)]
    except psutil.Error:
        return []


def kill_tree(pid: int, sig: int = signal.SIGKILL, parent_first: bool = False) -> None:
    """Send `sig` to `pid` and all its descendants: children first (before the parent dies and they
    are re-parented), or the parent first (a node loss: the parent must not see its children die)."""
    pids = tree_pids(pid)
    for p in (pids if parent_first else reversed(pids)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


def stop_proc(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """SIGTERM the process tree, SIGKILL what is left after `grace_s`, and reap the process."""
    if proc.poll() is None:
        pids = tree_pids(proc.pid)
        kill_tree(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        for p in pids:  # descendants may outlive the parent (orphans of a killed parent)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    else:
        kill_tree(proc.pid)


def pid_of_tree_containing(pid: int, roots: dict[str, int]) -> str | None:
    """Which of `roots` (name -> root pid) has `pid` in its process tree."""
    for name, root in roots.items():
        if pid in tree_pids(root):
            return name
    return None


# --- a private redis-server ----------------------------------------------------------------------
def port_free(port: int) -> bool:
    """As `taskherd.deploy.local.services.port_free`, written again: this module is also imported in the
    peers' venv, which has no taskherd."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisServer:
    """`redis-server` on 127.0.0.1:PORT with its data in DIR, no RDB snapshots, and an AOF fsynced as
    `appendfsync` says (None: no AOF). The peers get everysec, what their users run with AOF on;
    taskherd's own Redis runs `always` (deploy/local/services.REDIS_DURABILITY), a cost the peers
    are spared."""

    def __init__(self, port: int, data_dir: Path, appendfsync: str | None = "everysec",
                 extra: tuple[str, ...] = ()) -> None:
        self.port, self.data_dir, self.appendfsync, self.extra = port, data_dir, appendfsync, extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> RedisServer:
        if not port_free(self.port):
            raise BenchError(f"redis for the peers: port {self.port} is in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--save", "", "--appendonly", "yes" if self.appendfsync else "no",
                "--appendfsync", self.appendfsync or "everysec",
                "--daemonize", "no", "--protected-mode", "no", "--logfile", str(self.data_dir / "redis.log"),
                *self.extra]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True, cwd=self.data_dir)
        record_pid(self.proc.pid, f"redis-server :{self.port}")
        wait_for(lambda: self._ping(), timeout, f"redis-server on port {self.port} answering")
        return self

    def _ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"redis-server on port {self.port} exited ({self.proc.returncode}); "
                             f"see {self.data_dir / 'redis.log'}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_proc(self.proc, 10)
            self.proc = None


def command_output(argv: list[str], timeout: float = 20.0) -> str:
    """First line of a version command's output, or what went wrong."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else f"(no output, exit {out.returncode})"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(unavailable: {exc})"


def dump_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)



def save_result(kind: str, report: Any) -> Path:
    """Write one side bench's report to bench/results/KIND-TIMESTAMP.json and say where."""
    path = RESULTS / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    dump_json(path, report)
    log(f"written to {path}")
    return path
