"""A Redis Cluster on the hosts: 3 masters + 3 replicas over 3 dedicated hosts `r1..r3`, two nodes each.

Why dedicated hosts, two nodes each: that is how an operator lays a 3+3 cluster on three machines (a
StatefulSet of 6 spread by anti-affinity over 3 nodes). `redis-cli --cluster create` puts the three
masters on three hosts and each replica on a host other than its master's, so a master killed, or a
whole redis host lost, is survived by a replica elsewhere. Ports are unique over the cluster (r1 serves
6379 and 6380, r2 6381 and 6382, r3 6383 and 6384), so a port names a node.

`deploy/local/redis_cluster.py` speaks to nodes on loopback only; this module asks them over the
bridge (the harness is in the root namespace), with the same checks for "the cluster is whole".
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from taskherd.deploy.local import binaries
from tests.hosts.net import HostsError

HOSTS = 3
PER_HOST = 2
FIRST_PORT = 6379
NODE_TIMEOUT_MS = 2000
"""--cluster-node-timeout: a master silent this long is failed over (Redis's default is 15 s)."""


def ports_of(index: int) -> list[int]:
    """The ports of the nodes on redis host `index` (0-based)."""
    return [FIRST_PORT + PER_HOST * index + k for k in range(PER_HOST)]


@dataclass(frozen=True, slots=True)
class Node:
    """One line of CLUSTER NODES, as one node sees the cluster."""

    id: str
    ip: str
    port: int
    master: bool
    master_id: str
    failed: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


def client(address: str, timeout: float = 2.0) -> redis.Redis:
    ip, _, port = address.rpartition(":")
    return redis.Redis(ip, int(port), socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)


def call(address: str, *args: str) -> Any:
    with client(address) as r:
        return r.execute_command(*args)


def info(address: str) -> dict[str, str]:
    text = str(call(address, "CLUSTER", "INFO"))
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def nodes(address: str) -> list[Node]:
    """The cluster as the node at `address` sees it."""
    found = []
    for line in str(call(address, "CLUSTER", "NODES")).splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        flags = set(f[2].split(","))
        ip, _, port = f[1].split("@", 1)[0].rpartition(":")
        slots = tuple((int(a), int(b or a)) for a, _, b in (s.partition("-") for s in f[8:] if not s.startswith("[")))
        found.append(Node(f[0], ip, int(port or 0), "master" in flags, "" if f[3] == "-" else f[3],
                          bool(flags & {"fail", "fail?"}), slots))
    return found


def master_of(addresses: list[str], key: str) -> Node:
    """The live master serving `key`'s slot, as the first node that answers sees it."""
    last: Exception | None = None
    for address in addresses:
        try:
            slot = int(call(address, "CLUSTER", "KEYSLOT", key))
            for node in nodes(address):
                if node.master and not node.failed and any(lo <= slot <= hi for lo, hi in node.slots):
                    return node
            raise HostsError(f"{address} sees no live master for slot {slot}")
        except (redis.RedisError, OSError, HostsError) as exc:
            last = exc
    raise HostsError(f"no node says who serves {key!r}: {last}")


def create(addresses: list[str], log: Path, timeout_s: float = 60) -> None:
    """3 masters with a replica each, formed from the harness over the bridge."""
    argv = [binaries.find("redis-cli"), "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"--- {time.strftime('%H:%M:%S')}: {' '.join(argv)}\n".encode())
        out.flush()
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout_s).returncode
    if code:
        raise HostsError(f"redis-cli --cluster create failed (exit {code}), see {log}")


def unsettled(addresses: list[str]) -> str:
    """Why the cluster is not whole yet ("" when it is): every node says cluster_state:ok, knows every
    node, sees none failed and no master without slots, and (a replica) is in sync with its master."""
    for address in addresses:
        try:
            view = info(address)
            if view.get("cluster_state") != "ok":
                return f"{address}: cluster_state:{view.get('cluster_state')}"
            if view.get("cluster_known_nodes") != str(len(addresses)):
                return f"{address} knows {view.get('cluster_known_nodes')} of {len(addresses)} nodes"
            seen = nodes(address)
            if failed := [n.address for n in seen if n.failed]:
                return f"{address} sees {', '.join(failed)} failing"
            if idle := [n.address for n in seen if n.master and not n.slots]:
                return f"{address} sees {', '.join(idle)} as master(s) of no slot"
            with client(address) as r:
                repl = r.info("replication")
            if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                return f"{address}: replica not yet in sync with its master"
        except (redis.RedisError, OSError) as exc:
            return f"{address}: {exc}"
    return ""


def wait_ok(addresses: list[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while why := unsettled(addresses):
        if time.monotonic() > deadline:
            raise HostsError(f"the Redis cluster did not settle within {timeout_s:.0f} s: {why}")
        time.sleep(0.1)


def masters(addresses: list[str]) -> list[Node]:
    """The live masters, as the first node that answers sees them."""
    for address in addresses:
        try:
            return [n for n in nodes(address) if n.master and not n.failed and n.slots]
        except (redis.RedisError, OSError):
            continue
    raise HostsError("no Redis cluster node answers")
