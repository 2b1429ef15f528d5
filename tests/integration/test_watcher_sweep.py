"""One broken job does not stall the TimeoutWatcher for every other job: the sweep logs it, counts
it (`taskherd_sweep_failures_total`) and sweeps the rest; only several failing in a row (Redis gone)
end the sweep early."""

from __future__ import annotations

import pytest

from taskherd.actors.context import PodContext
from taskherd.actors.timeout_watcher import MAX_FAILED_JOBS, TimeoutWatcher
from taskherd.errors import StoreError
from taskherd.metrics import SWEEP_FAILURES
from taskherd.nsq.publisher import Publisher
from taskherd.states import TaskState
from taskherd.store import keys
from taskherd.store.state_store import NewTask, StateStore
from tests.helpers import Services


@pytest.fixture
def store(clean: Services) -> StateStore:
    return StateStore(clean.settings.redis)


def watcher(clean: Services, store: StateStore) -> TimeoutWatcher:
    ctx = PodContext(clean.settings, "node", store, Publisher(clean.settings.nsq), None)
    return TimeoutWatcher(ctx, supervisor=None, slot="watcher")


def expired_lease(store: StateStore, job: str, task_id: str) -> None:
    """A task of `job` whose worker took a 1 ms lease and vanished."""
    store.submit(job, [NewTask(task_id, job, "t", "{}", f"d-{task_id}", 3, 60.0)])
    lease, _ = store.lease(job, task_id, f"exec-{task_id}", "w", 1, "t")
    assert not isinstance(lease, str), lease


def break_job(store: StateStore, job: str) -> None:
    """A job whose meta hash is not a hash: every read of it fails with WRONGTYPE."""
    store.redis.sadd(keys.JOBS, job)
    store.redis.set(keys.job_meta(job), "not a hash")


def test_a_broken_job_is_skipped_and_every_other_job_swept(clean: Services, store: StateStore) -> None:
    # Given jobs with an expired lease each, and a broken job among them (the set's order is Redis's)
    healthy = [f"ok-{i}" for i in range(4)]
    for job in healthy:
        expired_lease(store, job, f"{job}-t")
    break_job(store, "broken")
    before = SWEEP_FAILURES._value.get()
    # When one sweep runs
    watcher(clean, store).sweep()
    # Then every healthy job's lost lease went back to pending, and the broken job was counted
    assert {job: store.task(job, f"{job}-t")["state"] for job in healthy} == dict.fromkeys(healthy, TaskState.PENDING)
    assert SWEEP_FAILURES._value.get() == before + 1


def test_jobs_failing_in_a_row_end_the_sweep_as_an_outage(clean: Services, store: StateStore) -> None:
    for i in range(MAX_FAILED_JOBS):
        break_job(store, f"broken-{i}")
    with pytest.raises(StoreError, match="jobs in a row failed the sweep"):
        watcher(clean, store).sweep()
