"""The charts' arithmetic: per-second counters folded into steps, and run-time percentiles estimated
from bucket counts as Prometheus's `histogram_quantile` does (linear within the bucket)."""

from __future__ import annotations

from typing import Any

from taskherd.store.series import COUNTERS, RUN_TIME_BUCKETS_S

PERCENTILES = (0.5, 0.95, 0.99)


def percentile(counts: list[int], q: float) -> float | None:
    """The q-quantile of run times whose bucket counts are `counts` (len = buckets + 1, the last one
    open-ended); None without any."""
    total = sum(counts)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(RUN_TIME_BUCKETS_S):
                return RUN_TIME_BUCKETS_S[-1]  # past the last bound: all we know is "more than that"
            lo = RUN_TIME_BUCKETS_S[i - 1] if i else 0.0
            return lo + (RUN_TIME_BUCKETS_S[i] - lo) * (rank - seen) / n
        seen += n
    return RUN_TIME_BUCKETS_S[-1]


def steps(seconds: list[tuple[int, dict[str, int]]], step_s: int) -> list[dict[str, Any]]:
    """Points of `step_s` seconds each (the last one may be shorter): the counters as per-second
    rates over the step, and p50/p95/p99 of the run times that ended in it (seconds)."""
    points = []
    for i in range(0, len(seconds), step_s):
        chunk = seconds[i:i + step_s]
        sums = {c: sum(row.get(c, 0) for _, row in chunk) for c in COUNTERS}
        counts = [sum(row.get(f"rt:{b}", 0) for _, row in chunk) for b in range(len(RUN_TIME_BUCKETS_S) + 1)]
        point: dict[str, Any] = {"t": chunk[0][0], **{c: round(n / len(chunk), 3) for c, n in sums.items()}}
        for q in PERCENTILES:
            value = percentile(counts, q)
            point[f"p{round(q * 100)}"] = round(value, 6) if value is not None else None
        points.append(point)
    return points
