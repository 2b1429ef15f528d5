"""The Redis client every store uses: one server, or a Redis Cluster (`[redis].cluster_nodes`)."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from taskherd.config.settings import RedisSettings

Client = redis.Redis | RedisCluster
"""One Redis server, or a Redis Cluster (`[redis].cluster_nodes`): the same commands either way, as
every multi-key command and script stays within one hash slot (`keys`)."""


def connect(settings: RedisSettings) -> Client:
    common: dict[str, Any] = {"password": settings.password, "socket_timeout": settings.socket_timeout_s,
                              "socket_connect_timeout": settings.socket_timeout_s, "decode_responses": True}
    if settings.cluster_nodes:
        nodes = [ClusterNode(host, int(port))  # type: ignore[no-untyped-call]
                  for host, _, port in (n.rpartition(":") for n in settings.cluster_nodes)]
        return RedisCluster(startup_nodes=nodes, retry=_retry(), **common)
    return redis.Redis(host=settings.host, port=settings.port, db=settings.db, health_check_interval=30,
                       retry_on_error=[redis.ConnectionError], retry=_retry(), **common)


def _retry() -> Any:
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)


