"""The dashboard's series in Redis: counted where they happened, bounded by their retention, read
back as steps with percentiles; and kept by a system teardown's leftover check (statistics, not state)."""

from __future__ import annotations

import time

from taskherd.api.ui.charts import percentile, steps
from taskherd.store import keys
from taskherd.store.series import RETENTION_S, RUN_TIME_BUCKETS_S, Execution, bucket
from taskherd.store.state_store import StateStore
from tests.helpers import Services


def test_executions_count_at_their_start_and_end_seconds_and_archives_at_now(clean: Services) -> None:
    store = StateStore(clean.settings.redis)
    now_ms = int(time.time() * 1000)
    start = now_ms - 10_000
    store.series.record([Execution(start, 0.2), Execution(start, 3.5), Execution(start + 1000, 0.004)],
                        ["succeeded", "succeeded", "failed"], now_ms)
    window = dict(store.series.window(now_ms // 1000, 60))
    s = start // 1000
    assert window[s]["started"] == 2 and window[s + 1]["started"] == 1
    assert window[(start + 3500) // 1000]["finished"] >= 1
    assert window[now_ms // 1000]["succeeded"] == 2 and window[now_ms // 1000]["failed"] == 1
    assert sum(row.get(f"rt:{bucket(0.2)}", 0) for row in window.values()) == 1
    # every hash expires by its second + RETENTION_S: the series never outgrows its retention
    for second in (s, s + 1, now_ms // 1000):
        ttl = store.redis.ttl(keys.series(second))
        assert 0 < ttl <= RETENTION_S, ttl
    # what is already past the retention is not written at all
    store.series.record([Execution(now_ms - (RETENTION_S + 60) * 1000, 0.1)], [], now_ms)
    assert not store.redis.exists(keys.series((now_ms - (RETENTION_S + 60) * 1000) // 1000))
    # and a system teardown does not call them leftovers
    assert not [k for k in store.keyspace.leftovers() if k.startswith(keys.SERIES)]
    store.close()


def test_percentiles_interpolate_within_buckets_and_steps_average_per_second() -> None:
    counts = [0] * (len(RUN_TIME_BUCKETS_S) + 1)
    counts[bucket(0.3)] = 100  # all in (0.25, 0.5]
    assert 0.25 < percentile(counts, 0.5) <= 0.5
    assert percentile([0] * len(counts), 0.5) is None
    counts[-1] = 100  # past the last bound: only "more than 900 s" is known
    assert percentile(counts, 0.99) == RUN_TIME_BUCKETS_S[-1]
    points = steps([(t, {"started": 10, f"rt:{bucket(0.3)}": 10}) for t in range(100, 110)], 5)
    assert [p["t"] for p in points] == [100, 105] and points[0]["started"] == 10.0
    assert 0.25 < points[0]["p50"] <= 0.5 and points[1]["failed"] == 0
