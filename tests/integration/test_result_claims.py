"""Results wait in Redis and are claimed in batches (store/lua/finish.lua, claim.lua), on real Redis
and nsqd: a job's doorbell rings once per batch, not once per task, a claim hides its tasks until it
lapses or is given back, no result recorded around a claim goes unrung, and the TimeoutWatcher rings
for results left unclaimed (a doorbell lost with nsqd, a claim whose manager died)."""

from __future__ import annotations

import pytest

from taskherd.actors.context import PodContext
from taskherd.actors.manager import Manager, Teardown
from taskherd.actors.timeout_watcher import TimeoutWatcher
from taskherd.intake import Intake
from taskherd.nsq.publisher import Publisher
from taskherd.states import TaskState
from taskherd.store import keys
from taskherd.store.archive import Archive, ArchivedTask
from taskherd.store.state_store import NewTask, StateStore
from tests.helpers import topic_depth

JOB = "claims"


@pytest.fixture
def store(clean) -> StateStore:
    return StateStore(clean.settings.redis)


def run_to_result(store: StateStore, task_id: str) -> str:
    """Submit, lease and finish one task; what finish answered ('ring' or 'analyzing')."""
    store.submit(JOB, [NewTask(task_id, JOB, "t", "{}", "digest", 3, 60.0)])
    lease, _ = store.lease(JOB, task_id, f"exec-{task_id}", "w", 10_000, "t")
    assert not isinstance(lease, str), lease
    return store.finish(lease, "ok", {"n": task_id}, "", -1, {"exec": lease.exec_id})


def test_a_busy_job_rings_once_until_its_results_are_claimed(store):
    # Given a first result recorded: the worker is told to ring the job's doorbell
    assert run_to_result(store, "a") == "ring"
    # When more results arrive before the manager has claimed: no more doorbells
    assert [run_to_result(store, t) for t in ("b", "c")] == ["analyzing", "analyzing"]
    # Then one claim takes them all, with their tasks; and the next result rings again
    tasks, _ = store.claim_results(JOB, 256, 60_000)
    assert sorted(t["id"] for t in tasks) == ["a", "b", "c"]
    assert all(t["analyses"] == "1" and t["result"] and len(t["executions"]) == 1 for t in tasks)
    assert run_to_result(store, "d") == "ring"


def test_a_claim_hides_its_tasks_until_given_back_and_counts_each_analysis(store):
    for t in ("a", "b"):
        run_to_result(store, t)
    first, _ = store.claim_results(JOB, 1, 60_000)
    second, _ = store.claim_results(JOB, 256, 60_000)
    assert len(first) == 1 and len(second) == 1 and first[0]["id"] != second[0]["id"]
    assert store.claim_results(JOB, 256, 60_000)[0] == []  # both claimed
    store.unclaim(JOB, [first[0]["id"]], 0)  # the analyzer failed or stopped: at once for the next
    again, _ = store.claim_results(JOB, 256, 60_000)
    assert [t["id"] for t in again] == [first[0]["id"]] and again[0]["analyses"] == "2"


def test_a_lapsed_claim_comes_back(store):
    run_to_result(store, "a")
    assert len(store.claim_results(JOB, 256, 1)[0]) == 1
    store.redis.zadd(keys.by_state(JOB, TaskState.ANALYZING), {"a": 0}, xx=True)  # as if 1 ms were long past
    assert [t["id"] for t in store.claim_results(JOB, 256, 60_000)[0]] == ["a"]


def test_claims_read_the_analyzer_specs_of_their_types(store):
    store.register("analyzer", "t", {"id": "t", "kind": "python", "target": "m:f"}, replace=False)
    run_to_result(store, "a")
    _, hinted = store.claim_results(JOB, 256, 1, type_hints={"t"})
    store.unclaim(JOB, ["a"], 0)
    _, unhinted = store.claim_results(JOB, 256, 1)
    assert hinted["t"]["target"] == unhinted["t"]["target"] == "m:f"


def test_the_watcher_rings_once_for_a_job_whose_results_wait_unclaimed(clean, store):
    s = clean.settings
    for t in ("a", "b"):
        run_to_result(store, t)  # told to ring; the doorbells are never published, as if nsqd lost them
    watcher = TimeoutWatcher(PodContext(s, "node", store, Publisher(s.nsq)), supervisor=None, slot="watcher")
    watcher.sweep()
    assert topic_depth(s, s.nsq.results_topic) is None  # just recorded: their doorbell may be on its way
    store.redis.zadd(keys.by_state(JOB, TaskState.ANALYZING), {"a": 0, "b": 0}, xx=True)  # long past republish_after_s
    watcher.sweep()
    assert topic_depth(s, s.nsq.results_topic) == 1  # one doorbell for the job, not one per result
    assert len(store.claim_results(JOB, 256, 60_000)[0]) == 2


def test_a_teardown_right_after_done_keeps_the_summary_and_no_key(clean, store):
    """The analyzer counts a job done, then writes its summary to MySQL; a client that sees "done" in
    between and tears the job down must neither lose the summary nor find a key of the job left."""
    archive = Archive(clean.settings.mysql)
    archive.ensure_schema()
    run_to_result(store, "a")
    tasks, _ = store.claim_results(JOB, 256, 60_000)
    archive.archive([ArchivedTask(id="a", job=JOB, type="t", state="succeeded", attempts=1, digest="digest",
                                  parent="", payload="{}", result=tasks[0]["result"], error=None,
                                  executions="[]", created_ms=1, finished_ms=2)])
    assert store.retire(JOB, [("a", "succeeded")]) == (["ok"], True)  # done; not yet summarized
    manager = Manager.start(Intake(clean.settings, store, archive, Publisher(clean.settings.nsq)),
                            supervisor=None, slot="manager")
    assert manager.ask(Teardown(JOB), timeout=10) == []
    summary = archive.job(JOB)
    assert summary is not None and (summary["total"], summary["succeeded"]) == (1, 1)
    store.mark_summarized(JOB)  # the analyzer's own, late: it must not bring a key of the job back
    assert store.leftovers(JOB) == []
