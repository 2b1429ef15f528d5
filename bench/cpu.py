"""`python -m bench.cpu [N]`: where a no-op task's CPU goes, process by process.

Starts the bench's taskherd cluster (1 manager + 2 worker pods x 2 slots, ports +3000), warms it up,
then submits N no-op tasks (default 5,000) and waits for the job: prints the CPU seconds (user +
system, psutil) each process spent meanwhile, per task, the analyzer's batch sizes from the manager's
/metrics and Redis's commands per task (INFO commandstats). This is the profile the README's "what
bounds it" quotes; py-spy on the pods (`py-spy record --gil -p PID`) shows where inside a pod.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.taskherd_runs import Taskherd

SERVICES = ("nsqd", "nsqlookupd", "redis-server", "mariadbd")


def cpu_by_process(marker: str) -> dict[int, tuple[str, float]]:
    out = {}
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["name"] in SERVICES or marker in cmd or "taskherd.runners.child" in cmd:
                role = next((w for w in ("manager", "worker") if f"--role {w}" in cmd), "")
                name = p.info["name"] if p.info["name"] in SERVICES else (
                    f"pod ({role})" if role else "runner child")
                t = p.cpu_times()
                out[p.pid] = (name, t.user + t.system)
        except psutil.Error:
            pass
    return out


def machine_busy() -> float:
    """CPU seconds the whole machine spent (all cores, every process, the kernel's interrupts)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def redis_commands(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Calls and µs by command between two INFO commandstats (EVALSHA's time includes its script's
    commands, which count as calls of their own)."""
    out = {}
    for key, stat in after.items():
        was = before.get(key, {"calls": 0, "usec": 0})
        if stat["calls"] > was["calls"]:
            out[key.removeprefix("cmdstat_")] = (stat["calls"] - was["calls"], stat["usec"] - was["usec"])
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=5000, help="no-op tasks to time (default 5,000)")
    n = parser.parse_args(argv).n
    data = Path(tempfile.mkdtemp(prefix="taskherd-cpu-"))
    with Taskherd(2, 2, data, (data / "cluster.log").open("w")) as th:
        th.warm_up(500)
        before, machine_before = cpu_by_process(str(data)), machine_busy()
        commands_before, io_before = th.store.redis.info("commandstats"), th.store.redis.info("stats")
        job = f"cpu-{th.tag}"
        t0 = time.time()
        th.client.submit([{"id": f"{job}-{i}", "type": "noop", "job": job} for i in range(n)])
        status = th.wait_done(job, 600)
        wall = time.time() - t0
        after, machine = cpu_by_process(str(data)), machine_busy() - machine_before
        commands = redis_commands(commands_before, th.store.redis.info("commandstats"))
        io_after = th.store.redis.info("stats")
        io = {k: io_after[k] - io_before[k] for k in ("total_reads_processed", "total_writes_processed")}
        check = th.check_job(job, n, status)
        totals: dict[str, float] = {}
        for pid, (name, cpu) in after.items():
            totals[name] = totals.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
        print(f"{n} no-op tasks in {wall:.1f} s ({n / wall:.0f}/s, submit included); every task ran and was "
              f"archived once: {check['ok']}")
        for name, cpu in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<16} {cpu:6.2f} s CPU  {cpu / n * 1000:6.3f} ms per task")
        total = sum(totals.values())
        print(f"  {'all':<16} {total:6.2f} s CPU  {total / n * 1000:6.3f} ms per task "
              f"(2 cores at 100 % -> {2 * n / total:.0f} tasks/s)")
        print(f"  {'machine':<16} {machine:6.2f} s CPU  {machine / n * 1000:6.3f} ms per task (/proc/stat: also "
              "processes that came and went, as recycled runner children, and this script)")
        metrics = httpx.get(f"{th.cluster.api_url}/metrics", timeout=10).text
        count = next(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("taskherd_analyzer_batch_size_count"))
        total_results = next(float(line.split()[-1]) for line in metrics.splitlines()
                             if line.startswith("taskherd_analyzer_batch_size_sum"))
        print(f"  analyzer: {total_results / max(count, 1):.1f} results per batch on average")
        calls, usec = sum(c for c, _ in commands.values()), sum(u for _, u in commands.values())
        print(f"  redis: {calls / n:.1f} commands per task (those inside scripts included), {usec / n:.0f} µs "
              f"of command time per task; the costliest:")
        for name, (c, u) in sorted(commands.items(), key=lambda kv: -kv[1][1])[:10]:
            print(f"    {name:<16} {c / n:5.2f} per task  {u / n:6.1f} µs per task")
        print(f"  redis: {io['total_reads_processed'] / n:.2f} reads and {io['total_writes_processed'] / n:.2f} writes "
              "per task (each a client's round trip, or part of one)")
        th.teardown(job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
