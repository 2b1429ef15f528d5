"""A job's counts through any sequence of submits, leases, outcomes, cancels, analyses and retries.

Property style, on real Redis, MySQL and nsqd with no pod: seeded random sequences drive the Intake
(submit, some delayed: scheduled; retry), the StateStore's transitions (lease, finish, promote, requeue, cancel) and the
analyzer's archive-then-retire path directly. After every step the job's total must equal the number
of distinct tasks ever created in it, and its counts by state must add up to that total.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

import pytest

from taskherd.actors.result_analyzer import Verdict, _row
from taskherd.intake import Intake, Submission
from taskherd.nsq.publisher import Publisher
from taskherd.states import TaskState
from taskherd.store import keys
from taskherd.store.archive import Archive
from taskherd.store.state_store import Lease, StateStore

JOB = "totals"
IDS = [f"t{i}" for i in range(5)]
SEEDS = range(24)
STEPS = 70


@pytest.fixture
def intake(clean):
    s = clean.settings
    store, archive = StateStore(s.redis), Archive(s.mysql)
    archive.ensure_schema()
    store.register("executor", "t", {"id": "t", "kind": "python", "target": "m:f", "max_attempts": 3}, replace=False)
    return Intake(s, store, archive, Publisher(s.nsq))


@dataclass
class Model:
    """What the test knows: every id ever created, and the leases it holds."""

    created: set[str] = field(default_factory=set)
    leases: dict[str, Lease] = field(default_factory=dict)


def analyze(intake: Intake, job: str = JOB) -> None:
    """The ResultAnalyzer's path without an analyzer spec: claim, archive to MySQL, retire."""
    tasks, _ = intake.store.claim_results(job, 256, 60_000)
    if not tasks:
        return
    verdicts = []
    for t in tasks:
        state = (TaskState.CANCELLED if t.get("outcome") == "cancelled"
                 else TaskState.SUCCEEDED if t.get("outcome") == "ok" else TaskState.FAILED)
        verdicts.append((t, Verdict(state, error=None if state == TaskState.SUCCEEDED else t.get("error") or "x")))
    intake.archive.archive([_row(t, v) for t, v in verdicts])
    intake.store.retire(job, [(t["id"], v.state) for t, v in verdicts])


def step(intake: Intake, model: Model, rnd: random.Random) -> str:
    store, tid = intake.store, rnd.choice(IDS)
    op = rnd.choice(["submit", "submit", "lease", "finish", "finish", "promote", "requeue", "cancel",
                     "analyze", "analyze", "retry", "retry", "start", "release"])
    if op == "submit":  # a resubmission with another payload is a conflict, with the same one exists
        delay = rnd.choice([None, None, 0.0, 0.02, 3600.0])  # some scheduled: due soon, or only ever cancelled
        got = intake.submit([Submission(type="t", job=JOB, payload={"v": rnd.choice([1, 2])}, id=tid, delay_s=delay)])
        if got[0].status == "created":
            model.created.add(tid)
    elif op == "lease":
        lease, _ = store.lease(JOB, tid, uuid.uuid4().hex, "w/0", rnd.choice([0, 60_000]), ahead=rnd.random() < 0.5)
        if isinstance(lease, Lease):
            model.leases[tid] = lease
    elif op == "finish" and tid in model.leases:
        lease = model.leases.pop(tid)
        outcome = rnd.choice(["ok", "failed", "failed"])
        delay = -1 if outcome == "ok" or rnd.random() < 0.6 else 0
        store.finish(lease, outcome, {"r": 1} if outcome == "ok" else None, "" if outcome == "ok" else "boom",
                     delay, {"exec": lease.exec_id, "status": outcome})
    elif op == "start" and tid in model.leases:  # leased ahead, now started (fenced: a no-op if superseded)
        store.start(model.leases[tid])
    elif op == "release" and tid in model.leases:
        store.release(model.leases.pop(tid))
    elif op == "promote":
        store.promote(JOB, tid, rnd.choice([TaskState.RETRY, TaskState.SCHEDULED]))
    elif op == "requeue":  # leases taken with a ttl of 0 have expired already
        store.requeue(JOB, tid)
    elif op == "cancel":
        store.cancel(JOB, tid)
    elif op == "analyze":
        analyze(intake)
    elif op == "retry":
        intake.retry([tid])
    return f"{op}({tid})"


def check(intake: Intake, model: Model, history: list[str]) -> None:
    status = intake.store.job(JOB)
    if status is None:
        assert not model.created, history
        return
    counts = status["counts"]
    assert status["total"] == len(model.created), (status, history)
    assert sum(counts.values()) == status["total"], (status, history)
    assert all(n >= 0 for n in counts.values()), (status, history)
    # What is counted leased is running, under the execution a lease taken ahead and not yet started holds
    leased = intake.store.redis.smembers(keys.leased(JOB))
    assert leased <= set(intake.store.ids_in_state(JOB, TaskState.RUNNING, 0, 100)), (leased, history)
    assert counts["leased"] == len(leased), (status, history)
    for tid in leased:
        lease = model.leases.get(tid)
        assert lease is not None and lease.ahead, (tid, history)
        assert intake.store.redis.hget(keys.task(JOB, tid), "exec") == lease.exec_id, (tid, history)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_jobs_total_counts_each_distinct_task_once_through_retries_cancels_and_resubmits(intake, seed):
    """Given a seeded random sequence of operations on five task ids, when each step runs, then the
    total is the number of distinct tasks and the counts by state add up to it; and once every task
    is driven to its end, MySQL's rows agree with the final counts."""
    rnd, model, history = random.Random(seed), Model(), []
    for _ in range(STEPS):
        history.append(step(intake, model, rnd))
        check(intake, model, history)
    # Drive everything to an end: run what is live to a failure, then archive it.
    for _ in range(10):
        for tid in IDS:
            intake.store.promote(JOB, tid)
            if intake.store.promote(JOB, tid, TaskState.SCHEDULED) is False and \
                    intake.store.redis.hget(keys.task(JOB, tid), "state") == TaskState.SCHEDULED:
                intake.store.cancel(JOB, tid)  # not due for an hour: cancelled (a waiting state, like pending)
            intake.store.requeue(JOB, tid)
            lease, _ = intake.store.lease(JOB, tid, uuid.uuid4().hex, "w/0", 60_000)
            if isinstance(lease, Lease):
                intake.store.finish(lease, "failed", None, "boom", -1, {"exec": lease.exec_id})
        for lease in model.leases.values():
            intake.store.finish(lease, "failed", None, "boom", -1, {"exec": lease.exec_id})
        model.leases.clear()
        analyze(intake)
        check(intake, model, history)
        status = intake.store.job(JOB)
        if status is None or status["open"] == 0:
            break
    status = intake.store.job(JOB)
    if status is not None:
        assert status["open"] == 0 and status["done"], (status, history)
        archived = intake.archive.counts(JOB)
        assert {s: archived.get(s, 0) for s in ("succeeded", "failed", "cancelled")} == \
               {s: status["counts"][s] for s in ("succeeded", "failed", "cancelled")}, (status, archived, history)


def test_a_task_failed_retried_and_failed_again_is_counted_once(intake):
    """The issue's case: a task fails for good, is retried, fails again: 1 of 1, not 1 of 2."""
    model = Model()
    intake.submit([Submission(type="t", job=JOB, payload={}, id="x")])
    model.created.add("x")
    for _ in range(2):
        lease, _ = intake.store.lease(JOB, "x", uuid.uuid4().hex, "w/0", 60_000)
        assert isinstance(lease, Lease)
        intake.store.finish(lease, "failed", None, "boom", -1, {"exec": lease.exec_id})
        analyze(intake)
        check(intake, model, [])
        assert intake.store.job(JOB)["counts"]["failed"] == 1
        assert [a.status for a in intake.retry(["x"])] == ["retried"]
        check(intake, model, [])
