"""Routes of the whole system: tear it down (`taskherd teardown --all`).

A system teardown tears down every job Redis holds (open ones only when asked to cancel them first),
deletes taskherd's topics and their channels on every nsqd (and their registrations on nsqlookupd),
then proves that Redis holds no task, job or lease key (`taskherd.store.keyspace` says what it keeps
and why). With `stop=true` it asks every registered pod to exit: the other pods first (workers
drain), waiting for them to deregister, and this manager pod last, once it has answered; each pod
deletes the topics again as it exits, since a consumer that was still connected subscribed again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from taskherd.actors.manager import CancelJob, Teardown
from taskherd.api.deps import Pod, PodDep
from taskherd.api.errors import ApiError
from taskherd.api.routes.jobs import MAX_WAIT_S, TEARDOWN_WAIT_S, _open, _wait_done
from taskherd.nsq import topics

router = APIRouter(tags=["system"])

STOP_POLL_S = 0.2
"""How often a teardown with `stop=true` looks whether the pods it asked to exit have deregistered."""


class SystemTeardown(BaseModel):
    jobs: list[str]
    """Every job torn down (its runtime state deleted; its archive stays in MySQL)."""
    cancelled: list[str]
    """The open jobs cancelled first (`cancel_open=true`)."""
    topics_deleted: list[str]
    """`NSQD-HTTP-ADDRESS/TOPIC` of each topic deleted."""
    topics_emptied: list[str] = []
    """Topics a running pod is subscribed to (no `stop`): emptied of messages, kept."""
    leftovers: list[str]
    """Task, job or lease keys still in Redis (always empty here: leftovers answer 500)."""
    stopping: list[str]
    """The pods asked to exit (`stop=true`), this one included."""
    not_stopped: list[str]
    """Pods asked to exit that were still registered when the wait was over (they exit when they can)."""


@router.post("/system/teardown", response_model=SystemTeardown)
async def post_system_teardown(pod: PodDep, cancel_open: bool = False, stop: bool = False,
                               wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = TEARDOWN_WAIT_S
                               ) -> SystemTeardown:
    """Tear down every job, delete taskherd's NSQ topics, prove Redis holds no task, job or lease key
    (500 listing `leftovers`); with `stop=true`, ask every pod to exit (workers drain first).

    Refused with 409 naming the open jobs while any is open, unless `cancel_open=true`: then each is
    cancelled, and the teardown goes on once their cancelled tasks are killed and archived (within
    `wait_s` seconds for all of them, else 409 naming what is still open). `wait_s` also bounds the
    wait for the other pods to exit."""
    deadline = time.monotonic() + wait_s
    jobs = await run_in_threadpool(pod.ctx.store.keyspace.jobs)
    cancelled = await _cancel_open(pod, jobs, cancel_open, deadline)
    left: list[str] = []
    for job in jobs:
        left += await run_in_threadpool(pod.ask, Teardown(job))
    stopping, not_stopped = await _stop_others(pod, deadline) if stop else ([], [])
    # Pods left running keep their subscriptions: those topics are emptied, not deleted.
    deleted = await run_in_threadpool(lambda: topics.delete(pod.ctx.settings.nsq, keep_subscribed=not stop))
    left += [key for key in await run_in_threadpool(pod.ctx.store.keyspace.leftovers) if key not in left]
    if left or deleted.errors:
        what = f"{len(left)} task, job or lease key(s) remain in Redis" if left else "NSQ topics not all deleted"
        raise ApiError(500, None, f"system teardown incomplete: {what}" + "".join(f"; {e}" for e in deleted.errors),
                       "redis" if left else "nsqd", leftovers=left, nsq_errors=deleted.errors, jobs=jobs)
    if stop:
        stopping.append(await run_in_threadpool(_stop_self, pod))
    return SystemTeardown(jobs=jobs, cancelled=cancelled, topics_deleted=deleted.deleted,
                          topics_emptied=deleted.emptied, leftovers=[],
                          stopping=stopping, not_stopped=not_stopped)


async def _cancel_open(pod: Pod, jobs: list[str], cancel: bool, deadline: float) -> list[str]:
    """The open jobs, cancelled and waited for (until `deadline`); 409 if any is open and not `cancel`."""
    statuses = {job: await run_in_threadpool(pod.queries.job, job) for job in jobs}
    open_ = {job: s for job, s in statuses.items() if s is not None and s["open"]}
    if open_ and not cancel:
        raise ApiError(409, None, f"{len(open_)} job(s) open: {_list(open_)}; cancel them, or tear the system "
                       "down with cancel_open=true", open_jobs={j: s["counts"] for j, s in open_.items()})
    for job in open_:
        await run_in_threadpool(pod.ask, CancelJob(job))
    still = {}
    for job in open_:
        status = await _wait_done(pod, job, max(0.0, deadline - time.monotonic()))
        if status["open"]:
            still[job] = status
    if still:
        raise ApiError(409, None, f"{len(still)} job(s) still open after they were cancelled: {_list(still)}; "
                       "try again", open_jobs={j: s["counts"] for j, s in still.items()})
    return sorted(open_)


def _list(statuses: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{job!r} ({_open(s)})" for job, s in sorted(statuses.items())[:20]) + \
        (f" and {len(statuses) - 20} more" if len(statuses) > 20 else "")


async def _stop_others(pod: Pod, deadline: float) -> tuple[list[str], list[str]]:
    """Ask every registered pod but this one to exit; wait (until `deadline`) for them to deregister.
    Returns (the pods asked, those still registered when the wait was over)."""
    members = pod.ctx.store.members
    nodes = await run_in_threadpool(members.nodes)
    others = {n["id"]: n.get("started", "") for n in nodes if n.get("id") != pod.ctx.node_id}
    await run_in_threadpool(members.ask_to_stop, others)
    while True:
        live = {n.get("id") for n in await run_in_threadpool(members.nodes)}
        running = sorted(set(others) & live)
        if not running or time.monotonic() >= deadline:
            return sorted(others), running
        await asyncio.sleep(STOP_POLL_S)


def _stop_self(pod: Pod) -> str:
    """Ask this pod to exit: its Registry hears it on its next heartbeat, after this answer has gone."""
    members = pod.ctx.store.members
    mine = {n["id"]: n.get("started", "") for n in members.nodes() if n.get("id") == pod.ctx.node_id}
    members.ask_to_stop(mine)
    return pod.ctx.node_id

