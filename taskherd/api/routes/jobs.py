"""Routes of jobs: status (and the long-poll that answers the moment a job is done), a page of its
task ids by state, cancel, retry its dead letters, tear it down (an open one only when asked to cancel it
first)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool

from taskherd.actors.manager import CancelJob, RetryTasks, Teardown
from taskherd.api import models as m
from taskherd.api.deps import PodDep, job_status
from taskherd.api.errors import ApiError
from taskherd.states import LIVE_STATES

MAX_WAIT_S = 60.0
"""Longest long-poll on a job (`wait_s`); clients loop for longer waits."""
RECHECK_S = 0.5
"""A long-poll re-reads its job this often: another manager replica may have finished it."""
TEARDOWN_WAIT_S = 30.0
"""How long `teardown?cancel=true` waits, by default, for the cancelled tasks to be killed and archived."""

router = APIRouter(tags=["jobs"])

JobName = Annotated[str, Path(pattern=m.NAME, description="1-128 letters, digits, '_', '.', ':', '-'")]


@router.get("/jobs", response_model=m.JobPage)
def list_jobs(pod: PodDep, state: m.JobsState = m.JobsState.OPEN,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100, cursor: str = "") -> m.JobPage:
    """A page of jobs in name order, each with its status: `open` ones (tasks not all archived, from
    Redis) or `done` ones (from their summaries in MySQL); pass `next_cursor` back for the next page."""
    jobs, next_cursor = pod.queries.jobs(state == m.JobsState.DONE, limit, cursor)
    return m.JobPage(state=state, jobs=jobs, next_cursor=next_cursor)


@router.get("/jobs/{job}")
async def get_job(job: JobName, pod: PodDep,
                  wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0.0) -> dict[str, Any]:
    """Counts by state, open and total, done flag, created and finished times (ms). With `wait_s`,
    answers as soon as the job is done, or after `wait_s` seconds with its progress then (a
    long-poll: `job wait` and the client's `wait` use it, so "done" arrives within milliseconds)."""
    return await _wait_done(pod, job, wait_s)


async def _wait_done(pod: PodDep, job: str, wait_s: float) -> dict[str, Any]:
    """The job's status as soon as it is done, or after `wait_s` seconds (404 for an unknown job)."""
    deadline = time.monotonic() + wait_s
    while True:
        woken = pod.ctx.job_events.register(job)
        status = await run_in_threadpool(job_status, pod, job)
        remaining = deadline - time.monotonic()
        if status["done"] or remaining <= 0:
            woken.cancel()
            return status
        try:
            done = await asyncio.wait_for(woken, min(remaining, RECHECK_S))
        except TimeoutError:
            continue
        if done is not None:
            return done  # as the analyzer summarized it; None: summarized elsewhere, read it


@router.get("/jobs/{job}/tasks", response_model=m.TaskPage)
def get_job_tasks(job: JobName, pod: PodDep, state: m.State,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100, cursor: str = "") -> m.TaskPage:
    """One page of the job's task ids in one state; pass `next_cursor` back for the next page (a
    cursor no page gave is a 404: it names no page)."""
    job_status(pod, job)
    if state in LIVE_STATES and cursor and not (cursor.isascii() and cursor.isdigit()):
        raise ApiError(404, "cursor", f"no page of {state} tasks of job {job!r} at cursor {cursor!r}: pass "
                                      "next_cursor as a previous page gave it")
    ids, next_cursor = pod.queries.job_tasks(job, state, limit, cursor)
    return m.TaskPage(job=job, state=state, ids=ids, next_cursor=next_cursor)


@router.post("/jobs/{job}/teardown", response_model=m.Teardown)
async def post_teardown(job: JobName, pod: PodDep, cancel: bool = False,
                        wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = TEARDOWN_WAIT_S) -> m.Teardown:
    """Delete the job's runtime state, then prove Redis holds none of it (500 lists leftovers).

    A job with open tasks (pending, running, waiting for a retry or for analysis) is refused with a
    409 naming them, as a teardown would kill them and archive nothing. With `cancel=true` the job is
    cancelled first, and torn down once its cancelled tasks are killed and archived (within `wait_s`
    seconds, else 409 naming what is still open); their archived rows stay readable afterwards."""
    status = await run_in_threadpool(pod.queries.job, job)
    if status is not None and status["open"]:
        if not cancel:
            raise ApiError(409, "job", f"job {job!r} is open ({_open(status)}); cancel it first, or tear it "
                           "down with cancel=true", job=job, counts=status["counts"])
        await run_in_threadpool(pod.ask, CancelJob(job))
        status = await _wait_done(pod, job, wait_s)
        if status["open"]:
            raise ApiError(409, "job", f"job {job!r} is still open {wait_s:g} s after it was cancelled "
                           f"({_open(status)}); try again", job=job, counts=status["counts"])
    leftovers = await run_in_threadpool(pod.ask, Teardown(job))
    if leftovers:
        raise ApiError(500, "job", f"{len(leftovers)} key(s) of job {job!r} remain in Redis after teardown",
                       "redis", job=job, leftovers=leftovers)
    return m.Teardown(job=job, leftovers=[])


def _open(status: dict[str, Any]) -> str:
    """What is open in a job, by state: '2 running, 3 pending'."""
    return ", ".join(f"{n} {state}" for state, n in status["counts"].items() if n and state in LIVE_STATES) or "open"


@router.post("/jobs/{job}/cancel")
def cancel_job(job: JobName, pod: PodDep) -> dict[str, Any]:
    """Cancel every live task of the job; the job accepts no new tasks afterwards."""
    job_status(pod, job)
    return {"job": job, "cancelled": pod.ask(CancelJob(job))}


@router.post("/jobs/{job}/retry")
def retry_job(job: JobName, pod: PodDep) -> dict[str, Any]:
    """Requeue every failed task of the job."""
    job_status(pod, job)
    accepted = pod.ask(RetryTasks(job=job))
    return {"job": job, "requeued": sum(1 for a in accepted if a.status == "retried")}
