"""TimeoutWatcher: the manager's sweep that makes "nothing lost" true when pods, nsqd or Redis fail.

Where a task is timed out on the manager side: every `watcher_interval_s` it requeues running tasks
whose lease expired (the worker died, was partitioned, or overran its deadline), promotes retries
and delayed (scheduled) tasks that are due (their due times live in Redis, never in NSQ's memory-only
deferred messages; a delayed task is published for the first time then), republishes
pending tasks that NSQ lost, rings for results left unclaimed (a lost doorbell, a lapsed claim), and
writes the summary of a done job if its writer crashed.

Only one watcher is active at a time: it holds a Redis lease that it takes or extends every sweep
in one script (`Membership.hold`), so two manager replicas never both requeue. Holding it at a
sweep's start is not enough: a sweep stalled mid-way (its host cut off, its Redis calls retried for
seconds) would carry on after another replica took the lapsed lease. So the lease has a fence, a
time on Redis's clock one interval before it lapses, that every requeue and promotion carries and
Redis checks (`LeaseLapsed` past it), and a long sweep extends the lease as it goes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import pykka

from taskherd.actors.context import PodContext
from taskherd.errors import LeaseLapsed, QueueError, StoreError
from taskherd.jobs import write_summary
from taskherd.logs import task_fields
from taskherd.metrics import JOBS_OPEN, OLDEST_PENDING_AGE, OPEN_TASKS, QUEUE_DEPTH, SWEEP_FAILURES
from taskherd.nsq.messages import TaskRef
from taskherd.nsq.topics import task_topics
from taskherd.states import TaskState
from taskherd.store import keys
from taskherd.supervisor import Supervised, Ticking

log = logging.getLogger("taskherd.watcher")

MAX_FAILED_JOBS = 3
"""Jobs failing one after another that end a sweep as an outage (Redis gone): one failing job alone
is logged and skipped, and the sweep goes on with the others."""

SCHEDULED_PER_SWEEP = 5000
"""Delayed tasks one job may have promoted (and published) per sweep; more due at once wait a sweep."""


@dataclass(frozen=True, slots=True)
class SweepJobs:
    """From the ticker."""


class TimeoutWatcher(Ticking, Supervised, pykka.ThreadingActor):
    def __init__(self, ctx: PodContext, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.ctx = ctx
        self.sweeps = 0
        self._shortfall = 0
        self._fence_ms = 0
        self._extend_at = 0.0
        self._leading = False

    def on_start(self) -> None:
        self.tick_every(SweepJobs(), self.ctx.settings.manager.watcher_interval_s)

    def on_receive(self, message: Any) -> Any:
        match message:
            case SweepJobs():
                try:
                    self.sweep()
                except (StoreError, QueueError) as exc:
                    log.warning("sweep skipped: %s", exc)
            case _:
                log.warning("watcher: unknown message %r", message)
        return None

    def _lead(self) -> bool:
        """Take or extend the watcher lease (3 intervals long); while held, `_fence_ms` is one interval
        before it lapses (Redis's clock; the margin is for other Redis nodes' clocks), and the sweep
        extends it again once an interval has passed (`_extend_at`, this process's clock)."""
        interval_s = self.ctx.settings.manager.watcher_interval_s
        extend_at = time.monotonic() + interval_s
        was_leading, self._leading = self._leading, False
        held, expiry_ms = self.ctx.store.members.hold(keys.WATCHER_LEASE, self.ctx.node_id, int(interval_s * 3000))
        self._leading = held is not None
        # Logged whenever this node starts a term: when Redis says "taken" (even if this node thought it
        # led: its lease lapsed during a stalled step, another may have acted since), and when it starts
        # acting on a "held" (a hold whose answer was lost, a time-out or a cut-off host's retried
        # request, may have taken the lease). Operators and the multihost checker read who acts from it.
        if held == "taken" or (self._leading and not was_leading):
            log.info("this node is now the active TimeoutWatcher")
        elif was_leading and not self._leading:
            log.info("this node is no longer the active TimeoutWatcher: another took the lease")
        self._fence_ms, self._extend_at = (expiry_ms - int(interval_s * 1000), extend_at) if held else (0, 0.0)
        return self._leading

    def _still_leading(self) -> None:
        """Mid-sweep: extend the lease if an interval has passed; LeaseLapsed if another took it."""
        if time.monotonic() >= self._extend_at and not self._lead():
            raise LeaseLapsed("the sweep")

    def sweep(self) -> bool:
        """Requeue, promote, republish and settle what is due in every open job, if this node holds the
        watcher lease (False, nothing done, if another does)."""
        if not self._lead():
            return False
        store, s = self.ctx.store, self.ctx.settings
        tasks: list[TaskRef] = []
        results: list[bytes] = []
        stale: dict[str, list[str]] = {}
        now = store.now_ms()
        stale_before = now - int(s.manager.republish_after_s * 1000)
        open_tasks, open_jobs, oldest = 0, 0, now
        in_a_row = 0
        for job in store.jobs():
            self._still_leading()
            try:
                waiting, published = store.load(job)
                if not waiting and self._settle(job):
                    continue
                open_tasks, open_jobs = open_tasks + waiting, open_jobs + bool(waiting)
                oldest = min(oldest, published if published is not None else now)
                self._sweep_job(job, now, stale_before, tasks, results, stale)
                in_a_row = 0
            except LeaseLapsed:
                self._publish(tasks, results)  # the jobs swept before (the one it stopped in: see _republish_lost)
                raise
            except Exception as exc:  # one broken job must not stall every other job's timeouts
                in_a_row += 1
                if in_a_row >= MAX_FAILED_JOBS:
                    raise StoreError(f"{in_a_row} jobs in a row failed the sweep, the last ({job}): {exc}") from exc
                SWEEP_FAILURES.inc()
                log.error("sweep of job %s failed; the other jobs are swept: %s", job, exc, extra=task_fields(job),
                          exc_info=not isinstance(exc, (StoreError, QueueError)))
        self._expire(now - int(s.manager.retain_done_s * 1000))
        self._publish(tasks, results)
        topics = task_topics(s.nsq)
        depths = self.ctx.publisher.backlogs([*topics, s.nsq.results_topic])  # one /stats per nsqd
        backlog = None if depths is None else sum(depths[t] for t in topics)
        self._republish_lost(stale, stale_before, backlog)
        OPEN_TASKS.set(open_tasks)
        JOBS_OPEN.set(open_jobs)
        OLDEST_PENDING_AGE.set((now - oldest) / 1000)
        if depths is not None:
            QUEUE_DEPTH.labels(s.nsq.tasks_topic).set(backlog or 0)  # every priority's
            QUEUE_DEPTH.labels(s.nsq.results_topic).set(depths[s.nsq.results_topic])
        self.sweeps += 1
        return True

    def _sweep_job(self, job: str, now: int, stale_before: int, tasks: list[TaskRef], results: list[bytes],
                   stale: dict[str, list[str]]) -> None:
        """One open job's part of the sweep: what is due is moved in Redis here, and what to publish is
        added to `tasks`/`results`, published once for every job after the loop."""
        store, s = self.ctx.store, self.ctx.settings
        pending: list[str] = []
        for task_id in store.due(job, TaskState.RUNNING, now):
            self._still_leading()
            moved = store.requeue(job, task_id, self._fence_ms)
            log.info("lease of %s/%s expired -> %s", job, task_id, moved, extra=task_fields(job, task_id))
            if moved == TaskState.PENDING:
                pending.append(task_id)
            elif moved == TaskState.ANALYZING:
                results.append(TaskRef(job, task_id).encode())
        for task_id in store.due(job, TaskState.RETRY, now):
            self._still_leading()
            if store.promote(job, task_id, fence_ms=self._fence_ms):
                pending.append(task_id)
        tasks += self._task_refs(job, pending + self._promote_scheduled(job, now))
        stale[job] = store.due(job, TaskState.PENDING, stale_before)
        unheard = store.due(job, TaskState.ANALYZING, stale_before, limit=1)
        if unheard:
            log.warning("results of %s waited %.0f s unclaimed: ringing its doorbell again", job,
                        s.manager.republish_after_s)
            results.append(TaskRef(job, unheard[0]).encode())

    def _publish(self, tasks: list[TaskRef], results: list[bytes]) -> None:
        if tasks:
            self.ctx.publisher.publish_tasks(tasks)
        self._ring(self.ctx.settings.nsq.results_topic, results)

    def _task_refs(self, job: str, ids: list[str]) -> list[TaskRef]:
        """Refs to publish, each with its task's priority (kept in Redis), so a requeue, a retry and a
        delayed task go on their priority's topic, as when first submitted."""
        return [TaskRef(job, i, priority=p) for i, p in zip(ids, self.ctx.store.priorities(job, ids))]

    def _promote_scheduled(self, job: str, now: int) -> list[str]:
        """The job's delayed tasks due by `now` to pending, 500 per round trip, at most SCHEDULED_PER_SWEEP
        (the rest on the next sweep); returns those to publish."""
        moved: list[str] = []
        while len(moved) < SCHEDULED_PER_SWEEP:
            due = self.ctx.store.due(job, TaskState.SCHEDULED, now)
            moved += self.ctx.store.promote_due(job, TaskState.SCHEDULED, due, self._fence_ms)
            if len(due) < 500:
                break
        return moved

    def _settle(self, job: str) -> bool:
        """A job with nothing open: if done, its summary is written (the analyzer's, should it have
        crashed first) and it leaves the sweep; True then."""
        if self.ctx.archive is not None:
            write_summary(self.ctx.store, self.ctx.archive, job)
        return self.ctx.store.settle(job)

    def _expire(self, done_before_ms: int) -> None:
        """Jobs done before `done_before_ms` leave Redis, each once its summary is in MySQL."""
        for job in self.ctx.store.done_before(done_before_ms):
            if self.ctx.archive is not None:
                write_summary(self.ctx.store, self.ctx.archive, job)
            if self.ctx.store.expire(job):
                log.info("job %s expired from Redis (done over %g s ago); MySQL keeps it", job,
                         self.ctx.settings.manager.retain_done_s, extra=task_fields(job))

    def _republish_lost(self, stale: dict[str, list[str]], stale_before: int, backlog: int | None) -> None:
        """Republish pending refs only when nsqd holds fewer messages than Redis has pending tasks
        (`backlog`: what every nsqd holds on the tasks topics; None if none answered).

        A long backlog is not a loss: republishing every old pending task would flood NSQ with
        duplicates. A shortfall means nsqd lost messages (a SIGKILL, a wiped disk) or a publish failed
        after the Redis write; the oldest waiting tasks are then the likeliest lost, and a duplicate is
        harmless (the lease drops it). Results need no count: one doorbell per job stands for all of
        its results, and the sweep rings for any left unclaimed (above).
        """
        # Only tasks waiting longer than republish_after_s count: a task just written to Redis whose
        # message is still on its way would otherwise look lost.
        waiting = sum(self.ctx.store.count(j, TaskState.PENDING, stale_before) for j in stale)
        shortfall = 0 if backlog is None else max(0, waiting - backlog)
        # Counts read at two instants race with live traffic: act only on a shortfall seen twice. nsqd's
        # is read first (by the sweep): a message finished between the two reads takes its task out of
        # Redis's count as well, where the other order would count the task and miss its message.
        budget, self._shortfall = min(shortfall, self._shortfall), shortfall
        for job, ids in stale.items():
            ids = ids[:budget]
            if not ids:
                continue
            budget -= len(ids)
            log.warning("republishing %d pending task(s) of %s that NSQ no longer holds", len(ids), job)
            self.ctx.publisher.publish_tasks(self._task_refs(job, ids))
            self.ctx.store.touch_state(job, TaskState.PENDING, ids)

    def _ring(self, topic: str, bodies: list[bytes]) -> None:
        if bodies:
            self.ctx.publisher.publish(topic, bodies)
