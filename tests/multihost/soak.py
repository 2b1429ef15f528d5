"""The nemesis soak: `make soak` (SOAK_S seconds, 1800 by default; SOAK_SEED to replay a run) or
`python -m tests.multihost.soak`, and a 3-minute run in `make test` (tests/multihost/test_soak.py).

On 8 hosts (infra, m1, m2, w1, w2, and r1..r3 holding a Redis Cluster of 3 masters + 3 replicas; 5
with `TASKHERD_HOSTS_REDIS=single`, Redis then on infra) a steady producer submits exe tasks (a tenth fail their first
attempt, so the watcher promotes retries; one in twenty outlives a lease) while job trees run one after
another (an analyzer in the manager pods makes 3 children per task, 3 levels deep: 40 tasks each).
Meanwhile a nemesis, seeded (the seed is printed), picks a fault at random among `nemesis.faults()`,
holds it, heals, pauses a little, and again. At the end everything is healed, the producer finishes
the task it was submitting, every job is waited for, and the whole history is checked:

- lost: accepted (201 or 200 exists) and never archived; unexpected: archived and never accepted;
- double-final: a second archive row or record of a task, or a second `ok` execution;
- overlaps: two live executions of one task at once (the executor's flock), each explained by a
  pause of the first one's host (a frozen executor keeps its lock while another host runs the task), or
  by the kill of the Redis master serving the task's job while the first one ran (replication is
  asynchronous: its lease, or the renewal of it, may not have reached the replica promoted in its
  place), or counted as unexplained;
- the watcher acting out of turn: a requeue or promotion Redis received from a manager that was not
  the latest to take the watcher lease.

Each run's figures are appended to tests/multihost/soak_runs.md.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
from redis.crc import key_slot

from taskherd.store import keys
from tests.hosts import Cluster, have_root
from tests.hosts.cluster import DATABASE, MYSQL_PASSWORD, MYSQL_USER, PORTS
from tests.multihost import nemesis
from tests.multihost.checker import Call, read_calls
from tests.multihost.soak_funcs import tree_ids

RUNS = Path(__file__).with_name("soak_runs.md")
TREE = {"depth": 3, "fanout": 3}
DRAIN_S = 90.0
"""How long every job may take to be done once the nemesis has stopped and everything is healed."""


@dataclass
class Load:
    """The producer and the trees: what was accepted, by job."""

    managers: nemesis.Managers
    dir: Path
    seed: int
    accepted: dict[str, list[str]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    rate: float = 3.0

    def payload(self, task_id: str, rng: random.Random) -> dict[str, Any]:
        long = rng.random() < 0.05
        return {"id": task_id, "dir": str(self.dir), "sleep_s": round(rng.uniform(6, 8) if long else rng.uniform(0.1, 0.8), 2),
                "fail_once": rng.random() < 0.1}

    def _submit(self, task: dict[str, Any]) -> None:
        """Until a definite answer: an id whose fate is unknown is sent again (submit is idempotent)."""
        while True:
            try:
                answer = self.managers.call("submit", task)
            except nemesis.ERRORS:
                time.sleep(0.5)  # a manager is down or cut off: the next one, or this one again
                continue
            if answer["status"] not in ("created", "exists"):
                raise AssertionError(f"submit {task['id']}: {answer}")
            self.accepted.setdefault(task["job"], []).append(task["id"])
            return

    def steady(self) -> None:
        rng, job, n = random.Random(self.seed), f"steady-{self.seed}", 0
        while not self.stop.wait(1 / self.rate):
            n += 1
            task_id = f"{job}-{n:06d}"
            self._submit({"id": task_id, "type": "soak", "job": job, "payload": self.payload(task_id, rng)})

    def trees(self) -> None:
        rng, k = random.Random(self.seed + 1), 0
        while not self.stop.is_set():
            k += 1
            job = root = f"tree-{self.seed}-{k:03d}"
            payload = {**self.payload(root, rng), **TREE, "sleep_s": 0.3, "fail_once": False}
            self._submit({"id": root, "type": "soak", "job": job, "payload": payload})
            self.accepted[job] = tree_ids(root, TREE["depth"], TREE["fanout"])
            self.managers.wait(job, timeout=600)


@dataclass
class Nemesis:
    cluster: Cluster
    rng: random.Random
    stop: threading.Event = field(default_factory=threading.Event)
    faults: list[nemesis.Fault] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(2, 6)):
            kinds = nemesis.faults(self.cluster)
            kind = self.rng.choice(sorted(kinds))
            try:
                self.faults.append(kinds[kind](self.cluster, self.rng, self.stop))
                print(f"  nemesis {time.strftime('%H:%M:%S')} {kind} {self.faults[-1].host} "
                      f"{self.faults[-1].end - self.faults[-1].start:.1f} s", flush=True)
                nemesis.restore(self.cluster)
            except Exception as exc:  # a fault that could not be injected or healed ends the run
                self.errors.append(f"{kind}: {exc!r}")
                return


def archive(cluster: Cluster, jobs: list[str]) -> tuple[dict[str, dict[str, Any]], int, Counter[str]]:
    conn = pymysql.connect(host=cluster.infra.ip, port=PORTS["mysql"], user=MYSQL_USER, password=MYSQL_PASSWORD,
                           database=DATABASE, connect_timeout=5)
    marks = ",".join(["%s"] * len(jobs))
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, state, executions FROM tasks WHERE job IN ({marks})", jobs)
            rows: dict[str, dict[str, Any]] = {}
            dups = 0
            for task_id, state, execs in cur.fetchall():
                dups += task_id in rows
                rows[task_id] = {"state": state, "executions": json.loads(execs)}
            cur.execute(f"SELECT task_id, COUNT(*) FROM records WHERE job IN ({marks}) GROUP BY task_id", jobs)
            records = Counter({r[0]: int(r[1]) for r in cur.fetchall()})
    finally:
        conn.close()
    return rows, dups, records


def _slot_of(task: str, job_of: dict[str, str]) -> int | None:
    job = job_of.get(task)
    return None if job is None else key_slot(keys.job_meta(job).encode())


def _explain(a: Call, b: Call, faults: list[nemesis.Fault], slot: int | None) -> nemesis.Fault | None:
    """The fault that explains `b` beginning while `a` ran: a pause of `a`'s host while it ran, or the
    kill of the Redis master serving the task's job while `a` ran, `b` beginning after it."""
    for f in faults:
        if f.kind == "worker_pause" and f.ip == a.host and f.start < b.start and a.start < f.end:
            return f
        if (f.kind == "redis_master_kill" and slot is not None and any(lo <= slot <= hi for lo, hi in f.slots)
                and a.start < f.end and (a.end is None or a.end > f.start) and b.start > f.start):
            return f
    return None


def overlaps(calls: list[Call], faults: list[nemesis.Fault],
             job_of: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(explained, unexplained): a call that found its task's lock held (the checker's test), or that
    began before an earlier call of its task ended; explained by `_explain` (`job_of`: task -> job)."""
    job_of = job_of or {}
    by_task: dict[str, list[Call]] = {}
    for c in calls:
        by_task.setdefault(c.task, []).append(c)
    explained, unexplained = [], []
    for task, cs in by_task.items():
        for i, b in enumerate(cs[1:], 1):
            earlier = [a for a in cs[:i] if a.end is not None and a.end > b.start]
            if b.overlap and not earlier:
                earlier = [a for a in cs[:i] if a.end is None][-1:]
            for a in earlier:
                why = _explain(a, b, faults, _slot_of(task, job_of))
                line = f"{task}: {a.host} (from {a.start:.2f}) and {b.host} (from {b.start:.2f})"
                (explained if why else unexplained).append(line + (f", {why.kind} {why.note or why.host} at "
                                                                   f"{why.start:.2f}" if why else ""))
            if b.overlap and not earlier:
                unexplained.append(f"{task}: {b.host} (from {b.start:.2f}) found the lock held")
    return explained, unexplained


def verdict(cluster: Cluster, load: Load, faults: list[nemesis.Fault], watch: nemesis.WatcherLog,
            statuses: dict[str, dict[str, Any]]) -> dict[str, Any]:
    expected = {t for ids in load.accepted.values() for t in ids}
    rows, dups, records = archive(cluster, sorted(load.accepted))
    double = dups + sum(n > 1 for n in records.values())
    double += sum(sum(e.get("status") == "ok" for e in r["executions"]) > 1 for r in rows.values())
    job_of = {t: job for job, ids in load.accepted.items() for t in ids}
    explained, unexplained = overlaps(read_calls(load.dir / "calls.jsonl"), faults, job_of)
    out_of_turn = watch.acting_out_of_turn()
    return {"tasks": len(expected), "archived": len(rows), "lost": len(expected - rows.keys()),
            "unexpected": len(rows.keys() - expected), "double_final": double,
            "not_succeeded": sum(r["state"] != "succeeded" for r in rows.values()),
            "executions": sum(len(r["executions"]) for r in rows.values()),
            "fenced": sum(int(s.get("fenced", 0)) for s in statuses.values()),
            "overlaps": len(explained) + len(unexplained), "overlaps_unexplained": len(unexplained),
            "watcher_takeovers": len(nemesis.takeovers(cluster)), "watcher_calls": len(watch.calls),
            "watcher_refused": len(watch.refused),
            "watcher_out_of_turn": len(out_of_turn),
            "_details": {"lost": sorted(expected - rows.keys())[:10], "unexpected": sorted(rows.keys() - expected)[:10],
                         "unexplained": unexplained[:10], "explained": explained[:10], "out_of_turn": out_of_turn[:10],
                         "takeovers": [f"{ip} at {ts:.3f}" for ts, ip in nemesis.takeovers(cluster)]}}


def soak(cluster: Cluster, seconds: float, seed: int, workdir: Path) -> dict[str, Any]:
    """Run the load and the nemesis for `seconds` on a started cluster; the figures."""
    print(f"soak: seed {seed}, {seconds:.0f} s (SOAK_SEED={seed} replays the nemesis' choices and hold times)", flush=True)
    managers = nemesis.Managers(cluster)
    nemesis.restore(cluster)
    nemesis.register(managers)
    watch = nemesis.WatcherLog(cluster).start()
    load = Load(managers, workdir / "calls", seed)
    load.dir.mkdir(parents=True, exist_ok=True)
    nem = Nemesis(cluster, random.Random(seed))
    threads = [threading.Thread(target=f, name=f.__name__, daemon=True) for f in (load.steady, load.trees)]
    t0 = time.time()
    for t in threads:
        t.start()
    timer = threading.Timer(seconds, nem.stop.set)
    timer.start()
    # On this thread: Linux's parent-death signal (the harness's and ServiceManager's) follows the
    # thread that spawned a process, so a pod or service restarted from a thread would die with it.
    nem.run()
    timer.cancel()
    nemesis.restore(cluster)
    load.stop.set()
    t_healed = time.time()
    threads[0].join(60)
    threads[1].join(DRAIN_S / 2)
    statuses, not_done = {}, []
    for job in sorted(load.accepted):
        try:
            statuses[job] = managers.wait(job, timeout=max(5.0, t_healed + DRAIN_S - time.time()))
        except AssertionError:
            not_done.append(job)
    drain_s = time.time() - t_healed
    watch.stop()
    figures = {"seed": seed, "soak_s": round(seconds),
               "redis": "cluster 3+3" if cluster.redis_cluster else "single", "faults": len(nem.faults),
               "by_kind": dict(sorted(Counter(f.kind for f in nem.faults).items())),
               **verdict(cluster, load, nem.faults, watch, statuses), "jobs": len(load.accepted),
               "not_done": not_done, "drain_s": round(drain_s, 1), "duration_s": round(time.time() - t0, 1),
               "nemesis_errors": nem.errors}
    managers.close()
    return figures


def problems(fig: dict[str, Any]) -> list[str]:
    bad = [f"{k} {fig[k]}" for k in ("lost", "unexpected", "double_final", "not_succeeded", "overlaps_unexplained",
                                     "watcher_out_of_turn", "not_done") if fig[k]]
    return bad + [f"nemesis: {e}" for e in fig["nemesis_errors"]]


def record(fig: dict[str, Any], label: str) -> str:
    """Append one line of figures to RUNS; the line."""
    shown = {k: v for k, v in fig.items() if not k.startswith("_")}
    line = (f"- {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {label}: "
            + ", ".join(f"{k} {v}" for k, v in shown.items()))
    if not RUNS.exists():
        RUNS.write_text("# Nemesis soak runs\n\nOne line per run (tests/multihost/soak.py): faults by kind, tasks "
                        "accepted, lost, unexpected, double-final, overlaps (unexplained), drain after the last heal.\n\n")
    with RUNS.open("a") as f:
        f.write(line + "\n")
    return line


def main() -> int:
    if (why := have_root()) is not None:
        print(f"soak: {why}", file=sys.stderr)
        return 2
    seconds = float(os.environ.get("SOAK_S", "1800"))
    seed = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1, 10**6))
    workdir = Path(tempfile.mkdtemp(prefix="taskherd-soak-"))
    with Cluster(workdir, managers=2, workers=2, overrides=nemesis.OVERRIDES,
                 redis_cluster=nemesis.REDIS_CLUSTER) as cluster:
        fig = soak(cluster, seconds, seed, workdir)
    print(record(fig, "make soak"))
    print(nemesis.dump(fig["_details"]))
    bad = problems(fig)
    print("soak: " + ("; ".join(bad) if bad else "lost 0, unexpected 0, double-final 0: the history checks out"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
