"""The dashboard's recent history: tasks started and finished per second, and how long executions
ran, kept in Redis for `RETENTION_S` and no longer.

One hash per second (`keys.series`), its fields counters: `started` and `finished` (executions, at the
second each started and ended), `succeeded` / `failed` / `cancelled` (tasks archived in that final
state, at the second they were archived) and `rt:I` (executions whose run time fell in bucket I of
`RUN_TIME_BUCKETS_S`). Each hash expires `RETENTION_S` after its second, so the series is bounded
whatever the load (at most RETENTION_S small hashes) and survives a manager's restart (unlike
Flower's in-memory history). A batch of archived tasks is one pipelined round trip.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from taskherd.store import keys
from taskherd.store.connection import Client
from taskherd.store.errors import store_errors

RETENTION_S = 900
"""Seconds of history kept: 15 minutes, what the dashboard's charts show at most."""
RUN_TIME_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
"""Upper bounds of the run-time buckets (the last bucket, past them, is open); those of the
`taskherd_execution_seconds` histogram, so the charts and Prometheus agree."""
COUNTERS = ("started", "finished", "succeeded", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class Execution:
    """One execution, as the dashboard counts it."""

    started_ms: int
    duration_s: float


def bucket(duration_s: float) -> int:
    """The run-time bucket of a duration: the first whose bound holds it."""
    return bisect.bisect_left(RUN_TIME_BUCKETS_S, duration_s)


@store_errors("redis")
class Series:
    """Thread-safe (redis-py's pool). Every method raises StoreError when Redis fails."""

    def __init__(self, client: Client) -> None:
        self._redis = client

    def record(self, executions: Iterable[Execution], archived: Iterable[str], now_ms: int) -> None:
        """Count executions (at their start and end seconds) and tasks archived now in final states."""
        counts: Counter[tuple[int, str]] = Counter()
        for e in executions:
            counts[(e.started_ms // 1000, "started")] += 1
            end = (e.started_ms + int(e.duration_s * 1000)) // 1000
            counts[(end, "finished")] += 1
            counts[(end, f"rt:{bucket(e.duration_s)}")] += 1
        for state in archived:
            counts[(now_ms // 1000, state)] += 1
        if not counts:
            return
        oldest = now_ms // 1000 - RETENTION_S
        pipe = self._redis.pipeline(transaction=False)
        for second in sorted({s for s, _ in counts if s > oldest}):
            for (s, field), n in counts.items():
                if s == second:
                    pipe.hincrby(keys.series(second), field, n)
            pipe.expireat(keys.series(second), second + RETENTION_S)
        pipe.execute()

    def window(self, now_s: int, seconds: int) -> list[tuple[int, dict[str, int]]]:
        """The last `seconds` seconds up to `now_s` (at most RETENTION_S), oldest first, each with its
        counters (a second nothing happened in has none)."""
        first = now_s - min(seconds, RETENTION_S) + 1
        pipe = self._redis.pipeline(transaction=False)
        for second in range(first, now_s + 1):
            pipe.hgetall(keys.series(second))
        rows = pipe.execute()
        return [(first + i, {k: int(v) for k, v in row.items()}) for i, row in enumerate(rows)]
