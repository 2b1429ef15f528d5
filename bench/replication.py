"""`python -m bench.replication`: what a Redis Cluster and an acknowledged replica cost a submit.

On one Redis a submit is one script; on a Redis Cluster (3 masters + 3 replicas, all on this machine)
three round trips (claim the ids, create them in the job's slot, confirm; `StateStore.submit`), each
to the nodes of its keys (one Redis is measured in three steps too, beside its one script); with
`[redis].wait_replicas = 1` the last one ends with `WAIT 1` on each node written to, so a submit is
answered only once a replica holds it (a master killed then loses none of it). Measured through
`StateStore.submit` (no API, no NSQ), one client thread, batches of 1 and of 100 tasks, each in a job
of its own: latency p50/p99 of a batch and tasks per second. Every server fsyncs its AOF before it
replies (`appendfsync always`), as taskherd's own.

Prints a table and writes bench/results/replication-TIMESTAMP.json.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RedisServer, log, port_free, save_result
from taskherd.config import from_dict
from taskherd.store.state_store import NewTask, StateStore

ROUNDS = {1: 2000, 100: 200}
"""Batches timed per batch size (after 10% as many untimed to warm up)."""


def measure(store: StateStore, size: int, rounds: int, tag: str) -> dict[str, float]:
    times = []
    for r in range(rounds + rounds // 10):
        job = f"{tag}-{size}-{r}"
        batch = [NewTask(f"{job}-{i}", job, "t", "{}", "d", 3, 60.0) for i in range(size)]
        t0 = time.perf_counter()
        out = store.submit(job, batch)
        if r >= rounds // 10:
            times.append(time.perf_counter() - t0)
        assert out == ["created"] * size, out[:3]
    times.sort()
    return {"p50_ms": round(statistics.median(times) * 1000, 3), "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 3),
            "tasks_per_s": round(size * len(times) / sum(times))}


def start_cluster(base: int, tmp: Path) -> list[RedisServer]:
    ports = list(range(base, base + 6))
    cluster = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")
    nodes = [RedisServer(p, tmp / f"node-{p}", appendfsync="always", extra=cluster).start() for p in ports]
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "1",
                    "--cluster-yes"], check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 30
    while any("cluster_state:ok" not in subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True,
                                                       text=True).stdout for p in ports):
        if time.monotonic() > deadline:
            raise SystemExit("redis cluster did not reach cluster_state:ok in 30 s")
        time.sleep(0.2)
    return nodes


def main() -> int:
    single = next(p for p in range(27600, 27700) if port_free(p))
    base = next(p for p in range(27700, 27800, 10) if all(port_free(p + i) for i in range(6)))
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    with tempfile.TemporaryDirectory(prefix="taskherd-bench-replication-") as tmp:
        servers = [RedisServer(single, Path(tmp) / "single", appendfsync="always").start()]
        try:
            servers += start_cluster(base, Path(tmp))
            layouts = [("one Redis, one script", {"port": single}, True),
                       ("one Redis, three steps", {"port": single}, False),
                       ("Redis Cluster 3+3", {"cluster_nodes": [f"127.0.0.1:{base}"]}, False),
                       ("Redis Cluster 3+3, wait_replicas 1", {"cluster_nodes": [f"127.0.0.1:{base}"], "wait_replicas": 1},
                        False)]
            for name, redis_cfg, whole in layouts:
                store = StateStore(from_dict({"redis": redis_cfg}, source="<bench>").redis)
                store.one_redis = whole
                for size, rounds in ROUNDS.items():
                    row = {"layout": name, "batch": size, **measure(store, size, rounds, f"b{len(report['rows'])}")}
                    report["rows"].append(row)
                    log(f"{name:<36} batch {size:>3}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                        f"{row['tasks_per_s']:,} tasks/s")
                store.close()
        finally:
            for server in servers:
                server.stop()
    save_result("replication", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
