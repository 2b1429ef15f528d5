"""`taskherd up --managers N --nsqd M` plans its ports before starting anything: consecutive nsqd port
pairs, consecutive API ports, and a refusal naming both parts when two would share a port."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskherd.config import from_dict
from taskherd.deploy.local.cluster import Cluster
from taskherd.deploy.local.services import nsqd_addresses, service_names
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
