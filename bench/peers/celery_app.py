"""Celery with a Redis broker and result backend, `acks_late=True`, `worker_prefetch_multiplier=1`;
everything else Celery's default (prefork pool, visibility timeout 1 h).

Worker: `celery -A bench.peers.celery_app worker -c SLOTS` (cwd = repository root).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:19380/0")

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)

_counter: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(URL)
    return _counter


@app.task(name="bench.noop")
def noop() -> float:
    """Returns its start time (the driver takes the first start of a run from it)."""
    return time.time()


@app.task(name="bench.sleep")
def sleep(ms: float) -> float:
    t0 = time.time()
    time.sleep(ms / 1000.0)
    return t0


@app.task(name="bench.mark_sleep")
def mark_sleep(key: str, s: float) -> float:
    _redis().rpush(key, f"{os.getpid()} {time.time():.6f}")
    time.sleep(s)
    return s


@app.task(name="bench.tree")
def tree(d: int, fan: int, top: int, counter: str) -> float:
    """Fan-out emulation: a task spawns its children itself, then counts itself done (Celery has no
    job completion: the driver waits for the counter to reach the known tree size)."""
    t0 = time.time()
    if d < top:
        for _ in range(fan):
            tree.delay(d + 1, fan, top, counter)
    _redis().incr(counter)
    return t0
