"""RQ functions. Workers: `rq worker -u URL default`, RQ's default Worker class (a forked work horse
per job), default job timeout (180 s) and no retries.
"""

from __future__ import annotations

import os
import time

import redis
from rq import Queue

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:19382/0")

_conn: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _conn
    if _conn is None:
        _conn = redis.Redis.from_url(URL)
    return _conn


def noop() -> float:
    return time.time()


def sleep(ms: float) -> float:
    t0 = time.time()
    time.sleep(ms / 1000.0)
    return t0


def mark_sleep(key: str, s: float) -> float:
    _redis().rpush(key, f"{os.getpid()} {time.time():.6f}")
    time.sleep(s)
    return s


def tree(d: int, fan: int, top: int, counter: str) -> None:
    """Fan-out emulation (RQ has no job completion): see celery_app.tree."""
    if d < top:
        q = Queue("default", connection=_redis())
        q.enqueue_many([Queue.prepare_data(tree, (d + 1, fan, top, counter)) for _ in range(fan)])
    _redis().incr(counter)
