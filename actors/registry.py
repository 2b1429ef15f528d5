"""Registry: this node's registration in Redis, kept alive by heartbeats, and the view of its peers.

A registration is a hash with a TTL plus a score in a sorted set of expiries, so a node that dies
without saying goodbye (SIGKILL, a lost machine) drops out on its own within `node_ttl_s`: nothing
has to notice it. A clean stop deregisters at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import pykka
import redis

from taskherd import __version__
from taskherd.config.settings import RegistrySettings
from taskherd.store import keys
from taskherd.supervisor import Supervised
from taskherd.actors.ticker import Ticker

log = logging.getLogger("taskherd.registry")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node says of itself when it registers."""

    id: str
    role: str
    host: str
    pid: int
    slots: int
    version: str
    started: float
    """Unix time the process started."""

    @staticmethod
    def for_this_process(role: str, slots: int) -> "NodeInfo":
        host = socket.gethostname()
        return NodeInfo(f"{role}-{host}-{os.getpid()}", role, host, os.getpid(), slots, __version__, time.time())


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Tell (from the ticker): refresh the registration and look at the peers."""


def live_nodes(client: redis.Redis) -> list[dict[str, Any]]:
    """Registrations whose TTL has not run out, oldest first."""
    now_ms = int(time.time() * 1000)
    ids = client.zrangebyscore(keys.NODES, now_ms, "+inf")
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for node_id in ids:
        pipe.hgetall(keys.node(node_id))
    nodes = [n for n in pipe.execute() if n]
    return sorted(nodes, key=lambda n: float(n.get("started", 0)))


class Registry(Supervised, pykka.ThreadingActor):
    def __init__(self, client: redis.Redis, info: NodeInfo, settings: RegistrySettings, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.client, self.info, self.settings = client, info, settings
        self.peers: set[str] = set()
        self._ticker: Ticker | None = None

    def on_start(self) -> None:
        try:
            self._beat()
        except redis.RedisError as exc:  # a pod may start before Redis: heartbeats will retry
            log.warning("first registration failed (will retry): %s", exc)
        self._ticker = Ticker(self.actor_ref, Heartbeat(), self.settings.heartbeat_s).start()
        log.info("registered node %s (%s, %d slots)", self.info.id, self.info.role, self.info.slots)

    def on_stop(self) -> None:
        if self._ticker:
            self._ticker.stop()
        try:
            self.client.pipeline(transaction=False).delete(keys.node(self.info.id)).zrem(keys.NODES, self.info.id).execute()
            log.info("deregistered node %s", self.info.id)
        except redis.RedisError as exc:
            log.warning("could not deregister %s (its registration expires by itself): %s", self.info.id, exc)
        super().on_stop()

    def on_receive(self, message: Any) -> Any:
        match message:
            case Heartbeat():
                try:
                    self._beat()
                except redis.RedisError as exc:
                    log.warning("heartbeat failed (will retry): %s", exc)
            case _:
                log.warning("registry: unknown message %r", message)

    def _beat(self) -> None:
        ttl_ms = int(self.settings.node_ttl_s * 1000)
        now_ms = int(time.time() * 1000)
        fields = _fields(self.info)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(keys.node(self.info.id), mapping=fields)
        pipe.pexpire(keys.node(self.info.id), ttl_ms)
        pipe.zadd(keys.NODES, {self.info.id: now_ms + ttl_ms})
        pipe.zremrangebyscore(keys.NODES, "-inf", now_ms)
        pipe.zrangebyscore(keys.NODES, now_ms, "+inf")
        live = set(pipe.execute()[-1])
        for joined in sorted(live - self.peers - {self.info.id}):
            log.info("peer joined: %s", joined)
        for left in sorted(self.peers - live):
            log.info("peer left: %s", left)
        self.peers = live


def _fields(info: NodeInfo) -> dict[str, str]:
    return {f: str(getattr(info, f)) for f in NodeInfo.__dataclass_fields__}
