"""The local Redis Cluster (`[redis].cluster_nodes`): form it once, wait until it serves, say who serves what.

Spoken in raw RESP, as services.py's PING: only taskherd.store may import redis-py.

Each node keeps `nodes.conf` and its AOF in its own directory, so a node started again on it rejoins by
itself: as the master it was, or as the replica of the one promoted in its place while it was down. The
cluster is formed (`redis-cli --cluster create`, 3 masters each with a replica) only when every node
starts with no cluster of its own; nodes of which only some remember a cluster are refused, naming them,
rather than guessed at.

Bus ports: every node's cluster bus listens on its port + `BUS_OFFSET` (Redis's own default, + 10000,
would land in the tests' block of ports for `taskherd up`'s 16379...).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from taskherd.config.settings import RedisSettings
from taskherd.deploy.local import binaries
from taskherd.errors import ServiceError

MIN_NODES = 6
"""3 masters, each with one replica: a master's loss is survived once its replica takes over."""
BUS_OFFSET = 100
KEY = "[redis].cluster_nodes"
SLOTS = 16384
_LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True, slots=True)
class Node:
    """One line of CLUSTER NODES, as one node sees the cluster."""

    id: str
    port: int
    master: bool
    """False: a replica (of `master_id`)."""
    master_id: str
    failed: bool
    """Flagged `fail` or `fail?` by the node asked."""
    slots: tuple[tuple[int, int], ...]
    """Slot ranges it serves (a master), first and last included."""


def ports(settings: RedisSettings) -> list[int]:
    """The ports of `[redis].cluster_nodes`, which a local cluster starts: all on loopback, at least
    `MIN_NODES`, none twice. Empty for a single instance."""
    found: list[int] = []
    for node in settings.cluster_nodes:
        host, _, port = node.rpartition(":")
        if host not in _LOCAL_HOSTS:
            raise ServiceError(f"{KEY}: {node} is not on this machine; a local cluster starts its nodes on "
                               f"127.0.0.1 (a remote cluster is started by its own hosts, not by taskherd)")
        if int(port) + BUS_OFFSET > 65535:
            raise ServiceError(f"{KEY}: {node}: its cluster bus would need port {int(port) + BUS_OFFSET} "
                               f"(port + {BUS_OFFSET}), past 65535")
        if int(port) in found:
            raise ServiceError(f"{KEY}: port {port} is listed twice")
        found.append(int(port))
    if found and len(found) < MIN_NODES:
        raise ServiceError(f"{KEY}: a local cluster needs at least {MIN_NODES} nodes (3 masters, each with a "
                           f"replica), got {len(found)}")
    return found


def bus_port(port: int) -> int:
    return port + BUS_OFFSET


def call(port: int, password: str | None, *args: str, timeout: float = 2.0) -> Any:
    """One command on the node at `port` (after AUTH when a password is set); its reply decoded
    (bulk strings as str); an error reply raises ServiceError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock, sock.makefile("rb") as replies:
        if password:
            _send(sock, "AUTH", password)
            _read(replies)
        _send(sock, *args)
        return _read(replies)


def info(port: int, password: str | None) -> dict[str, str]:
    """CLUSTER INFO of one node: cluster_state, cluster_slots_assigned, cluster_known_nodes, ..."""
    text = call(port, password, "CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def nodes(port: int, password: str | None) -> list[Node]:
    """The cluster as the node at `port` sees it (CLUSTER NODES)."""
    found = []
    for line in call(port, password, "CLUSTER", "NODES").splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = set(fields[2].split(","))
        address = fields[1].split("@", 1)[0]
        slots = tuple(_slot_range(s) for s in fields[8:] if not s.startswith("["))
        found.append(Node(id=fields[0], port=int(address.rsplit(":", 1)[1] or 0), master="master" in flags,
                          master_id="" if fields[3] == "-" else fields[3], failed=bool(flags & {"fail", "fail?"}),
                          slots=slots))
    return found


def master_of(port: int, password: str | None, key: str) -> int:
    """The port of the master serving `key`'s slot, as the node at `port` sees it."""
    slot = int(call(port, password, "CLUSTER", "KEYSLOT", key))
    for node in nodes(port, password):
        if node.master and not node.failed and any(lo <= slot <= hi for lo, hi in node.slots):
            return node.port
    raise ServiceError(f"redis: no live master serves slot {slot} (key {key!r}) as node {port} sees it")


def form(node_ports: list[int], password: str | None, log: Path, timeout_s: float) -> bool:
    """Create the cluster when no node belongs to one yet (True: it was created just now).

    Nodes of which only some remember a cluster are refused: joining them back is a decision for a
    person (`redis-cli --cluster add-node`), not for a start-up."""
    views = {port: info(port, password) for port in node_ports}
    fresh = [p for p, v in views.items() if v.get("cluster_known_nodes") == "1" and v.get("cluster_slots_assigned") == "0"]
    if not fresh:
        return False
    if len(fresh) < len(node_ports):
        raise ServiceError(f"redis: node(s) {', '.join(map(str, fresh))} belong to no cluster while the others do "
                           f"(a node's directory was deleted?); delete every DATA/redis-PORT directory to form the "
                           f"cluster afresh, or add them back with redis-cli --cluster add-node")
    _create(node_ports, password, log, timeout_s)
    return True


def wait_ok(node_ports: list[int], password: str | None, timeout_s: float, *, expect: int | None = None) -> None:
    """Until every node in `node_ports` says cluster_state:ok, knows `expect` nodes (default: as many
    as `node_ports`), sees none failed and every master serving slots, and (a replica) is in sync with
    its master: a node that was down is back in, and the cluster would survive a master's loss."""
    expect = len(node_ports) if expect is None else expect
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        last = _unsettled(node_ports, password, expect)
        if not last:
            return
        if time.monotonic() >= deadline:
            raise ServiceError(f"redis: the cluster did not settle within {timeout_s:.0f} s ({last}); see the "
                               f"nodes' logs DATA/logs/redis-PORT.log")
        time.sleep(0.1)


def _unsettled(node_ports: list[int], password: str | None, expect: int) -> str:
    """Why the cluster is not yet whole, as one node sees it; "" when every node agrees it is."""
    for port in node_ports:
        try:
            view = info(port, password)
            if view.get("cluster_state") != "ok":
                return f"node {port}: cluster_state:{view.get('cluster_state')}"
            if view.get("cluster_known_nodes") != str(expect):
                return f"node {port} knows {view.get('cluster_known_nodes')} of {expect} nodes"
            view_nodes = nodes(port, password)
            failed = [n.port for n in view_nodes if n.failed]
            if failed:
                return f"node {port} sees {', '.join(map(str, failed))} failing"
            idle = [n.port for n in view_nodes if n.master and not n.slots]
            if idle:  # a node not yet told it is a replica (formation, or a failed-over master's return)
                return f"node {port} sees {', '.join(map(str, idle))} as master(s) of no slot"
            link = _replication(port, password)
            if link.get("role") == "slave" and link.get("master_link_status") != "up":
                # A replica that never synced would refuse to take over its master ("disconnected
                # from master for longer than allowed"): the cluster does not survive a loss until then.
                return f"node {port}: replica not yet in sync with its master"
        except (OSError, ServiceError) as exc:
            return f"node {port}: {exc}"
    return ""


def _replication(port: int, password: str | None) -> dict[str, str]:
    text = call(port, password, "INFO", "replication")
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)


def _create(node_ports: list[int], password: str | None, log: Path, timeout_s: float) -> None:
    argv = [binaries.find("redis-cli"), "--cluster", "create", *(f"127.0.0.1:{p}" for p in node_ports),
            "--cluster-replicas", "1", "--cluster-yes"]
    env = {**os.environ, **({"REDISCLI_AUTH": password} if password else {})}  # not on the command line
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"--- taskherd {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode())
        out.flush()
        try:
            code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            raise ServiceError(f"redis: redis-cli --cluster create timed out after {timeout_s:.0f} s (see {log})")
    if code:
        tail = "\n".join("    " + line for line in log.read_text(errors="replace").splitlines()[-5:])
        raise ServiceError(f"redis: redis-cli --cluster create failed (exit {code}); from {log}:\n{tail}")


def _slot_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    return int(first), int(last or first)


def _send(sock: socket.socket, *args: str) -> None:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    sock.sendall(b"".join(parts))


def _read(replies: BinaryIO) -> Any:
    line = replies.readline()
    if not line.endswith(b"\r\n"):
        raise ServiceError(f"redis closed the connection mid-reply ({line[:80]!r})")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise ServiceError(f"redis answered {body.decode(errors='replace')[:200]}")
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        return None if size < 0 else replies.read(size + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [_read(replies) for _ in range(size)]
    raise ServiceError(f"redis sent an unexpected reply {line[:80]!r}")
