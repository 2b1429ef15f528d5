"""A resubmit racing the archive of its own task never runs the task again.

The Intake asks MySQL whether an id was archived, then creates it in Redis; the analyzer commits the
archive row, then retires the task from Redis. A resubmit whose MySQL check came just before the
commit and whose create came just after the retire found neither: it created the task anew, which
then ran a second time. retire.lua now leaves a tombstone (its digest, in the job's slot, 10 s) that
submit.lua reads, the id's index entry stays the job's as long (another job's resubmit conflicts), and a
create whose archive check is over 5 s old is refused for a fresh check."""

from __future__ import annotations

import time

import pytest

from taskherd.intake import Intake, Submission
from taskherd.nsq.publisher import Publisher
from taskherd.store import keys
from taskherd.store.archive import Archive, ArchivedTask
from taskherd.store.state_store import NewTask, Recheck, StateStore
from tests.helpers import Services

JOB = "race"


@pytest.fixture
def intake(clean: Services) -> Intake:
    s = clean.settings
    store, archive = StateStore(s.redis), Archive(s.mysql)
    archive.ensure_schema()
    store.register("executor", "t", {"id": "t", "kind": "python", "target": "m:f"}, replace=False)
    return Intake(s, store, archive, Publisher(s.nsq))


def run_and_archive(intake: Intake, task_id: str, payload: dict[str, int], state: str = "succeeded") -> None:
    """The task's whole life: created, leased, finished, its row committed, retired from Redis."""
    (accepted,) = intake.submit([Submission(type="t", job=JOB, payload=payload, id=task_id)])
    assert accepted.status == "created"
    store = intake.store
    lease, _ = store.lease(JOB, task_id, f"e-{task_id}", "w", 10_000, "t")
    assert not isinstance(lease, str), lease
    store.finish(lease, "ok" if state == "succeeded" else "failed", {}, "", -1, {"exec": lease.exec_id})
    (task,), _ = store.claim_results(JOB, 256, 60_000)
    intake.archive.archive([ArchivedTask(id=task_id, job=JOB, type="t", state=state, attempts=1,
                                         digest=task["digest"], parent="", payload=task["payload"], result="{}",
                                         error=None, executions="[]", created_ms=1, finished_ms=2)])
    assert store.retire(JOB, [(task_id, state)])[0] == ["ok"]


def checked_just_before_the_commit(intake: Intake, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resubmit's MySQL check saw nothing archived: it ran a moment before the commit."""
    monkeypatch.setattr(intake.archive, "known", lambda ids: {})


def test_a_resubmit_that_checked_mysql_before_the_commit_does_not_run_the_task_again(
        intake: Intake, monkeypatch: pytest.MonkeyPatch) -> None:
    run_and_archive(intake, "a", {"n": 1})
    total = intake.store.job(JOB)["total"]
    checked_just_before_the_commit(intake, monkeypatch)
    same, other = intake.submit([Submission(type="t", job=JOB, payload={"n": 1}, id="a"),
                                 Submission(type="t", job=JOB, payload={"n": 2}, id="a")])
    assert (same.status, other.status) == ("exists", "conflict")
    assert intake.store.task(JOB, "a") is None and 0 < intake.store.redis.pttl(keys.index("a")) <= 10_000
    elsewhere = intake.submit([Submission(type="t", job="another", payload={"n": 1}, id="a")])
    assert [a.status for a in elsewhere] == ["conflict"] and intake.store.job("another") is None
    assert intake.store.job(JOB)["total"] == total and intake.store.job(JOB)["open"] == 0


def test_a_retry_of_a_dead_letter_right_after_its_archive_is_not_taken_for_a_resubmit(intake: Intake) -> None:
    run_and_archive(intake, "dead", {"n": 1}, state="failed")
    assert [a.status for a in intake.retry(["dead"])] == ["retried"]
    assert intake.store.task(JOB, "dead")["state"] == "pending"


def test_a_create_whose_archive_check_is_older_than_the_tombstones_is_refused(intake: Intake) -> None:
    stale = int(time.time() * 1000) - 6_000
    with pytest.raises(Recheck):
        intake.store.submit(JOB, [NewTask("late", JOB, "t", "{}", "d", 3, 60.0)], archive_checked_ms=stale)
    assert intake.store.task(JOB, "late") is None and intake.store.job_of("late") is None
    fresh = int(time.time() * 1000)
    assert intake.store.submit(JOB, [NewTask("late", JOB, "t", "{}", "d", 3, 60.0)], archive_checked_ms=fresh) == ["created"]
