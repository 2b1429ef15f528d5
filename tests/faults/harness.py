"""A cluster of real pods to break, and one job run through it with its fault marked in time.

`FaultCluster` starts the manager and worker pods as child processes (`taskherd run`, the same
`Pod` that `taskherd up` uses) with test timings, on the session's real services; with `hooked=True`
each pod runs under `tests.faults.podhook`, so a test can make one of its actors crash.
`JobRun` submits a job, marks when its fault started and healed, and waits for the job with
deadlines, noting the first task archived after the heal.

With `auth=True` (or TASKHERD_FAULTS_AUTH=1 for every case) the pods require a bearer token (one token
with every scope, `FAULTS_TOKEN`, which the cluster's client sends) and admit only this suite's
executors through `[security]`: the fault matrix must hold as it does with an open API.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from taskherd.client import Client, ClientError
from taskherd.config import from_dict
from taskherd.config.settings import Settings
from taskherd.config.toml_out import dumps
from taskherd.deploy.local.cluster import Pod, stop_pods
from tests.faults.podhook import HOOK_DIR_ENV
from tests.helpers import Services, wait_until

REPO = Path(__file__).resolve().parents[2]
FUNCS = "tests.faults.funcs"
EXE_TASK = str(Path(__file__).with_name("exe_task.py"))
FAULTS_TOKEN = f"faults-{secrets.token_hex(16)}"
"""The API token of a cluster with auth on (this session's own)."""
AUTH_ENV = "TASKHERD_FAULTS_AUTH"
"""Set to 1 to run every case with auth on."""


def fault_settings(base: Settings, slots: int = 2, auth: bool = False) -> Settings:
    """The e2e test timings (seconds, not minutes, to recover), plus a 5 s NSQ message time-out so a
    dead consumer's unacknowledged messages come back within the case, and a 2 s drain grace. With
    `auth`, a token with every scope and allowlists admitting exactly this suite's executors."""
    data = base.model_dump()
    if auth:
        data["auth"] = {"tokens": [{"name": "faults", "sha256": hashlib.sha256(FAULTS_TOKEN.encode()).hexdigest(),
                                    "scopes": ["read", "submit", "admin"]}]}
        data["security"] = {"python_allow": ["tests.faults"], "exe_allow": [sys.executable],
                            "http_allow": ["http://127.0.0.1:"]}
    data["manager"].update(watcher_interval_s=0.5, republish_after_s=3.0)
    data.setdefault("retry", {}).update(backoff_base_s=0.2, backoff_max_s=1.0)
    data["worker"].update(slots=slots, lease_renew_s=0.5, lease_ttl_s=3.0, drain_grace_s=2.0)
    data["nsq"].update(lookupd_poll_interval_s=1.0, msg_timeout_s=5.0)
    data["registry"].update(heartbeat_s=0.5, node_ttl_s=1.0)
    if data["redis"]["cluster_nodes"]:  # a submit is answered once a replica holds it (test_redis_failover)
        data["redis"]["wait_replicas"] = 1
    data["log"]["level"] = os.environ.get("TASKHERD_FAULTS_LOG_LEVEL", "INFO")  # DEBUG for a post-mortem
    return from_dict(data)


class PodLog:
    """Where every pod's output goes: a file (kept for the report) and lines in memory (to grep)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self.lines: list[str] = []

    def write(self, s: str) -> int:
        with self._lock:
            if not self._file.closed:  # a pod's last lines may trail its stop
                self._file.write(s)
            self.lines.extend(s.splitlines())
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()

    def grep(self, *needles: str) -> list[str]:
        with self._lock:
            return [line for line in self.lines if all(n in line for n in needles)]

    def close(self) -> None:
        with self._lock:
            self._file.close()


class FaultPod(Pod):
    """A `Pod` started from the repository root; optionally under the fault-injection hook."""

    def __init__(self, name: str, role: str, config: Path, out: PodLog, hook_dir: Path | None) -> None:
        super().__init__(name, role, config, out)
        self.hook_dir = hook_dir
        self.doomed = False
        """The test stops or kills this pod on purpose: its exit is expected."""
        self._seq = 0

    def start(self) -> None:
        module = "tests.faults.podhook" if self.hook_dir else "taskherd"
        argv = [sys.executable, "-m", module, "--config", str(self.config), "run", "--role", self.role]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.hook_dir:
            self.hook_dir.mkdir(parents=True, exist_ok=True)
            env[HOOK_DIR_ENV] = str(self.hook_dir)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                     start_new_session=True, env=env)
        threading.Thread(target=self._stream, args=(self.proc,), daemon=True).start()

    def hook(self, do: str, timeout: float = 15.0, **args: Any) -> dict[str, Any]:
        """Ask the pod's hook to `do` something (see podhook) and return its answer."""
        assert self.hook_dir and self.proc, "not a hooked pod"
        self._seq += 1
        tmp = self.hook_dir / ".command.json"
        tmp.write_text(json.dumps({"seq": self._seq, "do": do, **args}))
        tmp.rename(self.hook_dir / "command.json")
        reply = self.hook_dir / f"reply-{self._seq}.json"
        self.proc.send_signal(signal.SIGUSR1)
        wait_until(reply.exists, timeout=timeout, message=f"{self.name}: hook answered {do}")
        return json.loads(reply.read_text())

    def runner_children(self) -> list[psutil.Process]:
        """Every process below this pod (runner children and what they started)."""
        try:
            return psutil.Process(self.proc.pid).children(recursive=True) if self.proc else []
        except psutil.NoSuchProcess:
            return []


class FaultCluster:
    def __init__(self, services: Services, tmp: Path, *, hooked: bool = False, slots: int = 2,
                 auth: bool | None = None) -> None:
        self.services, self.tmp, self.hooked = services, tmp, hooked
        self.auth = os.environ.get(AUTH_ENV) == "1" if auth is None else auth
        self.settings = fault_settings(services.settings, slots, self.auth)
        self.config = tmp / "pods.toml"
        self.config.write_text(dumps(self.settings))
        self.log = PodLog(tmp / "pods.log")
        self.client = Client(f"http://{self.settings.api.host}:{self.settings.api.port}", timeout=10,
                             token=FAULTS_TOKEN if self.auth else "")
        self.pods: list[FaultPod] = []

    def start(self, workers: int = 2) -> FaultCluster:
        self.add("manager", "manager")
        for i in range(workers):
            self.add(f"worker-{i + 1}", "worker")
        wait_until(lambda: len(self.client.nodes()) == 1 + workers, timeout=90, ignore=(ClientError,),
                   message=f"manager and {workers} workers registered (log: {self.log.path})")
        return self

    def add(self, name: str, role: str) -> FaultPod:
        hook_dir = self.tmp / "hook" / f"{name}-{len(self.pods)}" if self.hooked else None
        pod = FaultPod(name, role, self.config, self.log, hook_dir)
        pod.start()
        self.pods.append(pod)
        return pod

    def pod(self, name: str) -> FaultPod:
        """The newest pod of that name (a restarted manager replaces the killed one)."""
        return [p for p in self.pods if p.name == name][-1]

    def workers(self) -> list[FaultPod]:
        return [p for p in self.pods if p.role == "worker" and not p.exited()]

    def unexpected_exits(self) -> list[str]:
        return [f"{p.name} (exit {p.proc.returncode})" for p in self.pods if p.exited() and not p.doomed]

    def wait_api(self, timeout: float = 60) -> None:
        wait_until(lambda: self.client.ready().get("ok"), timeout=timeout, ignore=(ClientError,),
                   message="the API is ready")

    def stop(self) -> None:
        stop_pods(self.pods, self.settings.worker.drain_grace_s + 10)
        self.client.close()
        self.log.close()


def healthy_sleep(i: int) -> float:
    """20-50 ms, spread deterministically over the tasks."""
    return round(0.02 + 0.03 * ((i * 37) % 100) / 100, 3)


class JobRun:
    """One job of the case: what was accepted, when the fault began and healed, when it ended."""

    def __init__(self, cluster: FaultCluster, case: str, tmp: Path) -> None:
        self.cluster, self.client, self.case = cluster, cluster.client, case
        self.job = "faults-" + re.sub(r"[^A-Za-z0-9_.:-]+", "-", case)
        self.calls = tmp / "calls.jsonl"
        self.locks = tmp / "locks"
        self.locks.mkdir(exist_ok=True)
        self.expected: dict[str, str] = {}
        """Accepted task id -> the final state it must reach."""
        self.started = time.time()
        self.t_fault: float | None = None
        self.t_heal: float | None = None
        self.count_at_heal = 0
        self.first_after_heal: float | None = None
        self.done_at: float | None = None

    # --- tasks --------------------------------------------------------------------------------------
    def payload(self, task_id: str, sleep_s: float, **extra: Any) -> dict[str, Any]:
        return {"id": task_id, "log": str(self.calls), "locks": str(self.locks), "sleep_s": sleep_s, **extra}

    def task(self, task_id: str, task_type: str, sleep_s: float, **options: Any) -> dict[str, Any]:
        extra = options.pop("payload", {})
        return {"id": task_id, "type": task_type, "job": self.job, "payload": self.payload(task_id, sleep_s, **extra),
                **options}

    def healthy(self, n: int, prefix: str = "h", task_type: str = "work") -> list[dict[str, Any]]:
        return [self.task(f"{prefix}-{i:04d}", task_type, healthy_sleep(i)) for i in range(n)]

    def submit(self, tasks: list[dict[str, Any]], final: str = "succeeded") -> None:
        answers = self.client.submit(tasks)
        assert [a["status"] for a in answers] == ["created"] * len(tasks), answers
        self.expected.update({a["id"]: final for a in answers})

    # --- progress -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any] | None:
        try:
            return self.client.job(self.job)
        except ClientError:
            return None

    def archived(self) -> int | None:
        status = self.status()
        return None if status is None else sum(status["counts"][s] for s in ("succeeded", "failed", "cancelled"))

    def wait_archived(self, fraction: float = 0.3, timeout: float = 90) -> int:
        """Until `fraction` of the accepted tasks are archived: the fixed point where faults strike."""
        want = max(1, int(len(self.expected) * fraction))
        return wait_until(lambda: (n := self.archived()) is not None and n >= want and n, timeout=timeout,
                          message=f"{want} tasks of {self.job} archived (pods log: {self.cluster.log.path})")

    def fault(self) -> None:
        self.t_fault = time.time()

    def healed(self) -> None:
        """The fault is over (for a kill without restart: the same instant as the fault)."""
        self.t_heal = time.time()
        count = self.archived()
        self.count_at_heal = count if count is not None else 0

    def hold(self, seconds: float, check: Any = None) -> None:
        """Keep the fault on for `seconds`, watching `check()` (it raises if the system misbehaves).

        The one timed wait of the suite: it is the fault's length, not a wait for a state."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if check is not None:
                check()
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def wait_done(self, timeout: float = 120) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            exited = self.cluster.unexpected_exits()
            assert not exited, f"pod(s) exited on their own, the job cannot finish: {exited} " \
                               f"(pods log: {self.cluster.log.path})"
            status = self.status()
            if status is None:
                return None
            n = sum(status["counts"][s] for s in ("succeeded", "failed", "cancelled"))
            if self.t_heal is not None and self.first_after_heal is None and n > self.count_at_heal:
                self.first_after_heal = time.time()
            return status if status["done"] else None

        status = wait_until(done, timeout=timeout, interval=0.05,
                            message=f"job {self.job} done (last: {self.status()}; pods log: {self.cluster.log.path})")
        self.done_at = time.time()
        if self.t_heal is not None and self.first_after_heal is None:
            self.first_after_heal = self.done_at
        return status


# --- processes --------------------------------------------------------------------------------------
def is_dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_dead(pids: list[int], timeout: float, what: str) -> None:
    wait_until(lambda: all(is_dead(p) for p in pids), timeout=timeout,
               message=f"{what}: pids {pids} gone (alive: {[p for p in pids if not is_dead(p)]})")


def describe(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[-80:]
    except psutil.Error:
        return "?"


def kill_leftovers(pids: set[int]) -> list[int]:
    """SIGKILL processes our executors started that are still alive (a failed case must not leak them
    into the next); returns the ones that were alive."""
    alive = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and _ours(proc):
                proc.kill()
                alive.append(pid)
        except psutil.Error:
            pass
    return alive


def _ours(proc: psutil.Process) -> bool:
    """Only executor processes of this suite (a pid may have been reused by something else)."""
    cmd = " ".join(proc.cmdline())
    return "taskherd.runners.child" in cmd or "exe_task.py" in cmd or cmd.startswith("sleep") or "sleep " in cmd


def running_on(pod: FaultPod, calls: list[Any]) -> list[Any]:
    """The calls of `calls` (history.Call) still open in a process below `pod`."""
    pids = {p.pid for p in pod.runner_children()}
    return [c for c in calls if c.end is None and c.pid in pids]


# --- NSQ, spoken directly -----------------------------------------------------------------------------
def nsq_read(address: str, topic: str, channel: str, count: int, timeout: float = 30.0) -> list[bytes]:
    """Consume `count` messages of `topic` over nsqd's TCP protocol (V2), acknowledging each.

    A few lines of the wire protocol rather than pynsq: pynsq wants its own IOLoop thread, and the test
    only needs to look at what landed on a topic."""
    import socket
    import struct

    host, port = address.rsplit(":", 1)
    bodies: list[bytes] = []
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        def frame() -> tuple[int, bytes]:
            size = struct.unpack(">l", _recv(sock, 4))[0]
            data = _recv(sock, size)
            return struct.unpack(">l", data[:4])[0], data[4:]

        sock.sendall(b"  V2" + f"SUB {topic} {channel}\n".encode())
        kind, data = frame()
        assert (kind, data) == (0, b"OK"), (kind, data)
        sock.sendall(f"RDY {count}\n".encode())
        while len(bodies) < count:
            kind, data = frame()
            if kind == 0 and data == b"_heartbeat_":
                sock.sendall(b"NOP\n")
            elif kind == 1:
                raise AssertionError(f"nsqd error: {data!r}")
            elif kind == 2:
                bodies.append(data[26:])  # timestamp (8), attempts (2), id (16), body
                sock.sendall(b"FIN " + data[10:26] + b"\n")
        sock.sendall(b"CLS\n")
    return bodies


def _recv(sock: Any, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("nsqd closed the connection")
        out += chunk
    return out
