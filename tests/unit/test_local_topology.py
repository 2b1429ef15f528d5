"""`taskherd up --managers N --nsqd M` plans its ports before starting anything: consecutive nsqd port
pairs, consecutive API ports, and a refusal naming both parts when two would share a port."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskherd.config import from_dict
from taskherd.deploy.local.cluster import Cluster
from taskherd.deploy.local.services import ServiceManager, nsqd_addresses, service_names
from taskherd.errors import ServiceError


def test_nsqd_take_consecutive_port_pairs_from_the_configured_one() -> None:
    settings = from_dict({}, source="<test>")
    assert nsqd_addresses(settings, 3) == [("127.0.0.1:14150", "127.0.0.1:14151"), ("127.0.0.1:14152", "127.0.0.1:14153"),
                                           ("127.0.0.1:14154", "127.0.0.1:14155")]
    assert service_names(3) == ("nsqlookupd", "nsqd", "nsqd-2", "nsqd-3", "redis", "mariadb")


def test_managers_serve_consecutive_api_ports(tmp_path: Path) -> None:
    cluster = Cluster(from_dict({}, source="<test>"), workers=0, data_dir=str(tmp_path), managers=3, nsqd=2)
    assert cluster.api_urls == ["http://127.0.0.1:18080", "http://127.0.0.1:18081", "http://127.0.0.1:18082"]
    assert [p.args for p in cluster._manager_pods()] == [
        ("--nsqd", "127.0.0.1:14150"), ("--api-port", "18081", "--nsqd", "127.0.0.1:14152"),
        ("--api-port", "18082", "--nsqd", "127.0.0.1:14150")]
    pods = cluster._pod_settings().nsq
    assert pods.nsqd_tcp_address == "" and pods.nsqd_http_addresses == ("127.0.0.1:14151", "127.0.0.1:14153")


def test_a_topology_whose_ports_collide_is_refused_naming_both(tmp_path: Path) -> None:
    # nsqd 6 would take 14160, nsqlookupd's TCP port
    with pytest.raises(ServiceError, match=r"nsqd 6 TCP and nsqlookupd TCP would both use port 14160"):
        Cluster(from_dict({}, source="<test>"), data_dir=str(tmp_path), nsqd=6)


def test_up_with_a_redis_cluster_lists_six_local_nodes_in_every_pods_config(tmp_path: Path) -> None:
    cluster = Cluster(from_dict({}, source="<test>"), workers=0, data_dir=str(tmp_path), redis_cluster=True)
    nodes = tuple(f"127.0.0.1:{16379 + i}" for i in range(6))
    assert cluster._pod_settings().redis.cluster_nodes == nodes
    # The services: "redis" is one service of six nodes
    assert cluster.services.names == service_names() and cluster.services.redis_nodes() == list(range(16379, 16385))
    assert "redis" in cluster._service_restarts


@pytest.mark.parametrize(("config", "message"), [
    ({"mysql": {"port": 16381}}, r"mysql and redis node 3 would both use port 16381"),
    ({"api": {"port": 16479}}, r"manager 1 API and redis node 1 bus would both use port 16479"),
])
def test_a_redis_cluster_whose_ports_collide_is_refused_naming_both(config: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match=message):
        Cluster(from_dict(config, source="<test>"), data_dir=str(tmp_path), redis_cluster=True)


@pytest.mark.parametrize(("nodes", "message"), [
    (["10.0.0.5:7000", *(f"127.0.0.1:{7001 + i}" for i in range(5))],
     r"\[redis\]\.cluster_nodes: 10\.0\.0\.5:7000 is not on this machine"),
    ([f"127.0.0.1:{7000 + i}" for i in range(3)], r"\[redis\]\.cluster_nodes: a local cluster needs at least 6 nodes"),
    (["127.0.0.1:7000", *(f"127.0.0.1:{7000 + i}" for i in range(5))], r"\[redis\]\.cluster_nodes: port 7000 is listed twice"),
    ([f"127.0.0.1:{65436 + i}" for i in range(6)], r"\[redis\]\.cluster_nodes: 127\.0\.0\.1:65436: its cluster bus"),
])
def test_cluster_nodes_a_local_cluster_cannot_start_are_refused_naming_the_key(nodes: list[str], message: str,
                                                                                tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match=message):
        ServiceManager(from_dict({"redis": {"cluster_nodes": nodes}}, source="<test>"), tmp_path)


def test_per_node_control_on_one_instance_says_it_is_not_a_cluster(tmp_path: Path) -> None:
    manager = ServiceManager(from_dict({}, source="<test>"), tmp_path)
    assert manager.redis_nodes() == []
    with pytest.raises(ServiceError, match=r"redis is one instance here, not a cluster \(\[redis\]\.cluster_nodes is empty\)"):
        manager.redis_master_of("k")
    with pytest.raises(ValueError, match="not a Redis cluster node"):
        manager.kill_redis_node(16379)
