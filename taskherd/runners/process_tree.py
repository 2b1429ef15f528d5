"""Killing a process with everything it started, and letting another thread do it safely.

A time-out that kills only the direct child leaves its helpers (a shell's `sleep`, a pool's
workers) running and holding pipes, CPU and files; so a kill takes the whole tree: every
descendant psutil can see, then the root, then the root's process group (which catches a grandchild
already orphaned by its parent). Runners start their children with `start_new_session=True`, so that
group is theirs alone.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil


def kill_tree(root: int | psutil.Process, *, group: bool = True, wait_s: float = 5.0) -> list[int]:
    """SIGKILL `root`'s descendants (children first), then `root`, then its group; return the pids signalled.

    Give a `psutil.Process` taken while the root was surely ours when another thread may reap it
    meanwhile: psutil then refuses to touch a pid that was reused. Waits until each is dead or a
    zombie, but never reaps the root: its parent (our Popen) does that, for its exit status.
    """
    proc = _as_process(root)
    if proc is None:
        return []
    return kill_all(descendants(proc.pid) + [proc], pgid=proc.pid if group else None, wait_s=wait_s)


def descendants(pid: int) -> list[psutil.Process]:
    """Everything `pid` started, still running; taken before a process exits, since its orphans leave its tree."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_all(procs: list[psutil.Process], *, pgid: int | None, wait_s: float) -> list[int]:
    """SIGKILL `procs` in order, then the group `pgid`; wait for them to die; return their pids."""
    for proc in procs:
        _sigkill(proc)
    if pgid is not None:
        _killpg(pgid)
    _wait_dead(procs, wait_s)
    return [p.pid for p in procs]


def is_dead(pid: int) -> bool:
    """True when `pid` is gone or a zombie (dead, waiting for its parent to reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _as_process(root: int | psutil.Process) -> psutil.Process | None:
    try:
        proc = root if isinstance(root, psutil.Process) else psutil.Process(root)
        return proc if proc.is_running() else None  # is_running is False for a reused pid
    except psutil.NoSuchProcess:
        return None


def _sigkill(proc: psutil.Process) -> None:
    try:
        proc.kill()  # psutil refuses if the pid now belongs to another process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def _killpg(pgid: int) -> None:
    # Safe even after the leader died: Linux keeps a pid reserved while it names a live group.
    try:
        if os.getpgid(pgid) == pgid:
            os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_dead(procs: list[psutil.Process], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    pending = list(procs)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if not _is_dead(p)]
        if pending:
            time.sleep(0.005)


def _is_dead(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class CallGuard:
    """Lets one other thread abort the call in flight, without racing the thread that runs it.

    The running thread `begin`s a call, `attach`es the pid it started and `end`s the call; `kill`
    signals under the lock through a psutil handle taken at `attach`, so a pid reaped meanwhile (an
    exe that just exited) and reused by someone else is never hit. A `kill` with no call in flight
    does nothing: it is about the current call, not the next one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_call = False
        self._killed = False
        self._proc: psutil.Process | None = None

    def begin(self) -> None:
        with self._lock:
            self._in_call, self._killed, self._proc = True, False, None

    def attach(self, pid: int | psutil.Process) -> bool:
        """Record the (live, unreaped) process to kill; if a kill already came, kill it now and return False."""
        with self._lock:
            # A handle made by the caller is kept as is (reading /proc per call is not free); it is
            # checked for pid reuse when a kill comes (kill_tree).
            self._proc = pid if isinstance(pid, psutil.Process) else _as_process(pid)
            if self._killed and self._proc is not None:
                kill_tree(self._proc, wait_s=0)
            return not self._killed

    def end(self) -> bool:
        """Close the call; True if it was killed."""
        with self._lock:
            self._in_call, self._proc = False, None
            return self._killed

    @property
    def killed(self) -> bool:
        with self._lock:
            return self._killed

    def kill(self) -> bool:
        """Abort the call in flight; False if there was none."""
        with self._lock:
            if not self._in_call:
                return False
            self._killed = True
            if self._proc is not None:
                kill_tree(self._proc, wait_s=0)
        return True
