"""The local Redis Cluster under the services manager: six nodes form 3 masters + 3 replicas, a killed
master's replica takes over and the master rejoins as a replica, the whole cluster killed comes back
with its data (AOF), a stop leaves nothing behind, a busy port names `[redis].cluster_nodes`; and
`taskherd up --redis-cluster` runs tasks on one and restarts a node that died.

Each test runs clusters of its own on free ports, whichever Redis the session uses (TASKHERD_TEST_REDIS),
so it runs in the first pass of `make test` and is left out of the cluster pass. Without the service
binaries it skips, or fails when CI is set (`service_binaries`).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from redis.cluster import RedisCluster

from taskherd.config import Settings, from_dict, load
from taskherd.deploy.local import redis_cluster
from taskherd.deploy.local.services import PortInUse, ServiceManager, service_names
from taskherd.errors import ServiceError
from tests.helpers import CLUSTER_NODE_TIMEOUT_MS, free_cluster_ports, port_free, redis_client, settings_for_tests, wait_until
from tests.local_up import Up, run_one_echo_task, up_settings

TASKHERD = [str(Path(sys.executable).parent / "taskherd")]
PASSWORD = "s3cret"
"""The shared cluster runs with a password: replicas must authenticate to their masters (masterauth),
and redis-cli to every node, for it to form and fail over at all."""


def cluster_settings(ports: list[int], password: str | None = None) -> Settings:
    data = settings_for_tests(cluster=False).model_dump()
    data["redis"].update(cluster_nodes=[f"127.0.0.1:{p}" for p in ports], password=password)
    return from_dict(data)


def start_cluster(tmp: Path, password: str | None = None) -> ServiceManager:
    manager = ServiceManager(cluster_settings(free_cluster_ports(), password), tmp,
                             cluster_node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS, stop_timeout_s=15)
    try:
        manager.start_one("redis")
    except BaseException:
        manager.stop()
        raise
    return manager


@pytest.fixture(scope="module")
def cluster(service_binaries: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceManager]:
    """One cluster (with a password) for the tests that leave it whole."""
    manager = start_cluster(tmp_path_factory.mktemp("redis-cluster"), PASSWORD)
    try:
        yield manager
    finally:
        manager.stop()


def masters_and_replicas(manager: ServiceManager, port: int) -> tuple[dict[str, redis_cluster.Node], list[redis_cluster.Node]]:
    view = manager.redis_cluster_view(port)
    return {n.id: n for n in view if n.master}, [n for n in view if not n.master]


def test_six_nodes_form_three_masters_each_with_a_replica(cluster: ServiceManager) -> None:
    ports = cluster.redis_nodes()
    # Then the cluster is one service with six processes, and every node says it serves
    assert service_names() == ("nsqlookupd", "nsqd", "redis", "mariadb")
    assert len(ports) == 6 and len(cluster.pids("redis")) == 6
    assert cluster.pid("redis") == cluster.redis_node_pid(ports[0])
    for port in ports:
        assert redis_cluster.info(port, PASSWORD)["cluster_state"] == "ok"
        # And each sees 3 masters covering every slot, each master with one replica of its own
        masters, replicas = masters_and_replicas(cluster, port)
        assert len(masters) == 3 and len(replicas) == 3
        assert sum(hi - lo + 1 for m in masters.values() for lo, hi in m.slots) == redis_cluster.SLOTS
        assert sorted(r.master_id for r in replicas) == sorted(masters)


def test_a_killed_master_is_replaced_by_its_replica_and_rejoins_as_a_replica(cluster: ServiceManager) -> None:
    # Given a key its master has copied to its replica (WAIT 1)
    key = "taskherd:test:failover"
    master = cluster.redis_master_of(key)
    direct = redis.Redis(port=master, password=PASSWORD, socket_timeout=5)
    direct.set(key, "kept")
    assert direct.wait(1, 5000) == 1
    direct.close()
    others = [p for p in cluster.redis_nodes() if p != master]
    # When that master is SIGKILLed
    cluster.kill_redis_node(master)
    # Then its replica is promoted, and the key is served from it
    promoted = wait_until(lambda: _serving(others[0], key, master), timeout=30, interval=0.2,
                          ignore=(OSError, ServiceError), message=f"a replica of {master} takes over {key}")
    client = redis_client(cluster.settings)
    assert client.get(key) == b"kept"
    # And the killed node, started again, rejoins as the replica of the one that took its place
    cluster.start_redis_node(master)
    redis_cluster.wait_ok(cluster.redis_nodes(), PASSWORD, 60)
    masters, replicas = masters_and_replicas(cluster, master)
    assert [r.master_id for r in replicas if r.port == master] == [n.id for n in masters.values() if n.port == promoted]
    assert client.get(key) == b"kept"
    client.close()


def _serving(asked: int, key: str, old: int) -> int | None:
    port = redis_cluster.master_of(asked, PASSWORD, key)
    return port if port != old else None


def test_the_whole_cluster_killed_comes_back_with_its_data(cluster: ServiceManager) -> None:
    # Given keys on every master
    client = redis_client(cluster.settings)
    written = {f"taskherd:test:aof:{i}": str(i).encode() for i in range(30)}
    for key, value in written.items():
        client.set(key, value)
    assert len({cluster.redis_master_of(k) for k in written}) == 3
    client.close()
    old = cluster.pids("redis")
    # When every node is SIGKILLed at once and "redis" is started again
    cluster.kill_one("redis")
    assert cluster.pids("redis") == [] and not [p for p in old if psutil.pid_exists(p)]
    cluster.start_one("redis")
    # Then the cluster serves again with every key (each master replayed its AOF)
    assert len(cluster.pids("redis")) == 6
    client = redis_client(cluster.settings)
    assert {k: client.get(k) for k in written} == written
    client.close()


def test_stop_leaves_no_node_behind(service_binaries: dict[str, str], tmp_path: Path) -> None:
    # Given a running cluster
    manager = start_cluster(tmp_path)
    procs = [psutil.Process(pid) for pid in manager.pids("redis")]
    ports = [q for p in manager.redis_nodes() for q in (p, redis_cluster.bus_port(p))]
    # When it is stopped
    manager.stop_one("redis")
    # Then every node shut down cleanly (its AOF synced: a replica that has just synced refuses a first
    # SIGTERM while it writes its initial AOF), no node runs and every port and bus port is free
    for port in manager.redis_nodes():
        assert "ready to exit, bye bye" in manager.log_path(f"redis-{port}").read_text().split("--- taskherd ")[-1]
    assert manager.pids("redis") == [] and manager.pid("redis") is None
    assert [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert [p for p in ports if not port_free(p)] == []


@pytest.mark.usefixtures("service_binaries")
@pytest.mark.parametrize("which", ["node", "bus"])
def test_a_busy_port_names_the_cluster_nodes_key_and_starts_nothing(which: str, tmp_path: Path) -> None:
    # Given cluster nodes on free ports, one node's port (or its bus port) held by something else
    ports = free_cluster_ports()
    busy = ports[2] if which == "node" else redis_cluster.bus_port(ports[2])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", busy))
        squatter.listen()
        manager = ServiceManager(cluster_settings(ports), tmp_path)
        # When "redis" starts
        with pytest.raises(PortInUse) as raised:
            manager.start_one("redis")
    # Then the error names Redis, the port and the config key, and no node was launched
    assert raised.value.service == "redis" and raised.value.port == busy
    assert f"redis: port {busy}" in str(raised.value) and "[redis].cluster_nodes" in str(raised.value)
    assert manager.pids("redis") == [] and not (tmp_path / "logs").exists()


def test_the_session_client_reaches_every_master(cluster: ServiceManager) -> None:
    # Given keys spread over the three masters
    client = redis_client(cluster.settings)
    assert isinstance(client, RedisCluster)
    for i in range(30):
        client.set(f"taskherd:test:every:{i}", i)
    # Then keys() and dbsize() count all of them, and flushdb() empties every master
    assert len(client.keys("taskherd:test:every:*")) == 30
    assert client.dbsize() >= 30
    client.flushdb()
    assert client.dbsize() == 0
    assert all(redis.Redis(port=p, password=PASSWORD).dbsize() == 0 for p in cluster.redis_nodes())
    client.close()


def test_up_with_a_redis_cluster_runs_tasks_and_restarts_a_killed_node(service_binaries: dict[str, str],
                                                                         tmp_path: Path) -> None:
    # Given `taskherd up --redis-cluster` (single-instance settings: the option alone makes the cluster)
    settings = up_settings()
    up = Up(TASKHERD, settings, tmp_path / "data", tmp_path, options=("--redis-cluster",))
    nodes = [f"127.0.0.1:{settings.redis.port + i}" for i in range(6)]
    try:
        up.start()
        up.wait_ready()
        # Then the pods' config lists the six nodes, which serve as one cluster, and a task runs
        assert load(up.data_dir / "cluster.toml").redis.cluster_nodes == tuple(nodes)
        ports = [settings.redis.port + i for i in range(6)]
        redis_cluster.wait_ok(ports, None, 30)
        assert run_one_echo_task(up, sys.executable, "on-a-cluster")["counts"].get("succeeded") == 1
        # When a node dies, Then `up` restarts it like any service, and the cluster runs a task again
        killed = redis_nodes_of(up)[2]
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: "[up] redis exited (code -9, SIGKILL); restarting (1/5)" in up.log(), timeout=15,
                   message="`up` reports the dead node")
        wait_until(lambda: "[up] redis restarted" in up.log(), timeout=90, message="`up` restarted the node")
        assert len(redis_nodes_of(up)) == 6 and killed not in redis_nodes_of(up)
        # (a 503 is retried: the store's first call on each pooled connection to the restarted node fails
        # once, "Connection closed by server"; that is the store's to retry, not `up`'s. Submits are
        # idempotent by id, so a retried one cannot double the task.)
        again = wait_until(lambda: run_one_echo_task(up, sys.executable, "after-a-node-restart"), timeout=90,
                           ignore=(httpx.HTTPStatusError,), message="a task runs after the node's restart")
        assert again["counts"].get("succeeded") == 1
        # And a stop leaves no process behind
        assert up.stop() == 0
        assert up.still_running() == []
    finally:
        up.kill()
        sys.stderr.write(up.log())


def redis_nodes_of(up: Up) -> list[int]:
    """Pids of the redis-server nodes `up` runs: its own children (a node's AOF rewrite child, also
    called redis-server, is not one)."""
    assert up.proc is not None
    return sorted(p.pid for p in psutil.Process(up.proc.pid).children() if p.name() == "redis-server")
