"""Session fixtures: real nsqd, nsqlookupd, Redis and MariaDB on test ports of their own.

- `service_binaries` (session): path of each service binary, or the skip/fail described below.
- `services` (session): starts the four services once per session in a fresh data dir and yields
  `tests.helpers.Services` (`.settings`, `.manager`, `.data_dir`). Missing binaries skip the tests
  that need them locally (with a hint to run `make setup`) but FAIL when the `CI` env var is set, so
  CI can never pass by skipping. Ports sit apart from the local cluster's (14150…, 16379, 13306), so
  a running `taskherd up` does not disturb tests; if another test session already holds them, the
  whole block shifts by 1000 until a free one is found: always read ports from `services.settings`.
- `clean` (function): restarts any service a previous test left stopped, then empties Redis, the
  MySQL database and taskherd's NSQ topics; returns the same `Services`.
- TASKHERD_TEST_REDIS=cluster makes the session's Redis a cluster of 3 masters + 3 replicas
  (`[redis].cluster_nodes`, tests/helpers.py); "redis" is then every node at once for `services.manager`.
  Tests marked `single_redis` are about the one instance itself and are left out of that pass.
- `stop_actors` (autouse): pykka's registry is global, so every test ends with no actor alive.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from taskherd.config import Settings
from taskherd.deploy.local import binaries
from taskherd.deploy.local.services import PortInUse, ServiceManager
from taskherd.errors import MissingBinary
from tests.helpers import (
    CLUSTER_NODE_TIMEOUT_MS,
    PORT_SHIFTS,
    Services,
    mysql_connect,
    nsqd_post,
    redis_client,
    redis_cluster_wanted,
    settings_for_tests,
)


@pytest.fixture(scope="session")
def service_binaries() -> dict[str, str]:
    """Path of every service binary; skips (locally) or fails (CI set) when one is missing."""
    try:
        return binaries.find_all()
    except MissingBinary as exc:
        message = f"{exc}. Run `make setup` to install every service binary."
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so a missing service fails the run: {message}", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def services(service_binaries: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("services")
    manager, settings = _start_on_free_ports(data_dir)
    try:
        yield Services(settings=settings, manager=manager, data_dir=data_dir)
    finally:
        manager.stop()


def _start_on_free_ports(data_dir: Path) -> tuple[ServiceManager, Settings]:
    """Start on the first block of test ports nobody holds (another session may hold the first)."""
    busy: list[str] = []
    for shift in PORT_SHIFTS:
        settings = settings_for_tests(shift)
        manager = ServiceManager(settings, data_dir, cluster_node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS)
        try:
            manager.start()
        except PortInUse as exc:
            busy.append(str(exc))
            continue
        return manager, settings
    pytest.fail("no free block of test ports:\n" + "\n".join(busy), pytrace=False)


@pytest.fixture
def clean(services: Services) -> Services:
    """Every service running, Redis and MySQL empty, taskherd's NSQ topics gone."""
    services.manager.start()  # no-op for running services; revives any a fault test left down
    settings = services.settings
    client = redis_client(settings)
    try:
        client.flushdb()
    finally:
        client.close()
    conn = mysql_connect(settings, database="")
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{settings.mysql.database}`")
            cur.execute(f"CREATE DATABASE `{settings.mysql.database}`")
    finally:
        conn.close()
    nsq = settings.nsq
    for topic in (nsq.tasks_topic, nsq.results_topic, nsq.deadletter_topic):
        nsqd_post(settings, f"/topic/delete?topic={topic}")  # 404: never created, nothing to do
        # nsqlookupd remembers the topic's channels, and nsqd recreates them from it when the topic
        # comes back: a message would then sit in an old consumer's channel, not in the topic.
        nsqd_post(settings, f"/topic/delete?topic={topic}", lookupd=True)
    return services


@pytest.fixture(autouse=True)
def stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cluster_only` (a cluster's own faults: a master killed) are deselected, not
    skipped, when the session's Redis is one instance: the cluster pass of `make test` runs them."""
    if redis_cluster_wanted():
        return
    kept = [item for item in items if item.get_closest_marker("cluster_only") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
