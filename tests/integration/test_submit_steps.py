"""A submit in three steps (claim the ids, create in the job's slot, confirm), safe at every cut; and
in one script on one Redis, with the same answers.

The task-id index, the job sets and the count of open tasks are global keys; on a Redis Cluster they
live on other nodes than a job's tasks, so a submit cannot change them in the job's script
(`StateStore.submit` says why each cut is safe). Each test here breaks one step off and checks what
the next submit, or the watcher, then finds. On one Redis the steps run too, with the whole submit
turned off: that is how the cluster's protocol is tested on the first pass."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskherd.store import keys
from taskherd.store.state_store import CLAIM_TTL_MS, Full, NewTask, StaleSpecs, StateStore
from tests.helpers import Services


@pytest.fixture(params=["steps", pytest.param("whole", marks=pytest.mark.single_redis)])
def store(clean: Services, request: pytest.FixtureRequest) -> Iterator[StateStore]:
    s = StateStore(clean.settings.redis)
    s.one_redis = request.param == "whole"
    yield s
    s.close()


@pytest.fixture
def steps(clean: Services) -> Iterator[StateStore]:
    s = StateStore(clean.settings.redis)
    s.one_redis = False
    yield s
    s.close()


def task(job: str, task_id: str, payload: str = "{}") -> NewTask:
    return NewTask(task_id, job, "t", payload, f"d{payload}", 3, 60.0)


def test_a_claim_left_by_a_submit_killed_before_its_create_lapses_and_its_job_resubmits_it(store: StateStore) -> None:
    # Given a submit of job a that claimed id x and died before creating it
    store.redis.set(keys.index("x"), "a", nx=True, px=CLAIM_TTL_MS)
    # Then another job cannot take x while the claim lasts, and the claim only lapses
    assert store.submit("b", [task("b", "x")]) == ["conflict"] and store.task("b", "x") is None
    assert 0 < store.redis.pttl(keys.index("x")) <= CLAIM_TTL_MS
    # When job a's client resubmits (it had no answer)
    assert store.submit("a", [task("a", "x")]) == ["created"]
    # Then the claim is confirmed: the live task's entry no longer lapses, and the task is found by id
    assert store.redis.pttl(keys.index("x")) == -1 and store.job_of("x") == "a"
    assert store.open_tasks() == 1


def test_what_a_submit_did_not_create_is_not_claimed_afterwards(store: StateStore) -> None:
    store.submit("a", [task("a", "x")])
    store.redis.hset(keys.job_meta("c"), "cancel_requested", 1)
    # a conflict, a cancelled job's refusal: no claim stays behind on the ids
    assert store.submit("b", [task("b", "x"), task("b", "y")]) == ["conflict", "created"]
    assert store.submit("c", [task("c", "z")]) == ["cancelled"]
    assert store.job_of("x") == "a" and store.job_of("y") == "b" and store.redis.exists(keys.index("z")) == 0
    version, _ = store.executor_specs(["t"])
    with pytest.raises(StaleSpecs):
        store.submit("d", [task("d", "w")], specs_version=version + "-old")
    assert store.redis.exists(keys.index("w")) == 0 and store.task("d", "w") is None


def test_a_settle_racing_a_create_leaves_the_job_among_the_open_ones(steps: StateStore,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = steps
    # Given a job that is done and settled out of the open jobs (what the watcher sweeps)
    store.submit("a", [task("a", "x")])
    store.redis.hset(keys.job_meta("a"), mapping={"done": 1, "finished": 1})
    store.redis.zrem(keys.by_state("a", "pending"), "x")
    assert store.settle("a") and "a" not in store.jobs()
    store.redis.hset(keys.job_meta("a"), "done", 1)
    # When a new task is created in it while a watcher settles the job between the create and the
    # submit's last step (its done flag was read before the create)
    create = store._create

    def create_then_settle(*args: object) -> list[object]:
        done = store.redis.hget(keys.job_meta("a"), "done")
        out = create(*args)  # type: ignore[arg-type]
        assert done == "1"
        store.redis.srem(keys.JOBS, "a")  # the settle's move, from the flag it read before the create
        return out

    monkeypatch.setattr(store, "_create", create_then_settle)
    assert store.submit("a", [task("a", "y")]) == ["created"]
    # Then the submit's last step put the job back among the open ones: its task will be swept
    assert "a" in store.jobs() and store.redis.zscore(keys.JOBS_DONE, "a") is None


def test_a_settle_that_read_done_before_a_create_moves_the_job_back(steps: StateStore,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = steps
    # Given a done job, When a task is created in it between the settle's read and its move
    store.submit("a", [task("a", "x")])
    store.redis.zrem(keys.by_state("a", "pending"), "x")
    store.redis.hset(keys.job_meta("a"), mapping={"done": 1, "finished": 1})
    hmget = store.redis.hmget

    def read_then_create(name: str, fields: list[str]) -> list[object]:
        out = hmget(name, fields)
        store.redis.hset(keys.job_meta("a"), "done", 0)  # what submit.lua does as it reopens the job
        return out

    monkeypatch.setattr(store.redis, "hmget", read_then_create)
    # Then the settle sees it on its re-check, and leaves the job open
    assert store.settle("a") is False
    assert "a" in store.jobs() and store.redis.zscore(keys.JOBS_DONE, "a") is None


def done_job(store: StateStore, job: str) -> None:
    """A job flagged done, still among the open jobs (its task left for the teardown to find)."""
    store.submit(job, [task(job, "x")])
    store.redis.hset(keys.job_meta(job), mapping={"done": 1, "finished": 1})


@pytest.mark.parametrize("hook", ["hmget", "hget"])
def test_a_teardown_between_a_settles_steps_leaves_the_job_in_neither_set(steps: StateStore, hook: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a done job, When a teardown deletes it after the settle read its flag (hmget), or after the
    # settle moved it and before its re-check (hget): what CI's system teardown met, a job put back
    # among the open ones after it was torn down, found as a leftover
    store = steps
    done_job(store, "a")
    read = getattr(store.redis, hook)

    def torn_down_around(*args: object) -> object:
        if hook == "hget":
            assert store.teardown("a") == []
            return read(*args)
        out = read(*args)
        assert store.teardown("a") == []
        return out

    monkeypatch.setattr(store.redis, hook, torn_down_around)
    # Then the settle takes the gone job out of both sets, and Redis holds nothing of it
    assert store.settle("a") is True
    assert "a" not in store.jobs() and store.redis.zscore(keys.JOBS_DONE, "a") is None
    assert store.leftovers("a") == [] and store.keyspace.leftovers() == []


@pytest.mark.single_redis
def test_a_settle_on_one_redis_is_one_script(clean: Services) -> None:
    store = StateStore(clean.settings.redis)
    try:
        assert store.one_redis
        done_job(store, "a")
        store.submit("b", [task("b", "y")])
        store.redis.sadd(keys.JOBS, "c")  # put among the open jobs, nothing created in it
        done_job(store, "d")
        assert store.teardown("d") == []
        store.redis.sadd(keys.JOBS, "d")  # a stale entry of a torn-down job
        assert [store.settle(j) for j in "abcd"] == [True, False, True, True]
        assert store.jobs() == {"b"} and store.redis.zrange(keys.JOBS_DONE, 0, -1, withscores=True) == [("a", 1.0)]
    finally:
        store.close()


def test_a_resubmit_confirms_a_task_created_before_its_claim_was(store: StateStore) -> None:
    # Given a submit of job a killed between its create and its confirm: the task exists, its claim lapses
    store.redis.set(keys.index("x"), "a", nx=True, px=CLAIM_TTL_MS)
    store._create("a", [task("a", "x")], 0, None)
    # When its client resubmits (it had no answer), Then the claim is confirmed
    assert store.submit("a", [task("a", "x")]) == ["exists"]
    assert store.redis.pttl(keys.index("x")) == -1 and store.job_of("x") == "a"


def test_the_bound_on_all_jobs_counts_only_new_ids(store: StateStore) -> None:
    store.submit("a", [task("a", "x"), task("a", "y")])
    assert store.open_tasks() == 2
    # a resubmission and another job's id are not new: the batch fits under 3 with one new task
    assert store.submit("b", [task("b", "x"), task("b", "z")], bounds=(0, 3)) == ["conflict", "created"]
    assert store.open_tasks() == 3
    with pytest.raises(Full) as full:
        store.submit("c", [task("c", "w")], bounds=(0, 3))
    assert (full.value.scope, full.value.open, full.value.asked) == ("all", 3, 1)
    assert store.redis.exists(keys.index("w")) == 0 and store.task("c", "w") is None
    assert store.submit("a", [task("a", "x")], bounds=(0, 3)) == ["exists"]
