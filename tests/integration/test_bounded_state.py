"""Redis holds live work, not history: a done job leaves the watcher's sweep at once and Redis
`[manager].retain_done_s` later, still readable from MySQL through the same queries; a job that
takes new tasks is open again; a teardown finds a job's keys from the job, never by scanning."""

from __future__ import annotations

import pytest

from taskherd.actors.context import PodContext
from taskherd.actors.timeout_watcher import TimeoutWatcher
from taskherd.config import Settings
from taskherd.jobs import Queries
from taskherd.nsq.publisher import Publisher
from taskherd.store import keys
from taskherd.store.archive import Archive, ArchivedTask
from taskherd.store.state_store import NewTask, StateStore
from tests.helpers import Services


@pytest.fixture
def store(clean: Services) -> StateStore:
    return StateStore(clean.settings.redis)


@pytest.fixture
def archive(clean: Services) -> Archive:
    archive = Archive(clean.settings.mysql)
    archive.ensure_schema()
    return archive


def finish_job(store: StateStore, archive: Archive, job: str, ids: list[str]) -> None:
    """Submit, run, analyze and archive every task of `job`, as pods would: the job ends done."""
    store.submit(job, [NewTask(i, job, "t", "{}", f"d-{i}", 3, 60.0) for i in ids])
    for i in ids:
        lease, _ = store.lease(job, i, f"exec-{i}", "w", 10_000, "t")
        assert not isinstance(lease, str), lease
        store.finish(lease, "ok", {"n": i}, "", -1, {"exec": lease.exec_id})
    tasks, _ = store.claim_results(job, 256, 60_000)
    archive.archive([ArchivedTask(id=t["id"], job=job, type="t", state="succeeded", attempts=1, digest=t["digest"],
                                  parent="", payload="{}", result=t["result"], error=None, executions="[]",
                                  created_ms=1, finished_ms=2) for t in tasks])
    assert store.retire(job, [(t["id"], "succeeded") for t in tasks])[1] is True


def watcher(settings: Settings, store: StateStore, archive: Archive, retain_done_s: float) -> TimeoutWatcher:
    manager = settings.manager.model_copy(update={"retain_done_s": retain_done_s})
    ctx = PodContext(settings.model_copy(update={"manager": manager}), "node", store, Publisher(settings.nsq), archive)
    return TimeoutWatcher(ctx, supervisor=None, slot="watcher")


def job_keys(store: StateStore, job: str) -> list[str]:
    return list(store.redis.scan_iter(match=keys.job_pattern(job)))


def test_a_done_job_leaves_the_sweep_at_once_and_redis_after_retention(clean: Services, store: StateStore,
                                                                       archive: Archive) -> None:
    finish_job(store, archive, "old", ["a", "b"])
    finish_job(store, archive, "young", ["c"])
    open_job = [NewTask("d", "open", "t", "{}", "d-d", 3, 60.0)]
    store.submit("open", open_job)
    assert store.jobs() == {"old", "young", "open"}
    # When a sweep runs: the done jobs leave the open set (the sweep's work), their state stays
    watcher(clean.settings, store, archive, retain_done_s=3600).sweep()
    assert store.jobs() == {"open"}
    assert job_keys(store, "old") and Queries(store, archive).job("old")["summarized"] is True
    # And once they are older than the retention, their runtime state leaves Redis, but not the open job's
    watcher(clean.settings, store, archive, retain_done_s=0).sweep()
    assert job_keys(store, "old") == [] and job_keys(store, "young") == [] and job_keys(store, "open") != []
    assert store.leftovers("old") == [] and store.redis.zcard(keys.JOBS_DONE) == 0
    # Then they read as before, from MySQL
    old = Queries(store, archive).job("old")
    assert old is not None and (old["done"], old["total"], old["counts"]["succeeded"]) == (True, 2, 2)
    assert Queries(store, archive).task("a")["state"] == "succeeded"
    # (a waiter's read names the job it knows: archived, or another job named, the task is found all the same)
    assert Queries(store, archive).task("a", "old")["state"] == "succeeded"
    assert Queries(store, archive).task("d", "old")["job"] == "open"


def test_a_settled_job_that_takes_a_new_task_is_open_again_and_not_expired(clean: Services, store: StateStore,
                                                                           archive: Archive) -> None:
    finish_job(store, archive, "again", ["a"])
    watcher(clean.settings, store, archive, retain_done_s=3600).sweep()
    assert store.jobs() == set() and store.done_before(store.now_ms() + 1) == ["again"]
    # When a task joins the done job
    assert store.submit("again", [NewTask("b", "again", "t", "{}", "d-b", 3, 60.0)]) == ["created"]
    # Then it is open: swept again, out of the done set, and expiring it does nothing
    assert store.jobs() == {"again"} and store.done_before(store.now_ms() + 1) == []
    assert store.expire("again") is False
    watcher(clean.settings, store, archive, retain_done_s=0).sweep()
    assert store.task("again", "b")["state"] == "pending"


def test_a_teardown_finds_the_jobs_keys_without_scanning_the_keyspace(clean: Services, store: StateStore,
                                                                     archive: Archive) -> None:
    pipe = store.redis.pipeline(transaction=False)
    for i in range(20_000):
        pipe.set(f"unrelated:{i}", "x")
    pipe.execute()
    finish_job(store, archive, "small", ["a"])
    store.submit("small", [NewTask("live", "small", "t", "{}", "d-live", 3, 60.0)])  # one task still live
    scans = _scan_calls(store)
    assert store.teardown("small") == []
    assert _scan_calls(store) == scans
    assert job_keys(store, "small") == [] and store.job_of("live") is None


def _scan_calls(store: StateStore) -> int:
    stats = store.redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("scan", "hscan", "keys"))
