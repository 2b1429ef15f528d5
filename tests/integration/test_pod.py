"""Pods on the real services: the node registry, supervision inside a running pod, and
`taskherd up` from start to Ctrl-C and back.

Pods run as child processes (`taskherd run`, through `deploy.local.cluster.Pod`), exactly as
`taskherd up` and Kubernetes run them, with test timings: heartbeats every 0.5 s with a 1 s TTL,
3 s leases, a TimeoutWatcher sweeping every 0.5 s.
"""

from __future__ import annotations

import ctypes
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from taskherd.cli import main
from taskherd.client import Client, ClientError
from taskherd.config import Settings, from_dict
from taskherd.config.toml_out import dumps
from taskherd.deploy.local.cluster import Pod
from taskherd.deploy.local.services import ServiceManager
from taskherd.nsq.publisher import Publisher
from taskherd.states import FINAL_STATES
from taskherd.store import keys
from taskherd.store.state_store import StateStore
from tests.helpers import Services, free_block_shift, settings_for_tests, topic_depth, wait_until

PY = "tests.e2e.funcs"
"""Executors the pods' runner children import (the pods run with this checkout as their cwd)."""
HEARTBEAT_S, NODE_TTL_S = 0.5, 1.0


def fast(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """Test timings, with `sections` merged over them (e.g. `supervisor={"max_restarts": 2}`)."""
    data = settings.model_dump()
    data["manager"].update(watcher_interval_s=0.5, republish_after_s=3.0)
    data.setdefault("retry", {}).update(backoff_base_s=0.2, backoff_max_s=1.0)
    data["worker"].update(slots=2, lease_renew_s=0.5, lease_ttl_s=3.0, drain_grace_s=5.0)
    data["nsq"].update(lookupd_poll_interval_s=1.0)
    data["registry"].update(heartbeat_s=HEARTBEAT_S, node_ttl_s=NODE_TTL_S)
    for section, values in sections.items():
        data[section].update(values)
    return from_dict(data)


class PodLog(io.StringIO):
    """Every pod's output, prefixed by pod name; echoed to stderr so a failing test shows it."""

    def write(self, s: str) -> int:
        sys.stderr.write(s)
        return super().write(s)

    def has(self, text: str) -> bool:
        return text in self.getvalue()


@dataclass
class Pods:
    """Starts pods on one config file and stops every one of them when the test ends."""

    settings: Settings
    config: Path
    log: PodLog = field(default_factory=PodLog)
    started: list[Pod] = field(default_factory=list)

    def start(self, name: str, role: str) -> Pod:
        pod = Pod(name, role, self.config, self.log)
        pod.start()
        self.started.append(pod)
        return pod

    def stop_all(self) -> None:
        for pod in self.started:
            pod.stop(15)
        if "client" in self.__dict__:
            self.client.close()

    @cached_property
    def client(self) -> Client:
        return Client(f"http://{self.settings.api.host}:{self.settings.api.port}")


def node_of(settings: Settings, pod: Pod) -> dict[str, str] | None:
    """The live registration whose pid is the pod's, if any."""
    store = StateStore(settings.redis)
    try:
        return next((n for n in store.members.nodes() if n.get("pid") == str(pod.pid)), None)
    finally:
        store.redis.close()


def registered(settings: Settings, pod: Pod, timeout: float = 60) -> dict[str, str]:
    return wait_until(lambda: node_of(settings, pod), timeout=timeout, message=f"pod {pod.name} registered")


@pytest.fixture
def pods(clean: Services, tmp_path: Path) -> Iterator[Callable[..., Pods]]:
    """`pods(**sections)` -> a `Pods` on the session's services with fast timings (+ `sections`)."""
    made: list[Pods] = []

    def make(**sections: dict[str, Any]) -> Pods:
        settings = fast(clean.settings, **sections)
        config = tmp_path / f"pods-{len(made)}.toml"
        config.write_text(dumps(settings))
        made.append(Pods(settings, config))
        return made[-1]

    yield make
    for group in made:
        group.stop_all()


# --- the registry --------------------------------------------------------------------------------------
def test_a_sigkilled_pod_vanishes_from_live_nodes_within_two_heartbeats(pods: Callable[..., Pods]) -> None:
    # Given a worker pod that registered itself
    group = pods()
    pod = group.start("w", "worker")
    node = registered(group.settings, pod)
    assert node["role"] == "worker" and node["slots"] == "2"
    # When it is SIGKILLed (no goodbye)
    os.kill(pod.pid, signal.SIGKILL)
    killed_at, killed = time.time(), time.monotonic()
    assert pod.proc.wait(5) == -signal.SIGKILL
    # Then its registration runs out at most two heartbeats after the kill (the TTL is 2 x heartbeat;
    # 50 ms allow for a heartbeat that was already on its way to Redis) ...
    budget = 2 * HEARTBEAT_S
    store = StateStore(group.settings.redis)
    expires_at = store.redis.zscore(keys.NODES, node["id"]) / 1000
    store.redis.close()
    assert expires_at <= killed_at + budget + 0.05, f"expires {expires_at - killed_at:.3f} s after the kill"
    # ... and it is seen gone then (the slack is for polling on a busy machine, not for the design)
    wait_until(lambda: node_of(group.settings, pod) is None, timeout=budget + 2.0, interval=0.02,
               message="the killed pod gone from live_nodes")
    gone_after = time.monotonic() - killed
    assert gone_after <= budget + 0.5, f"gone {gone_after:.2f} s after SIGKILL, budget {budget} s"


def tgkill(pid: int, tid: int, sig: int) -> None:
    """Send `sig` to thread `tid` of process `pid`. A process-directed signal (`kill`) lands on any
    thread that does not block it; this picks the thread, so a test does not depend on the kernel's
    choice."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tid, sig) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def test_a_sigtermed_pod_deregisters_at_once(pods: Callable[..., Pods]) -> None:
    # Given a pod whose registration would outlive it by two minutes if it did not say goodbye
    group = pods(registry={"heartbeat_s": HEARTBEAT_S, "node_ttl_s": 120.0})
    pod = group.start("w", "worker")
    registered(group.settings, pod)
    # When it is asked to stop (SIGTERM, received by its main thread)
    tgkill(pod.pid, pod.pid, signal.SIGTERM)
    # Then it deregisters and exits 0, long before its TTL could have run out
    wait_until(lambda: node_of(group.settings, pod) is None, timeout=30, message="deregistered on SIGTERM")
    assert pod.proc.wait(30) == 0
    assert group.log.has("deregistered node")


def test_a_sigterm_received_by_any_thread_stops_the_pod(pods: Callable[..., Pods]) -> None:
    # Given a running pod (many threads: actors, the API server, tickers)
    group = pods()
    pod = group.start("w", "worker")
    registered(group.settings, pod)
    # When the kernel hands the pod's SIGTERM to a thread other than the main one
    other = next(t.id for t in psutil.Process(pod.pid).threads() if t.id != pod.pid)
    tgkill(pod.pid, other, signal.SIGTERM)
    # Then the pod still drains and exits 0, as Kubernetes expects of one SIGTERM
    assert pod.proc.wait(15) == 0


def test_cli_nodes_lists_a_live_pod(pods: Callable[..., Pods], capsys: pytest.CaptureFixture[str]) -> None:
    # Given a live worker pod
    group = pods()
    pod = group.start("w", "worker")
    node = registered(group.settings, pod)
    capsys.readouterr()
    # When `taskherd nodes` runs on the same config
    assert main(["--config", str(group.config), "nodes"]) == 0
    # Then it prints a header and the pod's row: id, role, host, pid, slots
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:5] == ["ID", "ROLE", "HOST", "PID", "SLOTS"]
    row = next(r.split() for r in rows if r.startswith(node["id"]))
    assert row[1:5] == ["worker", node["host"], str(pod.pid), "2"]


# --- supervision inside a running pod ------------------------------------------------------------------
@pytest.fixture
def herd(pods: Callable[..., Pods]) -> Pods:
    """A manager pod and a worker pod, both registered, with an `echo` and a `sleepy` executor."""
    group = pods()
    manager, worker = group.start("manager", "manager"), group.start("worker", "worker")
    registered(group.settings, manager)
    registered(group.settings, worker)
    client = group.client
    wait_until(lambda: client.ready(), timeout=30, ignore=(ClientError,), message="manager API ready")
    client.add_executor("echo", {"kind": "python", "target": f"{PY}:echo"})
    client.add_executor("sleepy", {"kind": "python", "target": f"{PY}:sleepy"})
    return group


def final(client: Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
    """The task once it reached a final state."""
    def ended() -> dict[str, Any] | None:
        task = client.task(task_id)
        return task if task["state"] in FINAL_STATES else None
    return wait_until(ended, timeout=timeout, ignore=(ClientError,), message=f"task {task_id} final")


def runner_children(pod: Pod) -> list[psutil.Process]:
    """The pod's python runner children (one per slot that has run a python task)."""
    found = []
    for proc in psutil.Process(pod.pid).children(recursive=True):
        try:
            if "taskherd.runners.child" in proc.cmdline():
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def gone(proc: psutil.Process) -> bool:
    """The process exited (a zombie counts: it runs nothing)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_garbage_task_message_is_dead_lettered_and_the_pod_keeps_working(herd: Pods) -> None:
    settings, client = herd.settings, herd.client
    # When a message that names no task lands on the tasks topic
    Publisher(settings.nsq).publish(settings.nsq.tasks_topic, [b"\x00not a task ref"])
    # Then it goes to the dead-letter topic, once, and no actor crashed over it
    wait_until(lambda: topic_depth(settings, settings.nsq.deadletter_topic) == 1, timeout=20,
               message="one message on the dead-letter topic")
    assert not herd.log.has("restarting child")
    # And the pod still runs real work
    client.submit({"id": "after-garbage", "type": "echo", "job": "g", "payload": {"n": 1}})
    assert final(client, "after-garbage")["state"] == "succeeded"
    assert topic_depth(settings, settings.nsq.deadletter_topic) == 1
    assert not any(p.exited() for p in herd.started)


def test_exe_tasks_longer_than_a_lease_each_run_once(pods: Callable[..., Pods]) -> None:
    """An exe runs inside the slot's start: the previous task's outcome must be recorded before it,
    not after (it waited the whole run, its lease expired, the task ran again and the first result
    was fenced: found on the many-hosts harness)."""
    group = pods(worker={"slots": 1})
    manager, worker = group.start("manager", "manager"), group.start("worker", "worker")
    registered(group.settings, manager)
    registered(group.settings, worker)
    client = group.client
    wait_until(lambda: client.ready(), timeout=30, ignore=(ClientError,), message="manager API ready")
    ttl = group.settings.worker.lease_ttl_s
    sleeper = [sys.executable, "-c", f"import json,sys,time; time.sleep({ttl + 1}); print(json.dumps(json.load(sys.stdin)))"]
    client.add_executor("long", {"kind": "exe", "target": sleeper, "timeout_s": 60})
    # When three tasks, each longer than a lease, queue for the one slot
    client.submit([{"id": f"long-{i}", "type": "long", "job": "lj", "payload": {"i": i}} for i in range(3)])
    status = client.wait("lj", timeout=90)
    # Then each ran once and succeeded: no lease expired under a finished task, nothing was fenced
    assert status["counts"]["succeeded"] == 3 and status["fenced"] == 0, status
    assert [len(final(client, f"long-{i}")["executions"]) for i in range(3)] == [1, 1, 1]


def test_a_target_the_worker_cannot_import_fails_its_tasks_and_is_logged_once(herd: Pods) -> None:
    client = herd.client
    # Given an executor whose module no pod can import (stored as is, as a spec registered with the
    # target check off would be)
    StateStore(herd.settings.redis).register("executor", "ghost", {"id": "ghost", "kind": "python",
                                                                    "target": "no_such_module_xyz:fn"}, False)
    # When three of its tasks run
    client.submit({"tasks": [{"id": f"ghost-{i}", "type": "ghost", "job": "gh", "payload": {}} for i in range(3)]})
    # Then each fails at once with the reason, and the worker says so once, at WARNING
    for i in range(3):
        task = final(client, f"ghost-{i}")
        assert (task["state"], task["attempts"]) == ("failed", 1)
        assert task["error"].startswith('cannot load "no_such_module_xyz:fn": ModuleNotFoundError')
    warnings = [line for line in herd.log.getvalue().splitlines()
                if "WARNING" in line and "cannot load \"no_such_module_xyz:fn\"" in line]
    assert len(warnings) == 1 and "PYTHONPATH" in warnings[0], warnings


def test_a_sigkilled_runner_child_fails_the_attempt_and_the_retry_succeeds(herd: Pods, tmp_path: Path) -> None:
    client = herd.client
    worker = next(p for p in herd.started if p.role == "worker")
    client.add_executor("marked", {"kind": "python", "target": f"{PY}:marker_sleep"})
    # Given a long task running in a worker slot's python child (which writes its pid: each slot has a
    # warm child, and only one of them runs the task)
    pidfile = tmp_path / "pid"
    client.submit({"id": "long", "type": "marked", "job": "k", "payload": {"sleep_s": 3.0, "pidfile": str(pidfile)}})
    wait_until(lambda: pidfile.exists() and pidfile.read_text(), timeout=30, message="the task running")
    child = psutil.Process(int(pidfile.read_text()))
    assert child in runner_children(worker)
    # When that child is SIGKILLed mid-task
    child.kill()
    # Then the attempt fails as retryable, the retry succeeds, and the pod is still up
    task = final(client, "long")
    assert task["state"] == "succeeded", task
    first, second = task["executions"]
    assert first["status"] == "failed" and "died during the call" in first["error"], first
    assert second["status"] == "ok"
    assert gone(child)
    assert not worker.exited()


def corrupt_task(settings: Settings, job: str, task_id: str) -> Callable[[], None]:
    """Make a waiting task's stored max_attempts unreadable in Redis (state no API can produce; only the
    worker reads it, after the lease, so the Worker raises on it rather than failing the task); returns
    the undo. (The payload no longer serves: its stored text goes to the executor as it is.)"""
    store = StateStore(settings.redis)
    good = store.redis.hget(keys.task(job, task_id), "max_attempts")
    store.redis.hset(keys.task(job, task_id), "max_attempts", "many")

    def restore() -> None:
        store.redis.hset(keys.task(job, task_id), "max_attempts", good)
        store.redis.close()
    return restore


def test_a_crashing_worker_slot_is_restarted_and_its_task_runs_again(pods: Callable[..., Pods]) -> None:
    """A real actor crash from outside: a stored max_attempts that is not a number makes the Worker actor raise
    in its message handler after the lease; pykka calls on_failure and the slots supervisor restarts
    that slot. The orphaned lease expires and the TimeoutWatcher runs the task again."""
    group = pods()
    manager = group.start("manager", "manager")
    registered(group.settings, manager)
    client = group.client
    wait_until(lambda: client.ready(), timeout=30, ignore=(ClientError,), message="manager API ready")
    client.add_executor("fragile", {"kind": "python", "target": f"{PY}:echo"})
    # Given a task waiting for a worker, and its record corrupted in Redis
    client.submit({"id": "victim", "type": "fragile", "job": "c", "payload": {"n": 7}})
    restore = corrupt_task(group.settings, "c", "victim")
    # When a worker pod leases it
    worker = group.start("worker", "worker")
    # Then the slot crashes and its supervisor restarts it
    wait_until(lambda: group.log.has("restarting child worker-"), timeout=30, message="a slot restarted")
    # And once the record is readable again the task runs to success on the same pod
    restore()
    task = final(client, "victim")
    assert task["state"] == "succeeded" and task["result"]["echo"] == {"n": 7}, task
    assert not worker.exited() and node_of(group.settings, worker) is not None
    assert not group.log.has("escalating")


@dataclass
class CrashedSlot:
    group: Pods
    worker: Pod
    warm_child: psutil.Process
    """The python child the slot had kept warm from its previous task when it crashed."""


@pytest.fixture
def crashed_slot(pods: Callable[..., Pods]) -> CrashedSlot:
    """A one-slot worker pod whose only slot crashed while leasing task `victim` (its
    max_attempts not a number) after running a python task; readable again when this returns."""
    group = pods(worker={"slots": 1})
    manager, worker = group.start("manager", "manager"), group.start("worker", "worker")
    registered(group.settings, manager)
    registered(group.settings, worker)
    client = group.client
    wait_until(lambda: client.ready(), timeout=30, ignore=(ClientError,), message="manager API ready")
    client.add_executor("fragile", {"kind": "python", "target": f"{PY}:echo"})
    client.add_executor("sleepy", {"kind": "python", "target": f"{PY}:sleepy"})
    client.submit({"id": "busy", "type": "sleepy", "job": "c", "payload": {"sleep_s": 3.0}})
    wait_until(lambda: client.task("busy")["state"] == "running", timeout=30, message="busy task running")
    warm = wait_until(lambda: runner_children(worker), timeout=15, message="the slot's runner child")[0]
    client.submit({"id": "victim", "type": "fragile", "job": "c", "payload": {"n": 7}})
    restore = corrupt_task(group.settings, "c", "victim")
    wait_until(lambda: group.log.has("restarting child worker-0"), timeout=30, message="the slot restarted")
    restore()
    return CrashedSlot(group, worker, warm)


def test_a_one_slot_pod_runs_the_task_again_soon_after_its_slot_crashed(crashed_slot: CrashedSlot) -> None:
    settings = crashed_slot.group.settings
    soon = settings.worker.lease_ttl_s + 10 * settings.manager.watcher_interval_s + 5
    task = final(crashed_slot.group.client, "victim", timeout=soon)
    assert task["state"] == "succeeded"


def test_a_crashed_slot_leaves_no_python_child_behind(crashed_slot: CrashedSlot) -> None:
    child = crashed_slot.warm_child
    wait_until(lambda: gone(child), timeout=10,
               message=f"the crashed slot's python child {child.pid} gone")


def test_a_pod_past_its_restart_intensity_exits_non_zero(pods: Callable[..., Pods]) -> None:
    """A true escalation: the API port is held by someone else, so the Api actor's on_start fails at
    every restart; past max_restarts the root supervisor gives up and the process exits 1."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        group = pods(api={"port": port}, supervisor={"max_restarts": 2, "max_seconds": 60.0,
                                                     "sweep_interval_s": 0.2})
        # When a manager pod starts on that port
        pod = group.start("manager", "manager")
        # Then it exits 1 after escalating, having deregistered on the way out
        code = wait_until(lambda: pod.proc.poll(), timeout=60, message="the pod exited")
    assert code == 1
    assert group.log.has("escalating") and group.log.has("stopped after escalation")
    wait_until(lambda: node_of(group.settings, pod) is None, timeout=5, message="no registration left")


def test_a_pod_started_before_redis_waits_for_it_instead_of_escalating(pods: Callable[..., Pods],
                                                                        tmp_path: Path) -> None:
    # Given a worker pod whose Redis is not there yet (Kubernetes starts pods in no order): its port is
    # bound but not listening, so connecting is refused and no other process can take the port
    placeholder = socket.socket()
    placeholder.bind(("127.0.0.1", 0))
    group = pods(redis={"port": placeholder.getsockname()[1], "cluster_nodes": []},  # one Redis, late, on either pass
                 supervisor={"max_restarts": 1, "max_seconds": 60.0, "sweep_interval_s": 0.2})
    try:
        pod = group.start("w", "worker")
        # Then it keeps trying well past what its restart intensity would allow for crashes (a crash
        # loop escalates within about 3 s here: a refused connection takes redis-py ~0.7 s to give up)
        with pytest.raises(subprocess.TimeoutExpired):
            pod.proc.wait(10)
    finally:
        placeholder.close()
    # And when Redis comes up, the pod registers without having been restarted
    redis_only = ServiceManager(group.settings, tmp_path / "late-redis")
    redis_only.start_one("redis")
    try:
        registered(group.settings, pod, timeout=30)
        assert not pod.exited()
    finally:
        redis_only.stop_one("redis")


# --- `taskherd up` ---------------------------------------------------------------------------------------
@dataclass
class Up:
    """One `taskherd up` process, in its own process group so SIGINT reaches it as Ctrl-C would."""

    settings: Settings
    config: Path
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "taskherd", "--config", str(self.config), "up", "--workers", "2",
                "--data-dir", str(self.data_dir)]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"taskherd up exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def url(self) -> str:
        return f"http://{self.settings.api.host}:{self.settings.api.port}"

    def ctrl_c(self) -> int:
        """SIGINT as Ctrl-C sends it, and the exit code. The terminal signals the process group, and
        `up` is alone in its group (services and pods lead sessions of their own), so the signal is
        for this process; it is aimed at the main thread because `up`, like a pod, misses a signal
        the kernel hands to another thread (see test_a_sigterm_received_by_any_thread_stops_the_pod)."""
        assert self.proc is not None
        assert os.getpgid(self.proc.pid) == self.proc.pid
        tgkill(self.proc.pid, self.proc.pid, signal.SIGINT)
        return self.proc.wait(90)

    def kill(self) -> None:
        """Last resort for a failed test: nothing of this cluster may outlive it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        family = [self.proc, *psutil.Process(self.proc.pid).children(recursive=True)]
        for proc in family:
            try:
                proc.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        self.proc.wait(10)


def descendants(pid: int) -> list[tuple[int, float, str]]:
    """(pid, create time, start of command line) of every process below `pid`."""
    found = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            found.append((proc.pid, proc.create_time(), " ".join(proc.cmdline()[:3])))
        except psutil.NoSuchProcess:
            pass
    return found


def still_running(recorded: list[tuple[int, float, str]]) -> list[str]:
    """Recorded (pid, create time, name) that still run: same pid and start time, not a zombie."""
    alive = []
    for pid, created, name in recorded:
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {name}")
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture
def up(services: Services, tmp_path: Path) -> Iterator[Up]:
    settings = fast(settings_for_tests(free_block_shift()))  # after `services`: a block clear of its ports
    config = tmp_path / "up.toml"
    config.write_text(dumps(settings))
    cluster = Up(settings, config, tmp_path / "data", tmp_path / "up.log")
    try:
        yield cluster
    finally:
        cluster.kill()
        sys.stderr.write(cluster.log_path.read_text() if cluster.log_path.exists() else "")


def test_taskherd_up_stops_every_process_on_ctrl_c_and_resumes_its_data(up: Up) -> None:
    # Given a local cluster that ran a task, and a Redis key and an NSQ message of our own
    up.start()
    wait_until(up.ready, timeout=180, interval=0.2, message="taskherd up: API /readyz answers 200")
    client = Client(up.url)
    client.add_executor("echo", {"kind": "python", "target": f"{PY}:echo"})
    client.submit({"id": "kept", "type": "echo", "job": "resume", "payload": {"n": 1}})
    assert final(client, "kept")["state"] == "succeeded"
    store = StateStore(up.settings.redis)
    store.redis.set("th-test:resume", "still here")
    Publisher(up.settings.nsq).publish("th-test.resume", [b"kept on disk"])
    store.redis.close()
    recorded = descendants(up.proc.pid)
    names = " ".join(name for _, _, name in recorded)
    for binary in ("nsqd", "nsqlookupd", "redis-server", "mariadbd", "taskherd.runners.child"):
        assert binary in names, f"{binary} not among the cluster's processes: {names}"
    # When Ctrl-C reaches it
    assert up.ctrl_c() == 0
    # Then it exits 0 and no process it started is left
    assert still_running(recorded) == []
    # And a second `up` on the same data dir finds the task, the Redis key and the message again
    up.start()
    wait_until(up.ready, timeout=180, interval=0.2, message="second taskherd up: API /readyz answers 200")
    assert client.task("kept")["state"] == "succeeded"
    assert client.job("resume")["done"] is True
    store = StateStore(up.settings.redis)
    assert store.redis.get("th-test:resume") == "still here"
    store.redis.close()
    assert topic_depth(up.settings, "th-test.resume") == 1
    assert up.ctrl_c() == 0
    client.close()

