"""Hosts as Linux network namespaces on one bridge, the processes each runs, and the faults.

Every object this module makes is named with `PREFIX` (namespaces `thh-NAME`, the bridge `thh-br0`,
host-side veths `thhv-NAME`) and addressed in `SUBNET`.0/24, a range only these namespaces use; the
bridge itself holds `SUBNET`.254, so the harness (in the root namespace) reaches every host. A host's
own interface is `e0` (`ip -n thh-NAME link set e0 down` cuts it off, `up` heals it).

`Network.clean_stale()` removes whatever a killed run left (it kills the processes still running in
a stale namespace first), and `Network.close()` removes everything this run made; only one harness
runs at a time (an exclusive flock on `LOCK`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PREFIX = "thh-"
BRIDGE = f"{PREFIX}br0"
SUBNET = "10.77.0"
BRIDGE_IP = f"{SUBNET}.254"
VETH_PREFIX = "thhv-"
"""Root-side veth of host NAME: `thhv-NAME` (at most 15 characters)."""
LOCK = Path("/run/taskherd-hosts.lock")
_PR_SET_PDEATHSIG = 1


class HostsError(RuntimeError):
    """A step of the harness failed (an ip command, a process that would not start)."""


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS`; its stdout. Raises HostsError naming the command and its stderr."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise HostsError(f"ip {' '.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


def have_root() -> str | None:
    """None when this process can make namespaces; else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veths and a bridge)"
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        return "needs iproute2's `ip`"
    return None


def ns_pids(ns: str) -> list[int]:
    """Every process whose network namespace is `ns` (executors included)."""
    out = ip("netns", "pids", ns, check=False)
    return [int(p) for p in out.split()]


def signal_pids(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _state(pid: int) -> str | None:
    """The state letter of `pid` in /proc (R, S, D, T stopped, Z...); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec: SIGTERM the child when the harness dies (PR_SET_PDEATHSIG survives `ip netns exec`)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


@dataclass
class Proc:
    """One process a host runs (`ip netns exec` execs in place: the pid is the program's own)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL to its process group past `timeout`."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(10)


@dataclass
class Host:
    """One namespace: its name, address, and the processes the harness started on it."""

    name: str
    ip: str
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def ns(self) -> str:
        return PREFIX + self.name

    def spawn(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Proc:
        """Start `argv` on this host, its output appended to `log`."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} {self.name}: {' '.join(argv)}\n".encode())
            out.flush()
            popen = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, **(env or {})}, start_new_session=True,
                                     preexec_fn=_die_with_parent(os.getpid()))
        proc = self.procs[name] = Proc(name, popen, log)
        return proc

    def pids(self) -> list[int]:
        return ns_pids(self.ns)

    # --- faults ---------------------------------------------------------------------------------------
    def cut(self) -> None:
        """The host's link goes down: nothing reaches it, it reaches nothing (its processes keep running)."""
        ip("-n", self.ns, "link", "set", "e0", "down")

    def heal(self) -> None:
        ip("-n", self.ns, "link", "set", "e0", "up")

    def kill(self) -> None:
        """SIGKILL every process on the host, as a machine loss: pods, services, executors."""
        signal_pids(self.pids(), signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(10)

    def pause(self) -> None:
        """SIGSTOP every process on the host (a VM frozen, a stop-the-world pause), pass after pass until
        none runs: a process forked after a pass read the list (an executor starting) is left running
        by it."""
        deadline = time.monotonic() + 10
        while running := [pid for pid in self.pids() if _state(pid) not in ("T", "Z", None)]:
            if time.monotonic() > deadline:
                raise HostsError(f"{self.name}: processes {running} still run after SIGSTOP for 10 s")
            signal_pids(running, signal.SIGSTOP)

    def resume(self) -> None:
        signal_pids(self.pids(), signal.SIGCONT)

    def reachable(self, port: int, timeout: float = 0.5) -> bool:
        """Whether the harness can open a TCP connection to this host's `port`."""
        import socket
        try:
            with socket.create_connection((self.ip, port), timeout=timeout):
                return True
        except OSError:
            return False


class Network:
    """The bridge and the hosts on it. Use as a context manager, or call `close()` in a finally."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self._lock: IO[str] | None = None

    def open(self) -> Network:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock = LOCK.open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.close()
            self._lock = None
            raise HostsError(f"another hosts harness holds {LOCK}; stop it first") from exc
        clean_stale()
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        return self

    def add(self, name: str) -> Host:
        """A new namespace `thh-NAME` with `e0` at the next address, plugged into the bridge."""
        if len(VETH_PREFIX + name) > 15:
            raise HostsError(f"host name {name!r} too long for an interface name")
        host = Host(name, f"{SUBNET}.{len(self.hosts) + 1}")
        veth = VETH_PREFIX + name
        ip("netns", "add", host.ns)
        ip("link", "add", veth, "type", "veth", "peer", "name", "e0", "netns", host.ns)
        ip("link", "set", veth, "master", BRIDGE, "up")
        ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "e0")
        ip("-n", host.ns, "link", "set", "lo", "up")
        ip("-n", host.ns, "link", "set", "e0", "up")
        self.hosts[name] = host
        return host

    def close(self) -> None:
        """Stop every process (SIGCONT first: a paused one), then remove the namespaces and the bridge."""
        for host in self.hosts.values():
            signal_pids(host.pids(), signal.SIGCONT)
            for proc in reversed(list(host.procs.values())):
                proc.stop(timeout=10)
        clean_stale()
        self.hosts.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Network:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def stale() -> list[str]:
    """Namespaces of ours that exist now."""
    return [line.split()[0] for line in ip("netns", "list", check=False).splitlines()
            if line.startswith(PREFIX)]


def clean_stale() -> list[str]:
    """Kill the processes in every `thh-` namespace, delete them and the bridge; what was removed."""
    removed = []
    for ns in stale():
        for _ in range(50):
            pids = ns_pids(ns)
            if not pids:
                break
            signal_pids(pids, signal.SIGKILL)
            time.sleep(0.05)
        ip("netns", "del", ns, check=False)
        removed.append(ns)
    # A deleted namespace's veth can outlive it (the kernel tears namespaces down lazily): delete ours.
    for line in ip("-o", "link", "show", check=False).splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(VETH_PREFIX):
            ip("link", "del", name, check=False)
            removed.append(name)
    if ip("link", "show", BRIDGE, check=False):
        ip("link", "del", BRIDGE, check=False)
        removed.append(BRIDGE)
    return removed
