"""The whole history of one job, checked Jepsen "total-queue" style, and the figures the suite reports.

Sources, each read directly: the ids the API accepted (`JobRun.expected`); MySQL's `tasks`, `records`
and `jobs` tables (the archive, the truth about final results); the job's counters in Redis through
the API (`counts`, `fenced`); and the executor-side call log (`funcs.CallLog`).

- lost: accepted, never archived.  unexpected: archived, never accepted.
- double final results: a second row or record for an id, more than one execution recorded `ok` for
  a task, or the job counting more final tasks than the archive holds (a task counted out twice).
- overlaps: a call that found its task's lock held (two executions alive at once), or two completed
  calls of one task whose intervals intersect.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.harness import JobRun
from tests.helpers import mysql_connect, wait_until

FINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Call:
    task: str
    kind: str
    pid: int
    start: float
    end: float | None = None
    status: str | None = None
    overlap: bool = False
    spawned: list[int] = field(default_factory=list)


def read_calls(path: Path) -> list[Call]:
    """Every executor call in start order; a call with no end was killed (or is still running)."""
    calls: dict[tuple[str, int, float], Call] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r["ev"] == "begin":
            calls[(r["task"], r["pid"], r["t"])] = Call(r["task"], r["kind"], r["pid"], r["t"], overlap=r["overlap"])
        elif r["ev"] == "end":
            call = calls[(r["task"], r["pid"], r["t0"])]
            call.end, call.status = r["t"], r["status"]
        elif r["ev"] == "spawn":
            open_ = [c for c in calls.values() if c.task == r["task"] and c.pid == r["pid"] and c.end is None]
            open_[-1].spawned += r["pids"]
    return sorted(calls.values(), key=lambda c: c.start)


def overlapping(calls: list[Call]) -> list[str]:
    """Per task: calls that started while another execution of the task was alive."""
    found = [f"{c.task}: call in pid {c.pid} at {c.start:.3f} found the task's lock held" for c in calls if c.overlap]
    by_task: dict[str, list[Call]] = {}
    for c in calls:
        by_task.setdefault(c.task, []).append(c)
    for task, cs in by_task.items():
        for a, b in zip(cs, cs[1:]):
            if a.end is not None and b.start < a.end:
                found.append(f"{task}: call in pid {b.pid} started {a.end - b.start:.3f}s before pid {a.pid}'s ended")
    return found


@dataclass
class Figures:
    """One row of the suite's table."""

    case: str
    n: int = 0
    lost: int = 0
    unexpected: int = 0
    double: int = 0
    execs_total: int = 0
    execs_max: int = 0
    calls_total: int = 0
    calls_max: int = 0
    overlaps: int = 0
    fenced: int = 0
    outage_s: float | None = None
    recovery_s: float | None = None
    affected: int = 0
    affected_s: float | None = None
    done_s: float | None = None
    wall_s: float | None = None
    notes: list[str] = field(default_factory=list)
    outcome: str = "?"
    measured: bool = True
    """False for a case that failed before its history could be read: its counts are unknown."""


@dataclass
class History:
    run: JobRun
    rows: dict[str, dict[str, Any]]
    records: Counter
    duplicate_rows: int
    summary: dict[str, Any] | None
    status: dict[str, Any]
    calls: list[Call]

    @classmethod
    def read(cls, run: JobRun) -> History:
        """Read everything once the job is done (its MySQL summary is written right after)."""
        status = run.wait_done()
        summary = wait_until(lambda: _summary(run), timeout=30, message=f"summary of {run.job} in MySQL")
        conn = mysql_connect(run.cluster.settings)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id, state, attempts, executions, finished_ms FROM tasks WHERE job = %s", (run.job,))
                rows = {r[0]: {"state": r[1], "attempts": r[2], "executions": json.loads(r[3]), "finished_ms": r[4]}
                        for r in cur.fetchall()}
                cur.execute("SELECT COUNT(*) - COUNT(DISTINCT id) FROM tasks WHERE job = %s", (run.job,))
                duplicate_rows = int(cur.fetchone()[0])
                cur.execute("SELECT task_id, COUNT(*) FROM records WHERE job = %s GROUP BY task_id", (run.job,))
                records = Counter({r[0]: int(r[1]) for r in cur.fetchall()})
        finally:
            conn.close()
        (run.calls.parent / "archive.json").write_text(json.dumps(rows, indent=1))  # for a post-mortem
        return cls(run, rows, records, duplicate_rows, summary, status, read_calls(run.calls))

    # --- the checks -----------------------------------------------------------------------------------
    def lost(self) -> set[str]:
        return set(self.run.expected) - set(self.rows)

    def unexpected(self) -> set[str]:
        return set(self.rows) - set(self.run.expected)

    def doubles(self) -> list[str]:
        out = [f"{self.duplicate_rows} duplicate archive row(s)"] if self.duplicate_rows else []
        out += [f"{t}: {n} records" for t, n in self.records.items() if n > 1]
        for task_id, row in self.rows.items():
            ok = sum(1 for e in row["executions"] if e.get("status") == "ok")
            if ok > 1:
                out.append(f"{task_id}: {ok} executions recorded ok")
        counted = sum(self.status["counts"][s] for s in FINAL)
        if counted > len(self.rows):
            out.append(f"the job counted {counted} final tasks, the archive holds {len(self.rows)}")
        return out

    def violations(self, *, overlaps: bool = True) -> list[str]:
        """Everything that breaks the history; empty when the case passed its common checks."""
        v = [f"lost: {sorted(self.lost())[:10]} ({len(self.lost())})"] if self.lost() else []
        v += [f"unexpected: {sorted(self.unexpected())[:10]}"] if self.unexpected() else []
        v += [f"double: {d}" for d in self.doubles()[:10]]
        wrong = {t: (r["state"], self.run.expected[t]) for t, r in self.rows.items()
                 if t in self.run.expected and r["state"] != self.run.expected[t]}
        v += [f"{len(wrong)} task(s) in the wrong final state (got, want): {dict(list(wrong.items())[:5])}"] if wrong else []
        by_state = Counter(r["state"] for r in self.rows.values())
        counts = {s: self.status["counts"][s] for s in FINAL}
        if counts != {s: by_state.get(s, 0) for s in FINAL}:
            v.append(f"job counts {counts} differ from the archive {dict(by_state)}")
        if self.status["total"] != len(self.run.expected):
            v.append(f"job total {self.status['total']} != {len(self.run.expected)} accepted")
        summary = {s: self.summary[s] for s in ("total", *FINAL)} if self.summary else None
        if summary != {"total": len(self.rows), **{s: by_state.get(s, 0) for s in FINAL}}:
            v.append(f"job summary in MySQL {summary} differs from the archive {dict(by_state)}")
        if sum(self.records.values()) != by_state.get("succeeded", 0):
            v.append(f"{sum(self.records.values())} records for {by_state.get('succeeded', 0)} succeeded tasks")
        if overlaps:
            v += [f"two at once: {o}" for o in overlapping(self.calls)[:10]]
        return v

    # --- figures --------------------------------------------------------------------------------------
    def figures(self, case: str) -> Figures:
        run = self.run
        execs = [len(r["executions"]) for r in self.rows.values()]
        per_task = Counter(c.task for c in self.calls)
        affected = self.affected()
        f = Figures(case, n=len(run.expected), lost=len(self.lost()), unexpected=len(self.unexpected()),
                    double=len(self.doubles()), execs_total=sum(execs), execs_max=max(execs, default=0),
                    calls_total=sum(per_task.values()), calls_max=max(per_task.values(), default=0),
                    overlaps=len(overlapping(self.calls)), fenced=int(self.status.get("fenced", 0)),
                    affected=len(affected), wall_s=_r(time.time() - run.started))
        if run.t_fault is not None:
            f.outage_s = _r((run.t_heal or run.t_fault) - run.t_fault)
            f.recovery_s = _r(run.first_after_heal - run.t_fault) if run.first_after_heal else None
            f.done_s = _r(run.done_at - run.t_fault) if run.done_at else None
            finished = [self.rows[t]["finished_ms"] / 1000 for t in affected if t in self.rows]
            f.affected_s = _r(max(finished) - run.t_fault) if finished else None
        return f

    def affected(self) -> set[str]:
        """Tasks expected to succeed that the fault touched: more than one call or recorded execution."""
        per_task = Counter(c.task for c in self.calls)
        return {t for t, want in self.run.expected.items() if want == "succeeded"
                and (per_task[t] > 1 or len(self.rows.get(t, {}).get("executions", [])) > 1)}


def _summary(run: JobRun) -> dict[str, Any] | None:
    conn = mysql_connect(run.cluster.settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT total, succeeded, failed, cancelled FROM jobs WHERE job = %s", (run.job,))
            row = cur.fetchone()
    finally:
        conn.close()
    return dict(zip(("total", *FINAL), row)) if row else None


def _r(x: float) -> float:
    return round(x, 2)
