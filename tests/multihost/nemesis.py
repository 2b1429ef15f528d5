"""What the manager-host cases and the soak share: a fault-aware client, the active watcher, Redis's
view of every watcher action, the faults themselves, and putting a cluster back together.

- `Managers`: clients of every manager; a call goes to the first that answers (a killed or cut-off
  manager is skipped), as a load balancer in front of the manager Deployment would.
- `WatcherLog`: every requeue or promotion Redis receives, with the caller's address (Redis MONITOR
  on every node of a Redis Cluster: a script runs on the master of its job's slot, and a node failed
  over and back is watched again), beside the takeovers the managers log ("now the active
  TimeoutWatcher"). A call that reached Redis at or after its lease fence (an argument of the call)
  was refused by the script, nothing done: it is counted in `refused`, not in `calls`.
  `acting_out_of_turn()` is each requeue or promotion made by a manager that was not the latest to
  take the lease: two watchers acting at once. Redis's clock and the pods' are the one machine's.
- `FAULTS`: kind -> inject, hold, heal; each returns a `Fault` with its window. `faults(cluster)`: those
  that apply to it (a Redis master's kill on a Redis Cluster only).
- `restore()`: heal, resume, start every service, Redis node and pod that is down, wait until the
  Redis Cluster is whole again and every pod registered.

`REDIS_CLUSTER`: the multihost suite and the soak run Redis as a Redis Cluster of 3 masters + 3
replicas on three hosts (tests/hosts/redis_nodes.py), as production would; `TASKHERD_HOSTS_REDIS=single`
runs them on one Redis on the infra host instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from taskherd.client import Client, ClientError
from taskherd.store import keys
from tests.helpers import wait_until
from tests.hosts import PORTS, Cluster, Host, redis_nodes
from tests.hosts.net import HostsError, Proc
from tests.multihost.checker import EXE, log_events

WATCHER_LEASE = keys.WATCHER_LEASE
WATCHER_SCRIPTS = {"requeue": 1, "promote": 2}
"""The scripts only the active TimeoutWatcher calls (requeue an expired lease, promote a due retry),
each with the index of its lease fence among its arguments."""
ERRORS = (ClientError, OSError, http.client.HTTPException)

EXECUTOR = {"kind": "exe", "target": [sys.executable, "-c", EXE], "timeout_s": 60, "max_attempts": 8}
ANALYZER = {"kind": "python", "target": "tests.multihost.soak_funcs:tree"}
REDIS_CLUSTER = os.environ.get("TASKHERD_HOSTS_REDIS", "cluster") != "single"
OVERRIDES = {"security": {"python_allow": ["taskherd.demo", "tests.multihost"]}}
"""Over the ConfigMap: admit the soak's analyzer module (auth is on, so an empty list refuses python)."""


class Managers:
    """Every manager's API; each call goes to the first that answers."""

    def __init__(self, cluster: Cluster) -> None:
        self.clients = [Client(cluster.api_url(h), timeout=10, token=cluster.token or "") for h in cluster.managers]
        for c in self.clients:
            c.submit_deadline = 30

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        last: BaseException | None = None
        for client in self.clients:
            try:
                return getattr(client, method)(*args, **kwargs)
            except ClientError as exc:
                if exc.status is not None and exc.status < 500 and exc.status != 429:
                    raise
                last = exc
            except ERRORS as exc:
                last = exc
        raise ClientError(None, f"no manager answered {method}: {last}")

    def wait(self, job: str, timeout: float) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            status: dict[str, Any] = self.call("job", job, wait_s=1.0)
            return status if status.get("done") else None
        return wait_until(done, timeout=timeout, ignore=ERRORS, message=f"job {job} done")

    def close(self) -> None:
        for c in self.clients:
            c.close()


def register(managers: Managers) -> None:
    """The soak's executor (type `soak`) and the tree analyzer."""
    managers.call("add_executor", "soak", EXECUTOR, replace=True)
    managers.call("add_analyzer", "soak", ANALYZER, replace=True)


def redis_of(cluster: Cluster) -> Any:
    """The run's Redis from the harness: one server's client, or a RedisCluster (follows a failover)."""
    return cluster.redis()


def active_manager(cluster: Cluster, r: redis.Redis) -> Host | None:
    """The host whose manager pod holds the watcher lease (node ids end with the pod's pid)."""
    node = r.get(WATCHER_LEASE)
    if not node:
        return None
    pid = int(str(node).rsplit("-", 1)[1])
    return next((h for h in cluster.managers if cluster.pods[h.name].pid == pid and cluster.pods[h.name].alive()), None)


def takeovers(cluster: Cluster) -> list[tuple[float, str]]:
    """(when, host address) of every lease take the managers logged, in time order."""
    out = [(e["ts"], h.ip) for h in cluster.managers
           for e in log_events(cluster.pods[h.name].log, "now the active TimeoutWatcher")]
    return sorted(out)


class WatcherLog:
    """Redis MONITOR, kept to the watcher scripts' calls: (Redis time, caller address, script)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        src = resources.files("taskherd.store")
        self.shas = {hashlib.sha1(src.joinpath(f"lua/{n}.lua").read_text().encode()).hexdigest(): n
                     for n in WATCHER_SCRIPTS}
        self.calls: list[tuple[float, str, str]] = []
        self.refused: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._monitors: dict[str, Any] = {}
        # A replica's MONITOR shows its master's effects, never the EVALSHA: no call is seen twice.
        addresses = cluster.redis_addresses or [f"{cluster.infra.ip}:{PORTS['redis']}"]
        self._threads = [threading.Thread(target=self._run, args=(a,), name=f"watcher-log-{a}", daemon=True)
                         for a in addresses]

    def start(self) -> WatcherLog:
        for t in self._threads:
            t.start()
        return self

    def _run(self, address: str) -> None:
        """MONITOR one node, again whenever the connection breaks (a node killed and restarted)."""
        while not self._stop.is_set():
            with contextlib.suppress(redis.RedisError, OSError, ValueError, AttributeError):
                with redis_nodes.client(address, timeout=30).monitor() as m:
                    self._monitors[address] = m
                    for c in m.listen():
                        if self._stop.is_set():
                            return
                        parts = c["command"].split(" ")
                        if parts[0] == "EVALSHA" and len(parts) > 2 and parts[1] in self.shas:
                            name = self.shas[parts[1]]
                            fence_ms = int(parts[3 + int(parts[2]) + WATCHER_SCRIPTS[name]])
                            acted = fence_ms == 0 or c["time"] * 1000 < fence_ms
                            (self.calls if acted else self.refused).append((c["time"], c["client_address"], name))
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()  # a node's next command ends its thread; a quiet one's connection is closed
        for m in list(self._monitors.values()):
            with contextlib.suppress(Exception):
                m.connection.disconnect()
        for t in self._threads:
            t.join(10)

    def acting_out_of_turn(self) -> list[str]:
        """Requeues and promotions by a manager other than the latest to take the lease."""
        taken = takeovers(self.cluster)
        out = []
        for t, addr, name in list(self.calls):
            holder = next((ip for ts, ip in reversed(taken) if ts <= t), None)
            if holder != addr:
                out.append(f"{name} from {addr} at {t:.3f} while {holder} held the lease")
        return out

    def by(self, addr: str, after: float) -> list[tuple[float, str, str]]:
        return [c for c in self.calls if c[1] == addr and c[0] > after]


# --- faults -----------------------------------------------------------------------------------------
@dataclass
class Fault:
    kind: str
    host: str
    ip: str
    start: float
    end: float = 0.0
    note: str = ""
    slots: tuple[tuple[int, int], ...] = ()
    """A Redis master's kill: the slots the killed master served."""


def _hold(stop: threading.Event, rng: random.Random, lo: float, hi: float) -> float:
    """Keep a fault for U(lo, hi) s (or less if the run is stopping); the time kept."""
    held = rng.uniform(lo, hi)
    stop.wait(held)
    return held


def _restart_pod(cluster: Cluster, host: Host, role: str) -> None:
    cluster.start_pod(host, role)


def start_service(cluster: Cluster, host: Host, name: str) -> None:
    svc = cluster.services[host.name]
    svc.start_one(name)
    host.procs[name] = Proc(name, svc._procs[name], svc.log_path(name))


def worker_cut(c: Cluster, rng: random.Random, stop: threading.Event) -> Fault:
    h = rng.choice(c.workers)
    f = Fault("worker_cut", h.name, h.ip, time.time())
    h.cut()
    _hold(stop, rng, 2, 9)
    h.heal()
    f.end = time.time()
    return f


def worker_pause(c: Cluster, rng: random.Random, stop: threading.Event) -> Fault:
    h = rng.choice(c.workers)
    f = Fault("worker_pause", h.name, h.ip, time.time())
    h.pause()
    _hold(stop, rng, 2, 9)
    h.resume()
    f.end = time.time()
    return f


def worker_kill(c: Cluster, rng: random.Random, stop: threading.Event) -> Fault:
    """A worker machine lost (every process SIGKILLed) and replaced: Kubernetes starts the pod again."""
    h = rng.choice(c.workers)
    f = Fault("worker_kill", h.name, h.ip, time.time())
    h.kill()
    _hold(stop, rng, 1, 4)
    _restart_pod(c, h, "worker")
    f.end = time.time()
    return f


def manager_kill(c: Cluster, rng: random.Random, stop: threading.Event) -> Fault:
    """The active manager's pod SIGKILLed, restarted a few seconds later (its nsqd stays up)."""
    h = active_manager(c, redis_of(c)) or rng.choice(c.managers)
    f = Fault("manager_kill", h.name, h.ip, time.time())
    c.pods[h.name].kill()
    _hold(stop, rng, 1, 5)
    _restart_pod(c, h, "manager")
    f.end = time.time()
    return f


def manager_cut(c: Cluster, rng: random.Random, stop: threading.Event) -> Fault:
    """The active manager's host (pod and nsqd) cut off, past the watcher's lease, then healed."""
    h = active_manager(c, redis_of(c)) or rng.choice(c.managers)
    f = Fault("manager_cut", h.name, h.ip, time.time())
    h.cut()
    _hold(stop, rng, 4, 10)
    h.heal()
    f.end = time.time()
    return f


def nsqd_lost(c: Cluster, rng: random.Random, stop: threading.Event) -> Fault:
    """An nsqd SIGKILLed with what it held, down for a while, then a new one (empty) on that host."""
    h = rng.choice(c.managers)
    f = Fault("nsqd_lost", h.name, h.ip, time.time())
    c.services[h.name].kill_one("nsqd")
    _hold(stop, rng, 4, 12)
    start_service(c, h, "nsqd")
    f.end = time.time()
    return f


def nsqd_restart(c: Cluster, rng: random.Random, stop: threading.Event) -> Fault:
    """An nsqd stopped cleanly (it writes its queues to disk) and started again at once."""
    h = rng.choice(c.managers)
    f = Fault("nsqd_restart", h.name, h.ip, time.time())
    c.services[h.name].stop_one("nsqd")
    start_service(c, h, "nsqd")
    f.end = time.time()
    return f


def mariadb_stop(c: Cluster, rng: random.Random, stop: threading.Event) -> Fault:
    f = Fault("mariadb_stop", "infra", c.infra.ip, time.time())
    c.services["infra"].stop_one("mariadb")
    _hold(stop, rng, 4, 15)
    start_service(c, c.infra, "mariadb")
    f.end = time.time()
    return f


def redis_master_kill(c: Cluster, rng: random.Random, stop: threading.Event) -> Fault:
    """A Redis Cluster master SIGKILLed (its replica is promoted after the node time-out), started again a
    while later: it rejoins as the replica of the one promoted in its place (or, back within the
    time-out, as the master it was)."""
    victim = rng.choice(redis_nodes.masters(c.redis_addresses))
    h = c.redis_host_of(victim.port)
    f = Fault("redis_master_kill", h.name, h.ip, time.time(), note=victim.address, slots=victim.slots)
    c.kill_redis_node(victim.port)
    _hold(stop, rng, 2, 10)
    c.start_redis_node(victim.port)
    f.end = time.time()
    return f


FAULTS: dict[str, Callable[[Cluster, random.Random, threading.Event], Fault]] = {
    f.__name__: f for f in (worker_cut, worker_pause, worker_kill, manager_kill, manager_cut, nsqd_lost,
                            nsqd_restart, mariadb_stop, redis_master_kill)}
CLUSTER_ONLY = ("redis_master_kill",)


def faults(cluster: Cluster) -> dict[str, Callable[[Cluster, random.Random, threading.Event], Fault]]:
    """The faults that apply to `cluster`: a master's kill needs a Redis Cluster."""
    return {k: f for k, f in FAULTS.items() if cluster.redis_cluster or k not in CLUSTER_ONLY}


def restore(cluster: Cluster, timeout: float = 90) -> None:
    """Every host healed and resumed, every service and pod running, every pod registered."""
    for host in cluster.net.hosts.values():
        host.resume()
        with contextlib.suppress(HostsError):
            host.heal()
    if cluster.services["infra"].pid("mariadb") is None:
        start_service(cluster, cluster.infra, "mariadb")
    for h in cluster.managers:
        if cluster.services[h.name].pid("nsqd") is None:
            start_service(cluster, h, "nsqd")
    if cluster.redis_cluster:
        for address in cluster.redis_addresses:
            port = int(address.rpartition(":")[2])
            if cluster.redis_node_pid(port) is None:
                cluster.start_redis_node(port, timeout)
        redis_nodes.wait_ok(cluster.redis_addresses, timeout)
    for h in [*cluster.managers, *cluster.workers]:
        if not cluster.pods[h.name].alive():
            _restart_pod(cluster, h, "manager" if h in cluster.managers else "worker")
    r = redis_of(cluster)
    pids = {cluster.pods[h.name].pid for h in [*cluster.managers, *cluster.workers]}

    def registered() -> bool:
        live = r.zrangebyscore(keys.NODES, int(time.time() * 1000), "+inf")
        return pids <= {int(n.rsplit("-", 1)[1]) for n in live}
    wait_until(registered, timeout=timeout, ignore=(redis.RedisError,), message="every pod registered")
    wait_until(lambda: active_manager(cluster, r), timeout=timeout, ignore=(redis.RedisError,),
               message="a manager holding the watcher lease")


def dump(obj: Any) -> str:
    return json.dumps(obj, default=str)
