"""One broken job does not stall the TimeoutWatcher for every other job: the sweep logs it, counts
it (`taskherd_sweep_failures_total`) and sweeps the rest; only several failing in a row (Redis gone)
end the sweep early. A sweep that stalls past its watcher lease acts no more: Redis refuses its
requeues and promotions once the lease's fence has passed, and leaves them to the new holder."""

from __future__ import annotations

import pytest

from taskherd.actors.context import PodContext
from taskherd.actors.timeout_watcher import MAX_FAILED_JOBS, TimeoutWatcher
from taskherd.errors import LeaseLapsed, StoreError
from taskherd.metrics import SWEEP_FAILURES
from taskherd.nsq.publisher import Publisher
from taskherd.states import TaskState
from taskherd.store import keys
from taskherd.store.state_store import NewTask, StateStore
from tests.helpers import Services, redis_client, wait_until


@pytest.fixture
def store(clean: Services) -> StateStore:
    return StateStore(clean.settings.redis)


def watcher(clean: Services, store: StateStore, node: str = "node", interval_s: float = 1.0) -> TimeoutWatcher:
    settings = clean.settings.model_copy(
        update={"manager": clean.settings.manager.model_copy(update={"watcher_interval_s": interval_s})})
    ctx = PodContext(settings, node, store, Publisher(clean.settings.nsq), None)
    return TimeoutWatcher(ctx, supervisor=None, slot="watcher")


def expired_lease(store: StateStore, job: str, task_id: str) -> None:
    """A task of `job` whose worker took a 1 ms lease and vanished."""
    store.submit(job, [NewTask(task_id, job, "t", "{}", f"d-{task_id}", 3, 60.0)])
    lease, _ = store.lease(job, task_id, f"exec-{task_id}", "w", 1, "t")
    assert not isinstance(lease, str), lease


def lapse(clean: Services) -> None:
    """The watcher lease lapses (its TTL passed without an extend)."""
    redis_client(clean.settings).delete(keys.WATCHER_LEASE)


def overtaken(clean: Services, store: StateStore) -> TimeoutWatcher:
    """Watcher A, leading until its lease lapsed and node B took it (A has not swept since)."""
    a = watcher(clean, store, "a")
    assert a.sweep() is True
    lapse(clean)
    assert store.members.hold(keys.WATCHER_LEASE, "b", 3000)[0] == "taken"
    return a


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


def test_redis_refuses_a_requeue_or_promotion_past_the_lease_fence(clean: Services, store: StateStore) -> None:
    # Given a task whose lease expired and one waiting for its retry, both due
    expired_lease(store, "j", "run")
    store.submit("j", [NewTask("again", "j", "t", "{}", "d-again", 3, 60.0)])
    lease, _ = store.lease("j", "again", "exec-again", "w", 10_000, "t")
    assert not isinstance(lease, str), lease
    assert store.finish(lease, "failed", None, "boom", 0, {"exec": "exec-again"}) == "retry"
    assert store.task("j", "again")["state"] == TaskState.RETRY
    past, future = store.now_ms() - 1, store.now_ms() + 60_000
    # When a watcher whose fence has passed asks, then one whose fence has not
    with pytest.raises(LeaseLapsed, match="requeue of j/run"):
        store.requeue("j", "run", past)
    with pytest.raises(LeaseLapsed, match="promotion of 1 retry"):
        store.promote("j", "again", fence_ms=past)
    states = {t: store.task("j", t)["state"] for t in ("run", "again")}
    # Then the first did nothing, the second did both
    assert states == {"run": TaskState.RUNNING, "again": TaskState.RETRY}
    assert store.requeue("j", "run", future) == TaskState.PENDING
    assert store.promote("j", "again", fence_ms=future) is True


def test_a_sweep_stalled_past_its_lease_leaves_its_acts_to_the_new_holder(
        clean: Services, store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a task whose lease expired, and watcher A (a 0.1 s interval: a 0.3 s lease) sweeping it
    expired_lease(store, "j", "t1")
    a, b = watcher(clean, store, "a", 0.1), watcher(clean, store, "b", 0.1)
    requeue = store.requeue

    def stalled(job: str, task_id: str, fence_ms: int = 0) -> str:
        # A's requeue is held in flight (a cut-off host, a retried connection) until its lease has
        # lapsed and B has taken it, then reaches Redis
        wait_until(lambda: store.members.hold(keys.WATCHER_LEASE, "b", 300)[0] == "taken", timeout=5,
                   message="B taking the lapsed lease")
        return requeue(job, task_id, fence_ms)

    monkeypatch.setattr(store, "requeue", stalled)
    # When A's sweep runs: its requeue arrives after the takeover
    with pytest.raises(LeaseLapsed):
        a.sweep()
    monkeypatch.setattr(store, "requeue", requeue)
    # Then A moved nothing, and B's sweep does it
    assert store.task("j", "t1")["state"] == TaskState.RUNNING
    assert a.sweep() is False
    assert b.sweep() is True
    assert store.task("j", "t1")["state"] == TaskState.PENDING


def test_a_node_that_took_the_lease_without_hearing_it_says_so_when_it_first_acts(
        clean: Services, store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    # Given the lease already held in this node's name by a request whose answer it never got (a hold
    # that timed out on a cut-off host and reached Redis at the heal)
    assert store.members.hold(keys.WATCHER_LEASE, "node", 3000)[0] == "taken"
    # When its watcher sweeps: Redis answers "held"
    with caplog.at_level("INFO", logger="taskherd.watcher"):
        assert watcher(clean, store).sweep() is True
    # Then it still logs that it is now the active watcher (what operators and the multihost checker
    # read to know who acts)
    assert "this node is now the active TimeoutWatcher" in caplog.messages


def test_a_leader_whose_lease_lapsed_under_it_says_so_when_it_takes_it_again(
        clean: Services, store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    # Given node A leading, then stalled past its lease: B took it, acted, and let it lapse in turn
    a = overtaken(clean, store)
    lapse(clean)
    # When A sweeps again: Redis answers "taken", though A thought it still led
    caplog.clear()
    with caplog.at_level("INFO", logger="taskherd.watcher"):
        assert a.sweep() is True
    # Then A logs a new term, so a reader of the logs sees A act after B's term, not B's term go on
    assert "this node is now the active TimeoutWatcher" in caplog.messages


def test_a_leader_that_finds_another_holding_the_lease_says_it_no_longer_leads(
        clean: Services, store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    # Given node A leading, then stalled past its lease, and B holding it now
    a = overtaken(clean, store)
    # When A sweeps again
    caplog.clear()
    with caplog.at_level("INFO", logger="taskherd.watcher"):
        assert a.sweep() is False
    # Then A says it stopped leading, once
    assert caplog.messages.count("this node is no longer the active TimeoutWatcher: another took the lease") == 1
