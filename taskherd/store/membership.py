"""Membership: who is in the cluster (node registrations) and who leads a singleton (a lease).

A registration is a hash with a TTL plus a score in a sorted set of expiries, so a node that dies
without saying goodbye (SIGKILL, a lost machine) drops out on its own within its TTL: nothing has to
notice it. A singleton lease (the one active TimeoutWatcher) is taken and extended by one script
(`lua/hold.lua`), so it is never held by two nodes at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from importlib import resources
from typing import Any, cast

from taskherd.store import keys
from taskherd.store.connection import Client
from taskherd.store.errors import store_errors

STOP_TTL_MS = 600_000
"""How long a system teardown's request to stop (`keys.STOP`) stays, for a pod cut off from Redis
when it was made; a pod that heard it deletes its own entry as it deregisters."""


@store_errors("redis")
class Membership:
    """Thread-safe (redis-py's pool). Every method raises StoreError when Redis fails."""

    def __init__(self, client: Client) -> None:
        self._redis = client
        self._hold = client.register_script(resources.files("taskherd.store").joinpath("lua/hold.lua").read_text())

    def beat(self, node_id: str, fields: Mapping[str, str], ttl_ms: int) -> set[str]:
        """Register or refresh this node for `ttl_ms`, drop lapsed peers; the ids of the live nodes."""
        now_ms = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(keys.node(node_id), mapping=dict(fields))  # type: ignore[arg-type]
        pipe.pexpire(keys.node(node_id), ttl_ms)
        pipe.zadd(keys.NODES, {node_id: now_ms + ttl_ms})
        pipe.zremrangebyscore(keys.NODES, "-inf", now_ms)
        pipe.zrangebyscore(keys.NODES, now_ms, "+inf")
        return set(pipe.execute()[-1])

    def leave(self, node_id: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(keys.node(node_id))
        pipe.zrem(keys.NODES, node_id)
        pipe.hdel(keys.STOP, node_id)
        pipe.execute()

    def ask_to_stop(self, nodes: Mapping[str, str]) -> None:
        """Ask these pods (node id -> the `started` of their registration) to exit (`keys.STOP`)."""
        if nodes:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(keys.STOP, mapping=dict(nodes))  # type: ignore[arg-type]
            pipe.pexpire(keys.STOP, STOP_TTL_MS)
            pipe.execute()

    def asked_to_stop(self, node_id: str, started: str) -> bool:
        """Whether a system teardown asked this registration of `node_id` to exit."""
        return self._redis.hget(keys.STOP, node_id) == started

    def nodes(self) -> list[dict[str, Any]]:
        """Registrations whose TTL has not run out, oldest first."""
        now_ms = int(time.time() * 1000)
        ids = cast(list[str], self._redis.zrangebyscore(keys.NODES, now_ms, "+inf"))
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for node_id in ids:
            pipe.hgetall(keys.node(node_id))
        nodes: list[dict[str, Any]] = [n for n in pipe.execute() if n]
        return sorted(nodes, key=lambda n: float(n.get("started", 0)))

    def hold(self, lease: str, holder: str, ttl_ms: int) -> tuple[str | None, int]:
        """Take or extend a singleton lease: ('taken', expiry) if it was free, ('held', expiry) if
        extended, (None, 0) if another holds it. `expiry`: when it lapses, in ms on Redis's clock."""
        got, expiry = self._hold(keys=[lease], args=[holder, ttl_ms])
        return {1: "held", 2: "taken"}.get(int(got)), int(expiry)

    def holder(self, lease: str) -> str | None:
        return cast(str | None, self._redis.get(lease))
