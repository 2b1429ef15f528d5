"""Reads that join Redis (live work) and MySQL (finished work), and the job summary written once a
job is done. The API, the CLI and the TimeoutWatcher share these so they never disagree."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from taskherd.states import FINAL_STATES, LIVE_STATES, TaskState
from taskherd.store.archive import Archive
from taskherd.store.finishes import recorded_task
from taskherd.store.state_store import LEASED, StateStore


class Queries:
    def __init__(self, store: StateStore, archive: Archive) -> None:
        self.store, self.archive = store, archive

    def task(self, task_id: str, job: str | None = None) -> dict[str, Any] | None:
        """A task wherever it is: live in Redis, or archived in MySQL; None if never submitted. `job`:
        the job it is known to be in (a waiter's second read), which saves the id's lookup while live."""
        live = self.store.task(job, task_id) if job else None
        if live is None:
            found = self.store.job_of(task_id)
            live = self.store.task(found, task_id) if found and found != job else None
        if live is not None:
            return _live_view(live)
        row = self.archive.task(task_id)
        if row is None:
            return None
        return {"id": row["id"], "job": row["job"], "type": row["type"], "state": row["state"],
                "attempts": row["attempts"], "round": row["retry_round"], "parent": row["parent"] or None,
                "payload": row["payload"],
                "result": row["result"], "error": row["error"], "record": row.get("record"),
                "executions": row["executions"], "created_ms": row["created_ms"], "finished_ms": row["finished_ms"],
                "run_at_ms": row.get("run_at_ms"), "priority": row.get("priority"), "children": row.get("children")}

    @staticmethod
    def recorded(message: str) -> dict[str, Any] | None:
        """The task view of a finish published to a waiter (`Finishes`), or None when it must be read."""
        live = recorded_task(message)
        return _live_view(live) if live is not None else None

    def job(self, job: str) -> dict[str, Any] | None:
        """Counts by state and the done flag; after teardown, the summary kept in MySQL."""
        live = self.store.job(job)
        if live is not None:
            return {"job": job, **live}
        row = self.archive.job(job)
        return _archived_job(row) if row is not None else None

    def jobs(self, done: bool, limit: int, cursor: str) -> tuple[list[dict[str, Any]], str | None]:
        """A page of jobs in name order after `cursor` (a name), and the next cursor: the open ones
        from Redis, or the done ones from their summaries in MySQL (less any open again since)."""
        open_names = sorted(self.store.jobs())
        if not done:
            page = [name for name in open_names if name > cursor][:limit]
            statuses = [self.job(name) for name in page]
            jobs = [s for s in statuses if s is not None]
        else:
            jobs, after, reopened = [], cursor, set(open_names)
            while len(jobs) < limit:
                rows = self.archive.jobs_after(after, limit)
                jobs += [_archived_job(r) for r in rows if r["job"] not in reopened][:limit - len(jobs)]
                if len(rows) < limit:
                    break
                after = rows[-1]["job"]
            page = [j["job"] for j in jobs]
        return jobs, (page[-1] if len(page) == limit else None)

    def job_tasks(self, job: str, state: str, limit: int, cursor: str) -> tuple[list[str], str | None]:
        """A page of task ids in one state; the cursor is opaque to callers."""
        if state in LIVE_STATES:
            offset = int(cursor or 0)
            ids = self.store.ids_in_state(job, state, offset, limit)
            return ids, (str(offset + len(ids)) if len(ids) == limit else None)
        ids = self.archived_ids(job, state, cursor, limit)
        return ids, (ids[-1] if len(ids) == limit else None)

    def archived_ids(self, job: str | None, state: str, cursor: str, limit: int) -> list[str]:
        """Ids of archived tasks in a final state, of one job or of all, after `cursor` (an id)."""
        return self.archive.task_ids(job, state, cursor or "", limit)


def _archived_job(row: dict[str, Any]) -> dict[str, Any]:
    """A job's status from its summary in MySQL (its runtime state has left Redis)."""
    counts = dict.fromkeys((*LIVE_STATES, LEASED), 0) | {s: row[s] for s in FINAL_STATES}
    return {"job": row["job"], "counts": counts, "open": 0, "total": row["total"], "done": True,
            "created_ms": row["created_ms"], "finished_ms": row["finished_ms"], "fenced": 0,
            "summarized": True, "torn_down": True}


def write_summary(store: StateStore, archive: Archive, job: str) -> dict[str, Any] | None:
    """Write the done job's summary to MySQL once; the watcher retries if this crashes midway. The
    job's status as summarized (what `Queries.job` reads now), or None if it had nothing to write."""
    status = store.job(job)
    if status is None or not status["done"] or status["summarized"]:
        return None
    counts = status["counts"]
    archive.save_job(job, {"total": status["total"], "succeeded": counts["succeeded"], "failed": counts["failed"],
                           "cancelled": counts["cancelled"], "created_ms": status["created_ms"],
                           "finished_ms": status["finished_ms"]})
    store.mark_summarized(job)
    return {"job": job, **status, "summarized": True}


def _live_view(t: dict[str, Any]) -> dict[str, Any]:
    def maybe_json(v: str | None) -> Any:
        return json.loads(v) if v else None

    executions = t["executions"]
    if t["state"] == TaskState.RUNNING:  # the live execution, as its lease says
        executions = [*executions, _lease_view(t)]
    return {"id": t["id"], "job": t["job"], "type": t["type"], "state": t["state"],
            "attempts": int(t.get("attempts", 0)), "round": int(t.get("round") or 0), "parent": t.get("parent") or None,
            "payload": json.loads(t["payload"]), "result": maybe_json(t.get("result")),
            "error": t.get("error") or None, "record": None, "executions": executions,
            "created_ms": int(t["created"]), "finished_ms": int(t["finished"]) if t.get("finished") else None,
            "run_at_ms": _ms(t.get("run_at")), "progress": _progress_view(t), "priority": int(t.get("priority") or 5),
            "children": None, "outcome": t.get("outcome") or None}


def _progress_view(t: dict[str, Any]) -> dict[str, Any] | None:
    """A running task's latest progress report `{fraction, message, updated_ms}`, as its live execution
    sent it with a lease renewal; None for another state or a report of an earlier execution."""
    try:
        report = json.loads(t["progress"]) if t["state"] == TaskState.RUNNING and t.get("progress") else None
    except ValueError:
        return None
    if not isinstance(report, dict) or report.get("exec") != t.get("exec"):
        return None
    return {"fraction": report.get("fraction"), "message": report.get("message", ""),
            "updated_ms": _ms(t.get("progress_at"))}


def _lease_view(t: dict[str, Any]) -> dict[str, Any]:
    """A running task's live execution: `running`, or `leased` while a slot holds it leased ahead,
    its executor not started yet (then `leased` is when, and `started` is None)."""
    view = {"exec": t.get("exec"), "worker": t.get("worker"), "started": _ms(t.get("started")),
            "deadline": _ms(t.get("deadline")), "status": "running", "round": int(t.get("round") or 0)}
    if t.get("leased_ahead"):
        view |= {"status": LEASED, "leased": view["started"], "started": None}
    return view


def _ms(v: str | None) -> int | None:
    return int(v) if v else None


Status = dict[str, Any]


class JobEvents:
    """Wakes the API's long-polls (`GET /jobs/{job}?wait_s=`) when this process counts a job done,
    handing them the job's status as summarized, so they answer without reading it again (or None:
    they read it).

    A waiter registers before it reads the job, so a job finishing in between still wakes it; a job
    finished by another manager replica is seen at the waiter's next periodic re-read instead.
    Thread-safe: the ResultAnalyzer notifies from its thread, waiters await in the API's event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[str, asyncio.AbstractEventLoop, asyncio.Future[Status | None]]] = set()

    def register(self, job: str) -> asyncio.Future[Status | None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Status | None] = loop.create_future()
        with self._lock:
            self._waiters.add((job, loop, fut))
        fut.add_done_callback(lambda f: self._discard(job, loop, f))
        return fut

    def _discard(self, job: str, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Status | None]) -> None:
        with self._lock:
            self._waiters.discard((job, loop, fut))

    def notify(self, job: str, status: Status | None) -> None:
        with self._lock:
            waiters = [(loop, fut) for name, loop, fut in self._waiters if name == job]
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_wake, fut, status)


def _wake(fut: asyncio.Future[Status | None], status: Status | None) -> None:
    if not fut.done():
        fut.set_result(status)
