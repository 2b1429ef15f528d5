"""Helpers shared by tests: wait on a condition with a deadline, and reach the session's services.

Tests never sleep to wait for a state: they poll the state with `wait_until`, which fails with a
message naming what never happened, so a slow machine makes a test slower, not flaky.
"""

from __future__ import annotations

import io
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar

import pymysql
import redis
from redis.cluster import ClusterNode, RedisCluster

from taskherd.config import Settings, from_dict
from taskherd.deploy.local.redis_cluster import bus_port
from taskherd.deploy.local.services import ServiceManager, port_free

T = TypeVar("T")
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Opens URLs without any $http_proxy: the services are on loopback."""


@dataclass(frozen=True, slots=True)
class Services:
    """What the session fixture `services` yields."""

    settings: Settings
    """Settings pointing at the test ports (read ports from here, never hard-code them)."""
    manager: ServiceManager
    """The manager running the four services; fault tests kill and restart through it."""
    data_dir: Path
    """Where the services keep their data and logs (`data_dir/logs/NAME.log`)."""


TEST_PORTS = {"nsqd_tcp": 24150, "nsqd_http": 24151, "lookupd_tcp": 24160, "lookupd_http": 24161,
              "redis": 26379, "mysql": 23306, "api": 28080}
"""Base test ports; no two differ by a multiple of 1000, so shifted blocks never overlap."""
PORT_SHIFTS = range(0, 5000, 1000)
"""Shifts tried in turn when another test session holds the base ports (all below `ephemeral_low()`)."""
TEST_CLUSTER_PORTS = tuple(range(26400, 26406))
"""The Redis Cluster's nodes when TASKHERD_TEST_REDIS=cluster (their buses 100 above: 26500...), shifted
with the rest; no port here or there differs from a TEST_PORTS one by a multiple of 1000 either."""
CLUSTER_NODE_TIMEOUT_MS = 2000
"""A test cluster's node timeout: a killed master's replica takes over within a few seconds."""


def redis_cluster_wanted() -> bool:
    """TASKHERD_TEST_REDIS=cluster: the session's Redis is a cluster of 3 masters + 3 replicas (unset or
    `single`: one instance). Read when called, never at import."""
    mode = os.environ.get("TASKHERD_TEST_REDIS", "single") or "single"
    if mode not in ("single", "cluster"):
        raise ValueError(f"TASKHERD_TEST_REDIS: expected single or cluster, got {mode!r}")
    return mode == "cluster"


def settings_for_tests(shift: int = 0, *, cluster: bool | None = None) -> Settings:
    """Settings for the test services, every port moved by `shift`; Redis a cluster when `cluster`
    (default: as TASKHERD_TEST_REDIS says). `[redis].port` stays set either way: tests derive their
    session's shift from it."""
    p = {key: port + shift for key, port in TEST_PORTS.items()}
    cluster = redis_cluster_wanted() if cluster is None else cluster
    nodes = [f"127.0.0.1:{port + shift}" for port in TEST_CLUSTER_PORTS] if cluster else []
    return from_dict({
        "nsq": {"nsqd_tcp_address": f"127.0.0.1:{p['nsqd_tcp']}",
                "nsqd_http_addresses": [f"127.0.0.1:{p['nsqd_http']}"],
                "lookupd_tcp_address": f"127.0.0.1:{p['lookupd_tcp']}",
                "lookupd_http_addresses": [f"127.0.0.1:{p['lookupd_http']}"]},
        "redis": {"port": p["redis"], "cluster_nodes": nodes},
        "mysql": {"port": p["mysql"], "database": "taskherd_test"},
        "api": {"port": p["api"]},
        # Tests start several worker pods on one config, next to any `taskherd up`: each its own free port.
        "worker": {"http_port": 0},
    }, source="<tests>")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               message: str | None = None,
               ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Poll `predicate` until it returns a truthy value, and return that value.

    Exceptions of the types in `ignore` count as "not yet" (e.g. `ConnectionError` while a service
    restarts); any other exception propagates at once. On deadline, raises AssertionError naming
    the condition and the last value or exception seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: Any = predicate()
            if last:
                return last
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"not true within {timeout} s: {what} (last result: {last!r})")
        time.sleep(interval)


def ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections. A test port at or above it can be taken
    between the check that it is free and the bind, by any connection's local end (a pod's own Redis
    client held one on 2026-12-07 and its API could not listen): test blocks stay below it."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_block_shift() -> int:
    """A shift for a block of test ports of its own (a `taskherd up`, a second set of services): not a
    multiple of 1000 (test sessions take those), every port it moves (the cluster's nodes and their
    buses too, when TASKHERD_TEST_REDIS=cluster) free now and below `ephemeral_low()`."""
    nodes = [*TEST_CLUSTER_PORTS, *map(bus_port, TEST_CLUSTER_PORTS)] if redis_cluster_wanted() else []
    bases = [*TEST_PORTS.values(), *nodes]
    for shift in range(100, ephemeral_low() - max(bases), 100):
        if shift % 1000 and all(port_free(port + shift) for port in bases):
            return shift
    raise AssertionError(f"no free block of test ports below {ephemeral_low()}")


_HANDED_OUT: set[int] = set()
"""Ports `free_port` has given in this session: a port given but not yet bound is not given twice."""


def free_port() -> int:
    """A loopback port nothing listens on right now, in 10000-19999: below `ephemeral_low()` (the OS
    would pick from the ephemeral range, where a connection's local end can take it before the bind)
    and clear of the test blocks (23306 and up) and of `taskherd up`'s defaults."""
    for _ in range(1000):
        port = random.randrange(10_000, 20_000)
        if port not in _HANDED_OUT and port_free(port):
            _HANDED_OUT.add(port)
            return port
    raise AssertionError("no free port in 10000-19999")


def free_cluster_ports(count: int = 6) -> list[int]:
    """`count` free ports for Redis Cluster nodes, each with its bus port (+ BUS_OFFSET) free too."""
    found: list[int] = []
    while len(found) < count:
        port = free_port()
        taken = {q for p in found for q in (p, bus_port(p))}
        if bus_port(port) <= 65535 and port_free(bus_port(port)) and not {port, bus_port(port)} & taken:
            found.append(port)
    return found


def redis_client(settings: Settings) -> redis.Redis | RedisCluster:
    """A client of the configured Redis: one instance, or a cluster (`[redis].cluster_nodes`), whose
    flushdb, keys, dbsize and scan_iter cover every master."""
    cfg = settings.redis
    if cfg.cluster_nodes:
        nodes = [ClusterNode(host, int(port)) for host, _, port in (n.rpartition(":") for n in cfg.cluster_nodes)]
        return _EveryMaster(startup_nodes=nodes, password=cfg.password, socket_timeout=cfg.socket_timeout_s)
    return redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db, password=cfg.password,
                       socket_timeout=cfg.socket_timeout_s)


class _EveryMaster(RedisCluster):
    """redis-py sends KEYS and DBSIZE to one node of a cluster; tests mean every key (FLUSHDB and SCAN
    already go to every master)."""

    def keys(self, pattern: Any = "*", **kwargs: Any) -> Any:
        return super().keys(pattern, **{"target_nodes": RedisCluster.PRIMARIES, **kwargs})

    def dbsize(self, **kwargs: Any) -> Any:
        return super().dbsize(**{"target_nodes": RedisCluster.PRIMARIES, **kwargs})


def mysql_connect(settings: Settings, database: str | None = None) -> pymysql.connections.Connection:
    """A connection to the configured database (or `database`; "" for none)."""
    cfg = settings.mysql
    return pymysql.connect(host=cfg.host, port=cfg.port, user=cfg.user, password=cfg.password,
                           database=cfg.database if database is None else (database or None),
                           connect_timeout=cfg.connect_timeout_s, autocommit=True)


def nsqd_url(settings: Settings, path: str) -> str:
    return f"http://{settings.nsq.nsqd_http_addresses[0]}{path}"


def nsqd_post(settings: Settings, path: str, body: bytes = b"", *, lookupd: bool = False) -> int:
    """POST to nsqd's (or nsqlookupd's) HTTP API; returns the status code (404 included, other errors raise)."""
    url = f"http://{settings.nsq.lookupd_http_addresses[0]}{path}" if lookupd else nsqd_url(settings, path)
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with DIRECT.open(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return 404
        raise


def channel_stats(settings: Settings, topic: str, channel: str) -> dict | None:
    """nsqd's counters for one channel (depth, in_flight_count, timeout_count, requeue_count, ...)."""
    url = nsqd_url(settings, f"/stats?format=json&topic={topic}&channel={channel}")
    with DIRECT.open(url, timeout=5) as resp:
        stats = json.load(resp)
    for entry in stats.get("topics") or []:
        for ch in entry.get("channels") or []:
            if entry["topic_name"] == topic and ch["channel_name"] == channel:
                return ch
    return None


def topic_depth(settings: Settings, topic: str) -> int | None:
    """Messages waiting in `topic` on nsqd (None when the topic does not exist)."""
    url = nsqd_url(settings, f"/stats?format=json&topic={topic}")
    with DIRECT.open(url, timeout=5) as resp:
        stats = json.load(resp)
    for entry in stats.get("topics") or []:
        if entry["topic_name"] == topic:
            return int(entry["depth"])
    return None


class QuietHandler(BaseHTTPRequestHandler):
    """An HTTP handler for the test servers that stand in for users' endpoints: one `reply`, no log."""

    def reply(self, status: int, body: bytes, content_type: str | None = "application/json") -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def start_pods(config: Path, roles: tuple[str, ...] = ("manager", "worker")) -> tuple[list[Any], io.StringIO]:
    """One `taskherd run` pod per role on `config` (stop them with deploy.local.cluster.stop_pods),
    and the buffer their output streams into, each line prefixed with the pod's role."""
    from taskherd.deploy.local.cluster import Pod

    out = io.StringIO()
    pods = [Pod(role, role, config, out) for role in roles]
    for pod in pods:
        pod.start()
    return pods, out


def write_config(settings: Settings, folder: Path) -> Path:
    """`settings` as the TOML file pods read."""
    from taskherd.config.toml_out import dumps

    path = folder / "pods.toml"
    path.write_text(dumps(settings))
    return path
