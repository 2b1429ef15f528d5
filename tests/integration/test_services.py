"""The local services: they start and answer, keep their data across crashes, stop without leftovers.

Durability here is the foundation later issues build on: Redis (AOF) and MariaDB (InnoDB redo log)
must keep acknowledged writes through a SIGKILL, and nsqd must keep a published message through a
clean restart (what a SIGKILL of nsqd loses, the TimeoutWatcher republishes: tests/faults).
"""

from __future__ import annotations

import os
import socket

import psutil
import pytest
import redis

from taskherd.config import Settings, from_dict
from taskherd.deploy.local import binaries, redis_cluster
from taskherd.deploy.local.services import SERVICES, PortInUse, ServiceManager
from taskherd.errors import MissingBinary, ServiceError
from tests.helpers import (
    DIRECT,
    Services,
    free_cluster_ports,
    free_port,
    mysql_connect,
    nsqd_post,
    redis_client,
    settings_for_tests,
    topic_depth,
    wait_until,
)


def test_all_four_services_answer(services: Services) -> None:
    settings = services.settings
    for address in (settings.nsq.nsqd_http_addresses[0], settings.nsq.lookupd_http_addresses[0]):
        with DIRECT.open(f"http://{address}/ping", timeout=5) as resp:
            assert resp.read() == b"OK"
    client = redis_client(settings)
    assert client.ping()
    client.close()
    conn = mysql_connect(settings)
    with conn.cursor() as cur:
        cur.execute("SELECT 1, DATABASE()")
        assert cur.fetchone() == (1, settings.mysql.database)
    conn.close()
    assert all(services.manager.pid(name) for name in SERVICES)


def test_redis_keeps_an_acknowledged_write_after_sigkill(clean: Services) -> None:
    # Given a key Redis acknowledged
    client = redis_client(clean.settings)
    client.set("taskherd:test:durable", "kept")
    old_pid = clean.manager.pid("redis")
    # When redis-server is SIGKILLed and started again
    clean.manager.kill_one("redis")
    assert not psutil.pid_exists(old_pid)
    assert clean.manager.start_one("redis") != old_pid
    # Then the AOF replay brings the key back
    value = wait_until(lambda: client.get("taskherd:test:durable"), timeout=10,
                       ignore=(redis.ConnectionError, redis.BusyLoadingError))
    assert value == b"kept"
    client.close()


def test_mariadb_keeps_a_committed_row_after_sigkill(clean: Services) -> None:
    # Given a committed row
    conn = mysql_connect(clean.settings)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
        cur.execute("INSERT INTO t VALUES (1, 'kept')")
    conn.close()
    # When mariadbd is SIGKILLed and started again
    old_pid = clean.manager.pid("mariadb")
    clean.manager.kill_one("mariadb")
    assert not psutil.pid_exists(old_pid)
    clean.manager.start_one("mariadb")
    # Then crash recovery keeps the row
    conn = mysql_connect(clean.settings)
    with conn.cursor() as cur:
        cur.execute("SELECT v FROM t WHERE id = 1")
        assert cur.fetchone() == ("kept",)
    conn.close()


def test_nsqd_keeps_a_published_message_after_a_restart(clean: Services) -> None:
    # Given a message published to a topic nobody consumes
    settings, topic = clean.settings, clean.settings.nsq.tasks_topic
    assert nsqd_post(settings, f"/pub?topic={topic}", b"hello") == 200
    assert topic_depth(settings, topic) == 1
    # When nsqd stops cleanly and starts again
    clean.manager.stop_one("nsqd")
    clean.manager.start_one("nsqd")
    # Then the message is still waiting in the topic
    assert wait_until(lambda: topic_depth(settings, topic) == 1, timeout=10,
                      message=f"{topic} depth back to 1 after restart")


def test_stop_leaves_no_process_behind_and_start_resumes_the_data(clean: Services) -> None:
    # Given running services holding a Redis key and every pid (and any child) they run
    manager = clean.manager
    client = redis_client(clean.settings)
    client.set("taskherd:test:resume", "yes")
    client.close()
    procs = [psutil.Process(pid) for name in SERVICES for pid in manager.pids(name)]
    procs += [child for proc in procs for child in proc.children(recursive=True)]
    try:
        # When the manager stops them
        manager.stop()
        # Then no process is left and every port is free
        assert [p.pid for p in procs if p.is_running()] == []
        assert all(manager.pid(name) is None and manager.pids(name) == [] for name in SERVICES)
        for port in _ports(clean):
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    finally:
        manager.start()
    # And a second start on the same data dir resumes the data
    client = redis_client(clean.settings)
    assert client.get("taskherd:test:resume") == b"yes"
    client.close()


@pytest.mark.usefixtures("service_binaries")
@pytest.mark.parametrize("busy_service", SERVICES)
def test_a_busy_port_names_the_service_and_port_and_starts_nothing(busy_service: str, tmp_path) -> None:
    # Given settings on free ports, except one port of `busy_service` that something listens on
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        ports = {"nsqlookupd": ("nsq", "lookupd_tcp_address"), "nsqd": ("nsq", "nsqd_tcp_address"),
                 "redis": ("redis", "port"), "mariadb": ("mysql", "port")}
        section, key = ports[busy_service]
        settings = _on_free_ports(**{f"{section}.{key}": busy})
        if busy_service == "redis" and settings.redis.cluster_nodes:  # a cluster: its third node's port
            settings = _with_cluster_node(settings, 2, busy)
        manager = ServiceManager(settings, tmp_path)
        # When the manager starts
        try:
            with pytest.raises(ServiceError) as raised:
                manager.start()
        finally:
            manager.stop()
    # Then the error names the service and the port, and nothing was launched
    assert isinstance(raised.value, PortInUse)
    assert raised.value.service == busy_service and raised.value.port == busy
    assert f"{busy_service}: port {busy}" in str(raised.value)
    assert not (tmp_path / "logs").exists()


@pytest.mark.single_redis  # how one redis-server's failed start reads (a cluster node's is the same code)
def test_a_service_that_dies_at_start_reports_the_tail_of_its_log(monkeypatch, tmp_path) -> None:
    # Given a redis-server that fails at once, saying why
    _fake_binary(monkeypatch, tmp_path, "redis-server", "echo 'FATAL: cannot open the AOF' >&2; exit 3")
    manager = ServiceManager(_on_free_ports(cluster=False), tmp_path / "data")
    # When it is started, Then the error carries the exit code and the log's last lines
    with pytest.raises(ServiceError, match=r"(?s)redis exited with code 3 .*FATAL: cannot open the AOF"):
        manager.start_one("redis")
    assert manager.pid("redis") is None


@pytest.mark.single_redis  # as above: one redis-server that never answers
def test_a_service_that_never_answers_is_killed_at_the_deadline(monkeypatch, tmp_path) -> None:
    # Given a redis-server that runs but never answers
    _fake_binary(monkeypatch, tmp_path, "redis-server", "echo 'still thinking'; exec sleep 60")
    manager = ServiceManager(_on_free_ports(cluster=False), tmp_path / "data", start_timeout_s=0.5)
    # When it is started, Then the deadline names service and port, shows the log, kills the process
    with pytest.raises(ServiceError, match=r"(?s)redis did not answer on 127.0.0.1:\d+ within .*still thinking"):
        manager.start_one("redis")
    assert manager.pid("redis") is None
    assert not [p for p in psutil.Process().children(recursive=True) if p.name() == "sleep"]


def test_a_missing_binary_names_itself_and_its_install_command(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(MissingBinary) as raised:
        binaries.find("nsqd")
    assert raised.value.name == "nsqd"
    assert "python -m taskherd.deploy.local.setup" in str(raised.value)
    assert "release" in str(raised.value)  # NSQ's release binaries on PATH need no Go
    with pytest.raises(MissingBinary, match=r"redis-server .*apt-get install -y redis-server"):
        binaries.find("redis-server")


def _ports(services: Services) -> list[int]:
    nsq = services.settings.nsq
    addresses = [nsq.nsqd_tcp_address, nsq.nsqd_http_addresses[0], nsq.lookupd_tcp_address,
                 nsq.lookupd_http_addresses[0]]
    nodes = services.manager.redis_nodes()
    return [int(a.rsplit(":", 1)[1]) for a in addresses] + [services.settings.redis.port,
                                                            services.settings.mysql.port] + \
        nodes + [redis_cluster.bus_port(p) for p in nodes]


def _with_cluster_node(settings: Settings, index: int, port: int) -> Settings:
    data = settings.model_dump()
    nodes = list(data["redis"]["cluster_nodes"])
    nodes[index] = f"127.0.0.1:{port}"
    data["redis"]["cluster_nodes"] = nodes
    return from_dict(data)


def _on_free_ports(cluster: bool | None = None, **override: int) -> Settings:
    """Test settings with every service on a fresh free port, then `section.key=port` overrides; Redis
    a cluster as the session's (TASKHERD_TEST_REDIS), unless `cluster` says."""
    data = settings_for_tests(cluster=cluster).model_dump()
    if data["redis"]["cluster_nodes"]:
        data["redis"]["cluster_nodes"] = [f"127.0.0.1:{p}" for p in free_cluster_ports()]
    data["nsq"].update(nsqd_tcp_address=f"127.0.0.1:{free_port()}",
                       nsqd_http_addresses=[f"127.0.0.1:{free_port()}"],
                       lookupd_tcp_address=f"127.0.0.1:{free_port()}",
                       lookupd_http_addresses=[f"127.0.0.1:{free_port()}"])
    data["redis"]["port"], data["mysql"]["port"] = free_port(), free_port()
    for dotted, port in override.items():
        section, key = dotted.split(".")
        data[section][key] = f"127.0.0.1:{port}" if key.endswith("address") else port
    return from_dict(data)


def _fake_binary(monkeypatch: pytest.MonkeyPatch, tmp_path, name: str, script: str) -> None:
    """Put a shell script called `name` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
