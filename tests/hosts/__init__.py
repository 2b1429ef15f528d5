"""Hosts on one machine: Linux network namespaces on a bridge, each running what a Kubernetes node
would, with faults to inject (cut a link, heal it, kill a host, pause it). Needs root.

    with Cluster(workdir, managers=1, workers=2) as cluster:   # infra, m1, w1, w2
        cluster.host("w1").cut(); cluster.host("w1").heal()

By hand: `python -m tests.hosts up` (see tests/hosts/__main__.py).
"""

from tests.hosts.cluster import PORTS, Cluster, pod_toml
from tests.hosts.net import Host, HostsError, Network, clean_stale, have_root

__all__ = ["PORTS", "Cluster", "Host", "HostsError", "Network", "clean_stale", "have_root", "pod_toml"]
