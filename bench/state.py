"""`python -m bench.state`: the cost of Redis state as it grows, on a Redis of its own (no pods).

1. The TimeoutWatcher's sweep with 10 open jobs beside D done jobs (D = 0, 1,000, 10,000), done
   jobs settled out of the open set (as taskherd does) and, for comparison, left in it (as before
   `settle.lua`): the sweep's work grows with open jobs, not with every job ever run.
2. The teardown of a 10-task job with 0 and 1,000,000 unrelated keys in Redis, by
   the job's own keys (taskherd now) and by SCAN of the keyspace plus HSCAN of the task index (before).

Median of 5 timings each; prints a table and writes bench/results/state-TIMESTAMP.json.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import RedisServer, log, port_free, save_result
from taskherd.actors.context import PodContext
from taskherd.actors.timeout_watcher import TimeoutWatcher
from taskherd.config import from_dict
from taskherd.nsq.publisher import Publisher
from taskherd.store import keys
from taskherd.store.state_store import NewTask, StateStore


def median_ms(fn: Callable[[], object], n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def finished_job(store: StateStore, job: str) -> None:
    store.submit(job, [NewTask("t", job, "t", "{}", "d", 3, 60.0)])
    lease, _ = store.lease(job, "t", "e", "w", 60_000, "t")
    assert not isinstance(lease, str)
    store.finish(lease, "ok", {}, "", -1, {})
    store.claim_results(job, 256, 60_000)
    store.retire(job, [("t", "succeeded")])


def sweep_costs(store: StateStore, watcher: TimeoutWatcher) -> list[dict[str, float]]:
    store.redis.flushdb()
    for j in range(10):
        store.submit(f"open-{j}", [NewTask(f"o{j}-{i}", f"open-{j}", "t", "{}", "d", 3, 60.0) for i in range(10)])
    rows, made = [], 0
    for done in (0, 1_000, 10_000):
        for j in range(made, done):
            finished_job(store, f"done-{j}")
        made = done
        settle = watcher._settle
        watcher._settle = lambda job: False  # type: ignore[method-assign]  # as before settle.lua: swept forever
        unsettled = median_ms(watcher.sweep)
        watcher._settle = settle  # type: ignore[method-assign]
        watcher.sweep()  # settles them
        settled = median_ms(watcher.sweep)
        rows.append({"done_jobs": done, "sweep_ms_settled": round(settled, 2), "sweep_ms_unsettled": round(unsettled, 2)})
        log(f"sweep, 10 open jobs and {done} done: {settled:.2f} ms (done jobs settled), "
            f"{unsettled:.2f} ms (left in the open set)")
        if done:  # back into the open set for the next, larger round's "before" figure
            store.redis.sadd(keys.JOBS, *[f"done-{j}" for j in range(done)])
    return rows


def teardown_costs(store: StateStore) -> list[dict[str, float]]:
    rows = []
    for unrelated in (0, 1_000_000):
        store.redis.flushdb()
        for start in range(0, unrelated, 2000):
            store.redis.mset({f"unrelated:{i}": "x" for i in range(start, start + 2000)})
        now = median_ms(lambda: _small_job(store) and store.teardown("small"))
        before = median_ms(lambda: _small_job(store) and _scan_teardown(store, "small"))
        base = median_ms(lambda: _small_job(store))
        rows.append({"unrelated_keys": unrelated, "teardown_ms": round(now - base, 2),
                     "scan_teardown_ms": round(before - base, 2)})
        log(f"teardown of a 10-task job beside {unrelated:,} keys: {now - base:.2f} ms (by its own keys), "
            f"{before - base:.2f} ms (by SCAN and HSCAN, as before)")
    return rows


def _small_job(store: StateStore) -> bool:
    store.submit("small", [NewTask(f"s{i}", "small", "t", "{}", "d", 3, 60.0) for i in range(10)])
    return True


def _scan_teardown(store: StateStore, job: str) -> None:
    """The teardown taskherd had before: SCAN the keyspace for the job's tag and the task index."""
    r = store.redis
    found = list(r.scan_iter(match=keys.job_pattern(job), count=1000))
    if found:
        r.delete(*found)
    stale = [name for name in r.scan_iter(match=keys.index("*"), count=1000) if r.get(name) == job]
    if stale:
        r.delete(*stale)
    r.srem(keys.JOBS, job)
    list(r.scan_iter(match=keys.job_pattern(job), count=1000))  # and its check for leftovers


def main() -> int:
    port = next(p for p in range(27400, 27500) if port_free(p))
    with tempfile.TemporaryDirectory(prefix="taskherd-bench-state-") as tmp:
        redis = RedisServer(port, Path(tmp), appendfsync=None).start()
        try:
            settings = from_dict({"redis": {"port": port},
                                  # no nsqd: the sweep's backlog check answers at once, leaving Redis's share
                                  "nsq": {"nsqd_http_addresses": [], "nsqd_tcp_address": "127.0.0.1:1"}})
            store = StateStore(settings.redis)
            watcher = TimeoutWatcher(PodContext(settings, "bench", store, Publisher(settings.nsq)), supervisor=None,
                                     slot="watcher")
            report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "sweep": sweep_costs(store, watcher),
                      "teardown": teardown_costs(store)}
        finally:
            redis.stop()
    save_result("state", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
