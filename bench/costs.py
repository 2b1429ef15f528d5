"""`python -m bench.costs [N]`: what one task costs each service, the inputs of the capacity model in
the README ("Running on many machines").

Starts the bench's cluster (1 manager + 2 worker pods x 2 slots), warms it up, then runs N no-op
tasks (default 5,000) submitted in batches of 100 and waits for the job; meanwhile it counts, per
task: Redis commands by name and bytes in and out (INFO commandstats and stats), NSQ messages
published by topic (nsqd /stats), MySQL statements, rows written and bytes received (SHOW GLOBAL
STATUS), and CPU seconds per process. Prints a table and writes bench/results/costs-TIMESTAMP.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pymysql

from bench.common import log, save_result
from bench.cpu import cpu_by_process
from bench.taskherd_runs import Taskherd

MYSQL_COUNTERS = ("Com_insert", "Com_select", "Com_commit", "Innodb_rows_inserted", "Innodb_rows_updated",
                  "Bytes_received")


def redis_counters(th: Taskherd) -> dict[str, float]:
    info = th.store.redis.info("commandstats")
    stats = th.store.redis.info("stats")
    out = {name.removeprefix("cmdstat_"): float(v["calls"]) for name, v in info.items()}
    out["(bytes in)"] = float(stats["total_net_input_bytes"])
    out["(bytes out)"] = float(stats["total_net_output_bytes"])
    return out


def nsq_counters(th: Taskherd) -> dict[str, float]:
    nsq = th.settings.nsq
    stats = httpx.get(f"http://{nsq.nsqd_http_addresses[0]}/stats", params={"format": "json"}, timeout=10).json()
    return {t["topic_name"]: float(t["message_count"]) for t in stats.get("topics") or []}


def mysql_counters(th: Taskherd) -> dict[str, float]:
    m = th.settings.mysql
    conn = pymysql.connect(host=m.host, port=m.port, user=m.user, password=m.password)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS")
            status = dict(cur.fetchall())
    finally:
        conn.close()
    return {k: float(status.get(k, 0)) for k in MYSQL_COUNTERS}


def delta(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {k: round((after[k] - before.get(k, 0.0)) / n, 3) for k in sorted(after) if after[k] != before.get(k, 0.0)}


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 5000
    data = Path(tempfile.mkdtemp(prefix="taskherd-costs-"))
    with Taskherd(2, 2, data, (data / "cluster.log").open("w")) as th:
        th.warm_up(500)
        time.sleep(1.0)  # the warm-up's last archive and summary writes land before the counters are read
        job = f"costs-{th.tag}"
        counters = (redis_counters(th), nsq_counters(th), mysql_counters(th), cpu_by_process(str(data)))
        for start in range(0, n, 100):
            th.client.submit([{"id": f"{job}-{i}", "type": "noop", "job": job} for i in range(start, min(n, start + 100))])
        status = th.wait_done(job, 600)
        after = (redis_counters(th), nsq_counters(th), mysql_counters(th), cpu_by_process(str(data)))
        ok = th.check_job(job, n, status)["ok"]
        cpu: dict[str, float] = {}
        for pid, (name, seconds) in after[3].items():
            cpu[name] = cpu.get(name, 0.0) + seconds - counters[3].get(pid, (name, 0.0))[1]
        report: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "tasks": n, "batch": 100, "checks_ok": ok,
            "redis_per_task": delta(counters[0], after[0], n), "nsq_messages_per_task": delta(counters[1], after[1], n),
            "mysql_per_task": delta(counters[2], after[2], n),
            "cpu_ms_per_task": {k: round(v / n * 1000, 3) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])}}
        th.teardown(job)
    for section in ("redis_per_task", "nsq_messages_per_task", "mysql_per_task", "cpu_ms_per_task"):
        log(f"{section}: " + ", ".join(f"{k} {v:g}" for k, v in report[section].items()))
    log(f"every task ran and was archived once: {report['checks_ok']}")
    save_result("costs", report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
