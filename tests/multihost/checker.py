"""A job on the hosts, and its whole history checked: lost 0, doubled 0, two executions at once 0.

The executor is an `exe` (`[python, "-c", EXE]`, nothing to import in the pods): it takes an
exclusive flock on its task's lock file and appends `begin` and `end` lines, with the host's address,
to `calls.jsonl` in a directory every host sees (namespaces share the file system). A call that finds
its task's lock held is an overlap: two live executions of one task at once (the kernel drops a lock
when its process dies, so a killed execution holds none).

Sources: the ids accepted, MySQL's `tasks` and `records` rows of the job, the job's status from the
API (counts, `fenced`), the calls log, and the pods' JSON logs.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from taskherd.client import Client
from tests.hosts import Cluster
from tests.hosts.cluster import DATABASE, MYSQL_PASSWORD, MYSQL_USER, PORTS

EXE = r"""
import fcntl, json, os, sys, time
p = json.load(sys.stdin)
lock = open(os.path.join(p["dir"], p["id"] + ".lock"), "a")
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB); overlap = False
except OSError:
    overlap = True
def note(ev):
    line = json.dumps({"ev": ev, "task": p["id"], "pid": os.getpid(), "t": time.time(), "overlap": overlap,
                       "host": os.environ.get("TASKHERD_ADVERTISE_HOST", "?")})
    with open(os.path.join(p["dir"], "calls.jsonl"), "a") as f:
        f.write(line + "\n")
note("begin")
time.sleep(p["sleep_s"])
failed = os.path.join(p["dir"], p["id"] + ".failed")
if p.get("fail_once") and not os.path.exists(failed):
    open(failed, "w").close(); note("end"); sys.exit(1)
note("end")
print(json.dumps({"id": p["id"], "host": os.environ.get("TASKHERD_ADVERTISE_HOST", "?")}))
"""
"""The executor of every multi-host case: flock per task (an overlap is two live executions), a line
per begin and end in calls.jsonl; `fail_once` makes its first attempt exit 1 (the soak's retries)."""


@dataclass
class Call:
    task: str
    host: str
    pid: int
    start: float
    end: float | None = None
    overlap: bool = False


def read_calls(path: Path) -> list[Call]:
    calls: dict[tuple[str, int], Call] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r["ev"] == "begin":
                calls[(r["task"], r["pid"])] = Call(r["task"], r["host"], r["pid"], r["t"], overlap=r["overlap"])
            else:
                calls[(r["task"], r["pid"])].end = r["t"]
    return sorted(calls.values(), key=lambda c: c.start)


def log_events(path: Path, needle: str) -> list[dict[str, Any]]:
    """The JSON log lines of a pod whose message contains `needle`."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{") and needle in line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return [e for e in out if needle in e.get("msg", "")]


@dataclass
class Job:
    """One job of `n` exe tasks sleeping `sleep_s` each, submitted through a manager's API."""

    cluster: Cluster
    name: str
    n: int
    sleep_s: float
    dir: Path
    expected: list[str] = field(default_factory=list)
    submitted_at: float = 0.0

    def submit(self, client: Client) -> Job:
        self.dir.mkdir(parents=True, exist_ok=True)
        client.add_executor("sleep", {"kind": "exe", "target": [sys.executable, "-c", EXE], "timeout_s": 60,
                                      "max_attempts": 3}, replace=True)
        tasks = [{"id": f"{self.name}-{i:03d}", "type": "sleep", "job": self.name,
                  "payload": {"id": f"{self.name}-{i:03d}", "sleep_s": self.sleep_s, "dir": str(self.dir)}}
                 for i in range(self.n)]
        client.submit(tasks)
        self.expected = [t["id"] for t in tasks]
        self.submitted_at = time.time()
        return self

    @property
    def calls_path(self) -> Path:
        return self.dir / "calls.jsonl"

    def calls(self) -> list[Call]:
        return read_calls(self.calls_path)

    def running_on(self, host_ip: str) -> list[Call]:
        return [c for c in self.calls() if c.host == host_ip and c.end is None]

    def archive(self) -> tuple[dict[str, dict[str, Any]], int, Counter[str]]:
        """MySQL rows of the job by id, duplicate rows, records per task."""
        conn = pymysql.connect(host=self.cluster.infra.ip, port=PORTS["mysql"], user=MYSQL_USER,
                               password=MYSQL_PASSWORD, database=DATABASE, connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id, state, executions FROM tasks WHERE job = %s", (self.name,))
                rows = {r[0]: {"state": r[1], "executions": json.loads(r[2])} for r in cur.fetchall()}
                cur.execute("SELECT COUNT(*) - COUNT(DISTINCT id) FROM tasks WHERE job = %s", (self.name,))
                dups = int(cur.fetchone()[0])
                cur.execute("SELECT task_id, COUNT(*) FROM records WHERE job = %s GROUP BY task_id", (self.name,))
                records = Counter({r[0]: int(r[1]) for r in cur.fetchall()})
        finally:
            conn.close()
        return rows, dups, records


@dataclass
class Verdict:
    lost: list[str]
    doubled: list[str]
    not_succeeded: list[str]
    overlaps: list[str]
    executions: int
    calls: int
    fenced: int

    def problems(self, *, overlaps_allowed: bool = False) -> list[str]:
        out = [f"lost {len(self.lost)}: {self.lost[:5]}"] if self.lost else []
        out += [f"doubled {len(self.doubled)}: {self.doubled[:5]}"] if self.doubled else []
        out += [f"not succeeded: {self.not_succeeded[:5]}"] if self.not_succeeded else []
        if not overlaps_allowed and self.overlaps:
            out.append(f"two executions at once: {self.overlaps[:5]}")
        return out


def check(job: Job, status: dict[str, Any]) -> Verdict:
    """Each accepted task archived once as succeeded, one record, one `ok` execution; no overlap."""
    rows, dups, records = job.archive()
    doubled = [f"{dups} duplicate row(s)"] if dups else []
    doubled += [f"{t}: {n} records" for t, n in records.items() if n > 1]
    doubled += [f"{t}: {ok} ok executions" for t, r in rows.items()
                if (ok := sum(e.get("status") == "ok" for e in r["executions"])) > 1]
    if status["counts"]["succeeded"] > len(rows):
        doubled.append(f"the job counted {status['counts']['succeeded']} succeeded, the archive holds {len(rows)}")
    calls = job.calls()
    overlaps = [f"{c.task} on {c.host} at {c.start:.2f}" for c in calls if c.overlap]
    by_task: dict[str, list[Call]] = {}
    for c in calls:
        by_task.setdefault(c.task, []).append(c)
    for task, cs in by_task.items():
        overlaps += [f"{task}: {b.host} began {a.end - b.start:.2f} s before {a.host} ended"
                     for a, b in zip(cs, cs[1:]) if a.end is not None and b.start < a.end]
    return Verdict(lost=sorted(set(job.expected) - set(rows)), doubled=doubled,
                   not_succeeded=sorted(t for t, r in rows.items() if r["state"] != "succeeded"),
                   overlaps=overlaps, executions=sum(len(r["executions"]) for r in rows.values()),
                   calls=len(calls), fenced=int(status.get("fenced", 0)))
