"""Dramatiq with its Redis broker and the Results middleware (Redis backend); defaults otherwise
(heartbeat timeout 60 s, maintenance chance 1/1000 commands).

Worker: `dramatiq bench.peers.dramatiq_actors --processes SLOTS --threads 1` (cwd = repository root).
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:19381/0")

broker = RedisBroker(url=URL)
backend = RedisBackend(url=URL)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)

_counter: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(URL)
    return _counter


@dramatiq.actor(store_results=True)
def noop() -> float:
    return time.time()


@dramatiq.actor(store_results=True)
def sleep(ms: float) -> float:
    t0 = time.time()
    time.sleep(ms / 1000.0)
    return t0


@dramatiq.actor(store_results=True)
def mark_sleep(key: str, s: float) -> float:
    _redis().rpush(key, f"{os.getpid()} {time.time():.6f}")
    time.sleep(s)
    return s


@dramatiq.actor
def tree(d: int, fan: int, top: int, counter: str) -> None:
    """Fan-out emulation (no job completion in Dramatiq): see celery_app.tree."""
    if d < top:
        for _ in range(fan):
            tree.send(d + 1, fan, top, counter)
    _redis().incr(counter)
