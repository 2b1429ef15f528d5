"""Fan-in joins (an analyzer's `join`, Celery's chord on taskherd's terms): the join task is submitted
exactly once, after every listed child and all their descendants are final, with each child's id,
final state and record; also when the parent's analyzer fails and is run again, when a child fails,
and across a manager's SIGKILL; the job is done only once the join task is final.

The race windows are driven step by step on the store (real Redis, the scripts themselves); the whole
path runs on real pods and services. "Exactly once" is counted as executions of the join task (its
executor appends a line to a file per run), not only as rows.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from taskherd.actors.result_analyzer import ResultAnalyzer, Verdict, _read_analysis, _row
from taskherd.client import Client, ClientError
from taskherd.config import from_dict
from taskherd.config.settings import Settings
from taskherd.demo import wordcount
from taskherd.deploy.local.cluster import Pod, stop_pods
from taskherd.intake import Intake, Submission
from taskherd.nsq.publisher import Publisher
from taskherd.states import TaskState
from taskherd.store import keys
from taskherd.store.archive import Archive
from taskherd.store.state_store import NewTask, StateStore
from tests.helpers import Services, start_pods, wait_until, write_config

FUNCS = "tests.integration.join_funcs"
EXE_ANALYZER = [sys.executable, "-c", "import json; print(json.dumps({'children': [{'type': 'mid', 'payload': {'i': 7}}], "
                "'join': {'type': 'gather', 'payload': {'tag': 'exe'}}}))"]
"""An exe analyzer's join: the same output, read from its stdout."""


# --- the transitions, step by step on real Redis ----------------------------------------------------
JOB = "fan"


@pytest.fixture
def store(clean: Services) -> Iterator[StateStore]:
    s = StateStore(clean.settings.redis)
    yield s
    s.close()


def new(task_id: str, join: str = "", parent: str = "") -> NewTask:
    return NewTask(task_id, JOB, "t", "{}", f"d-{task_id}", 3, 60.0, parent=parent, join=join)


def to_analyzing(store: StateStore, task_id: str) -> None:
    lease, _ = store.lease(JOB, task_id, f"x-{task_id}", "w", 60_000, "t")
    assert not isinstance(lease, str), lease
    assert store.finish(lease, "ok", {}, "", -1, {"exec": lease.exec_id}) in ("ring", "analyzing")


def retire(store: StateStore, task_id: str, state: str = "succeeded", record: Any = None) -> tuple[list[str], bool]:
    """Retire one analyzed task (as the analyzer does after its archive commit); the join tasks fired."""
    fired: list[str] = []
    outcome = json.dumps({"id": task_id, "state": state, "record": record, "error": None})
    outs, done = store.retire(JOB, [(task_id, state)], {task_id: outcome}, fired)
    assert outs == ["ok"], outs
    return fired, done


def register(store: StateStore, parent: str, children: list[str], outside: dict[str, str] | None = None) -> str:
    join = NewTask(f"join-{parent}", JOB, "g", '{"tag":"x"}', "d-join", 3, 60.0, parent=parent)
    return store.register_join(JOB, parent, join, children, outside or {})


def test_children_final_before_the_join_is_registered_still_fire_it_once_after_the_parent(store):
    # Given a parent awaiting analysis whose two children were created in its join
    store.submit(JOB, [new("p")])
    to_analyzing(store, "p")
    store.submit(JOB, [new("a", "p", "p"), new("b", "p", "p")])
    # When both children are final and retired before the parent's analysis registers the join
    for c in ("a", "b"):
        to_analyzing(store, c)
        assert retire(store, c, record={"n": c}) == ([], False)
    # Then registering creates the join task held, and an analysis run again changes nothing
    assert register(store, "p", ["a", "b"]) == "registered"
    assert register(store, "p", ["a", "b"]) == "exists"
    assert store.task(JOB, "join-p")["state"] == "scheduled"
    assert store.due(JOB, TaskState.SCHEDULED, store.now_ms()) == []  # never due until it fires
    # And the join fires when the parent retires: once, with each child's outcome in listed order
    fired, done = retire(store, "p")
    assert fired == ["join-p"] and not done
    payload = store.task(JOB, "join-p")["payload"]
    assert json.loads(payload) == {"tag": "x", "children": [
        {"id": "a", "state": "succeeded", "record": {"n": "a"}, "error": None},
        {"id": "b", "state": "succeeded", "record": {"n": "b"}, "error": None}]}
    assert store.due(JOB, TaskState.SCHEDULED, store.now_ms()) == ["join-p"]  # the watcher's, should we die here
    assert store.promote_due(JOB, TaskState.SCHEDULED, fired) == ["join-p"]
    assert store.redis.exists(keys.join(JOB, "p")) == 0
    # And the job is done only once the join task itself is final
    to_analyzing(store, "join-p")
    assert store.retire(JOB, [("join-p", "succeeded")]) == (["ok"], True)
    assert store.job(JOB)["total"] == 4


def test_a_grandchild_holds_the_join_open_and_a_second_analysis_adds_nothing(store):
    store.submit(JOB, [new("p")])
    to_analyzing(store, "p")
    store.submit(JOB, [new("a", "p", "p")])
    assert register(store, "p", ["a"]) == "registered"
    assert retire(store, "p") == ([], False)
    # Given the child analyzed: its own child enters the same join before the child retires
    to_analyzing(store, "a")
    assert store.submit(JOB, [new("a1", "p", "a")]) == ["created"]
    assert store.submit(JOB, [new("a1", "p", "a")]) == ["exists"]  # its analysis run again: not counted twice
    # When the child retires, the join still waits for the grandchild
    assert retire(store, "a", record={"n": 1}) == ([], False)
    # Then the grandchild's retire fires it (a descendant's outcome is not listed)
    to_analyzing(store, "a1")
    fired, _ = retire(store, "a1", record={"deep": True})
    assert fired == ["join-p"]
    assert [c["id"] for c in json.loads(store.task(JOB, "join-p")["payload"])["children"]] == ["a"]


def test_a_join_inside_a_join_holds_the_outer_one_until_its_own_task_is_final(store):
    # Given r's join over p, and p (a member) declaring its own join over c
    store.submit(JOB, [new("r")])
    to_analyzing(store, "r")
    store.submit(JOB, [new("p", "r", "r")])
    assert register(store, "r", ["p"]) == "registered"
    assert retire(store, "r") == ([], False)
    to_analyzing(store, "p")
    store.submit(JOB, [new("c", "p", "p")])
    assert register(store, "p", ["c"]) == "registered"
    assert store.task(JOB, "join-p")["join"] == "r"
    # When p and then c are final: p's join fires, r's does not
    assert retire(store, "p", record={"p": 1}) == ([], False)
    to_analyzing(store, "c")
    assert retire(store, "c")[0] == ["join-p"]
    # Then r's join fires only once p's join task is final, with p's outcome
    store.promote_due(JOB, TaskState.SCHEDULED, ["join-p"])
    to_analyzing(store, "join-p")
    fired, done = retire(store, "join-p")
    assert fired == ["join-r"] and not done
    assert json.loads(store.task(JOB, "join-r")["payload"])["children"] == [
        {"id": "p", "state": "succeeded", "record": {"p": 1}, "error": None}]


def test_a_child_archived_before_or_never_created_enters_with_the_outcome_given(store):
    store.submit(JOB, [new("p")])
    to_analyzing(store, "p")
    outside = {"old": json.dumps({"id": "old", "state": "failed", "record": None, "error": "boom"})}
    assert register(store, "p", ["old"], outside) == "registered"
    fired, _ = retire(store, "p")
    assert fired == ["join-p"]
    assert json.loads(store.task(JOB, "join-p")["payload"])["children"][0]["state"] == "failed"


def test_a_cancelled_job_cancels_the_held_join_task_and_leaves_nothing_behind(store):
    store.submit(JOB, [new("p")])
    to_analyzing(store, "p")
    store.submit(JOB, [new("a", "p", "p")])
    assert register(store, "p", ["a"]) == "registered"
    assert retire(store, "p") == ([], False)
    # When the job is cancelled: the waiting child and the held join task are cancelled
    cancelled = dict(store.cancel_job(JOB))
    assert cancelled == {"a": "pending", "join-p": "scheduled"}
    # Then the last member's retire does not fire a cancelled join, and teardown finds nothing left
    fired, _ = retire(store, "a", "cancelled")
    assert fired == [] and store.redis.exists(keys.join(JOB, "p")) == 0
    fired2: list[str] = []
    assert store.retire(JOB, [("join-p", "cancelled")], fired=fired2) == (["ok"], True) and fired2 == []
    assert store.teardown(JOB) == []


def test_a_teardown_mid_join_deletes_its_keys(store):
    store.submit(JOB, [new("p")])
    to_analyzing(store, "p")
    store.submit(JOB, [new("a", "p", "p")])
    assert register(store, "p", ["a"]) == "registered"
    assert store.teardown(JOB) == []
    assert store.redis.exists(keys.join(JOB, "p"), keys.joins(JOB)) == 0


def analyze_done(intake: Intake, job: str) -> list[str]:
    """The analyzer's archive-then-retire path for every result of the job awaiting analysis (no analyzer
    spec: the result is the record); the join tasks it fired."""
    tasks, _ = intake.store.claim_results(job, 256, 60_000)
    assert tasks, "nothing awaits analysis"
    verdicts = [(t, Verdict(TaskState.SUCCEEDED, record={"n": t["id"]})) for t in tasks]
    intake.archive.archive([_row(t, v) for t, v in verdicts])
    fired: list[str] = []
    outcomes = {t["id"]: json.dumps({"id": t["id"], "state": "succeeded", "record": v.record, "error": None})
                for t, v in verdicts if t.get("join")}
    intake.store.retire(job, [(t["id"], v.state) for t, v in verdicts], outcomes, fired)
    return fired


def test_the_parents_analysis_repeated_around_its_children_registers_one_join(clean):
    """The analyzer's own steps (`_submit_children`, `_register_join`) run as a crash and a retry would
    run them: the children submitted, one of them final, then the whole analysis again, twice."""
    s = clean.settings
    store, archive = StateStore(s.redis), Archive(s.mysql)
    archive.ensure_schema()
    for t in ("t", "g"):
        store.register("executor", t, {"id": t, "kind": "python", "target": "m:f", "max_attempts": 3}, replace=False)
    intake = Intake(s, store, archive, Publisher(s.nsq))
    fake = SimpleNamespace(intake=intake, ctx=SimpleNamespace(store=store, archive=archive))
    fake._register_join = lambda *a: ResultAnalyzer._register_join(fake, *a)
    try:
        intake.submit([Submission(type="t", job=JOB, payload={}, id="p")])
        to_analyzing(store, "p")
        (parent,), _ = store.claim_results(JOB, 10, 60_000)
        verdict = _read_analysis(parent, {"children": [{"id": "c0"}, {"id": "c1"}],
                                          "join": {"type": "g", "payload": {"k": 1}}, "record": {}})
        # Given a first analysis that created the children and died before registering the join
        assert [a.status for a in intake.submit(list(verdict.children))] == ["created", "created"]
        # and the first child final and archived meanwhile
        to_analyzing(store, "c0")
        assert analyze_done(intake, JOB) == []
        # When the analysis runs again, twice (the second as after a failure before the parent's archive)
        for _ in range(2):
            assert ResultAnalyzer._submit_children(fake, [(parent, verdict)]) == [(parent, verdict)]
        assert store.task(JOB, "join-p")["state"] == "scheduled"
        assert store.job(JOB)["total"] == 4
        # Then the join fires once, after the parent and the last child, with both children's outcomes
        store.unclaim(JOB, ["p"], 0)
        assert analyze_done(intake, JOB) == []  # the parent
        to_analyzing(store, "c1")
        assert analyze_done(intake, JOB) == ["join-p"]
        children = json.loads(store.task(JOB, "join-p")["payload"])["children"]
        assert [(c["id"], c["state"], c["record"]) for c in children] == [
            ("c0", "succeeded", {"n": "c0"}), ("c1", "succeeded", {"n": "c1"})]
        assert store.job(JOB)["total"] == 4
    finally:
        store.close()
        archive.close()


@pytest.mark.parametrize(("join", "words"), [
    ("gather", "join: expected an object"),
    ({"payload": {}}, "join.type: expected"),
    ({"type": "g", "payload": [1]}, "join.payload: expected an object, got list"),
    ({"type": "g", "payload": {"children": 1}}, "join.payload.children: reserved"),
    ({"type": "g", "each": 1}, "join.each: unknown field"),
])
def test_a_malformed_join_fails_the_analysis_naming_the_field(join, words):
    task = {"id": "p", "type": "t", "job": JOB}
    v = _read_analysis(task, {"children": [{"payload": {}}], "join": join})
    assert v.state == TaskState.FAILED and words in (v.error or ""), v.error
    assert v.children == ()


# --- on real pods --------------------------------------------------------------------------------
@dataclass
class Herd:
    settings: Settings
    client: Client
    archive: Archive
    pods: list[Pod]
    config: Path
    out: Any
    tmp: Path


@pytest.fixture
def herd(clean: Services, tmp_path: Path) -> Iterator[Herd]:
    """A manager pod and a worker pod of 4 slots, the types of join_funcs registered."""
    data = clean.settings.model_dump()
    data["manager"].update(watcher_interval_s=0.5)
    data["worker"].update(slots=4, http_port=0)
    settings = from_dict(data)
    config = write_config(settings, tmp_path)
    pods, out = start_pods(config)
    client = Client(f"http://{settings.api.host}:{settings.api.port}", timeout=10)
    archive = Archive(settings.mysql)
    try:
        wait_until(lambda: len(client.nodes()) == 2, timeout=60, ignore=(ClientError,), message="both pods registered")
        for t in ("root", "mid", "leaf"):
            client.add_executor(t, {"kind": "python", "target": f"{FUNCS}:work", "max_attempts": 1})
        client.add_executor("gather", {"kind": "python", "target": f"{FUNCS}:gather"})
        client.add_analyzer("root", {"kind": "python", "target": f"{FUNCS}:root"})
        client.add_analyzer("mid", {"kind": "python", "target": f"{FUNCS}:mid"})
        yield Herd(settings, client, archive, pods, config, out, tmp_path)
    finally:
        client.close()
        archive.close()
        stop_pods(pods, 10)


def run_root(herd: Herd, job: str, timeout: float = 120, **payload: Any) -> tuple[dict[str, Any], list[str]]:
    """Submit a root with a join over its children; wait for the job; (the join task, its executions)."""
    log = herd.tmp / f"{job}.log"
    herd.client.submit({"id": f"{job}-root", "type": "root", "job": job, "payload": {"log": str(log), **payload}})
    herd.client.wait(job, timeout=timeout)
    return herd.client.task(f"join-{job}-root"), log.read_text().splitlines() if log.exists() else []


def test_a_join_over_children_with_grandchildren_fires_once_after_all_are_final(herd):
    join, runs = run_root(herd, "tree", fan=3, grand=2, child_sleep_s=0.2)
    assert len(runs) == 1 and join["state"] == "succeeded", (runs, join)
    children = join["payload"]["children"]
    mids = [c for c in herd.archive.records("tree") if c["type"] == "mid"]
    assert [c["id"] for c in children] == [herd.client.task(c["id"])["id"] for c in children]
    assert {c["id"] for c in children} == {m["task_id"] for m in mids} and len(children) == 3
    assert all(c["state"] == "succeeded" for c in children)
    assert sorted(c["record"]["mid"] for c in children) == [0, 1, 2]
    assert all(c["record"] == herd.client.task(c["id"])["record"] for c in children)
    # Started only after every descendant was final (archived)
    leaves, _ = herd.client.tasks("succeeded", job="tree", limit=100)
    started = join["executions"][0]["started"]
    finished = [herd.client.task(t)["finished_ms"] for t in leaves if t != join["id"]]
    assert len(finished) == 1 + 3 + 6 and max(finished) <= started
    status = herd.client.job("tree")
    assert status["done"] and status["total"] == 11 and status["counts"]["succeeded"] == 11, status
    # And each archived task names the ids its analysis submitted: the root its children then its join
    # task, a mid its two leaves, a leaf none (the parent -> children link the dashboard shows)
    root = herd.client.task("tree-root")
    assert root["children"] == [c["id"] for c in children] + [join["id"]], root["children"]
    for c in children:
        kids = herd.client.task(c["id"])["children"]
        assert len(kids) == 2 and all(herd.client.task(k)["parent"] == c["id"] and
                                      herd.client.task(k)["children"] is None for k in kids), kids


def test_the_parents_analyzer_failing_once_and_run_again_still_gives_one_join(herd):
    marker = herd.tmp / "marker"
    join, runs = run_root(herd, "again", fan=2, grand=1, marker=str(marker))
    assert marker.exists(), "the analyzer never failed: the case tests nothing"
    assert len(runs) == 1 and join["state"] == "succeeded", (runs, join)
    assert len(join["payload"]["children"]) == 2
    assert herd.client.job("again")["total"] == 1 + 2 + 2 + 1


def test_a_failed_child_still_lets_the_join_fire_with_its_state(herd):
    join, runs = run_root(herd, "fails", fan=3, fail_children=[1])
    assert len(runs) == 1 and join["state"] == "succeeded", (runs, join)
    states = {c["record"]["mid"] if c["record"] else None: c["state"] for c in join["payload"]["children"]}
    assert states == {0: "succeeded", None: "failed", 2: "succeeded"}, states
    failed = [c for c in join["payload"]["children"] if c["state"] == "failed"][0]
    assert "fails on purpose" in failed["error"]


def test_a_malformed_join_fails_the_parent_with_the_field_and_creates_no_child(herd):
    herd.client.add_analyzer("bad", {"kind": "python", "target": f"{FUNCS}:bad_join"})
    herd.client.add_executor("bad", {"kind": "python", "target": f"{FUNCS}:work"})
    herd.client.submit({"id": "b1", "type": "bad", "job": "badjoin", "payload": {}})
    status = herd.client.wait("badjoin", timeout=60)
    assert status["total"] == 1 and status["counts"]["failed"] == 1, status
    assert "join.payload: expected an object" in herd.client.task("b1")["error"]


def test_the_job_is_done_only_once_the_join_task_is_final(herd):
    job = "last"
    herd.client.submit({"id": f"{job}-root", "type": "root", "job": job,
                        "payload": {"fan": 2, "join_sleep_s": 2.0}})
    join_id = f"join-{job}-root"
    # While the join task runs (every child archived), the job is open
    wait_until(lambda: herd.client.task(join_id)["state"] == "running", timeout=60, ignore=(ClientError,),
               message="the join task runs")
    status = herd.client.job(job)
    assert status["counts"]["succeeded"] == 3 and not status["done"], status
    done = herd.client.wait(job, timeout=60)
    assert done["done"] and done["finished_ms"] >= herd.client.task(join_id)["finished_ms"], done


def test_a_manager_killed_mid_join_still_gives_one_join(herd):
    job = "killed"
    log = herd.tmp / f"{job}.log"
    herd.client.submit({"id": f"{job}-root", "type": "root", "job": job,
                        "payload": {"fan": 6, "grand": 1, "child_sleep_s": 0.5, "log": str(log)}})
    # When the manager is SIGKILLed once the join is registered and its children run
    store = StateStore(herd.settings.redis)
    try:
        wait_until(lambda: store.task(job, f"join-{job}-root") is not None, timeout=60, message="the join is registered")
    finally:
        store.close()
    manager = herd.pods[0]
    assert manager.role == "manager" and manager.pid
    os.kill(manager.pid, signal.SIGKILL)
    manager.proc.wait(10)
    replacement = Pod("manager-2", "manager", herd.config, herd.out)
    replacement.start()
    herd.pods.append(replacement)
    wait_until(lambda: herd.client.ready().get("ok"), timeout=60, ignore=(ClientError,), message="the new manager is ready")
    # Then the join runs once, over all six children, and the job ends with it
    status = herd.client.wait(job, timeout=120)
    join = herd.client.task(f"join-{job}-root")
    assert len(log.read_text().splitlines()) == 1 and join["state"] == "succeeded", join
    assert len(join["payload"]["children"]) == 6 and status["counts"]["succeeded"] == 1 + 6 + 6 + 1, status


def test_the_word_count_example_reduces_every_chunk_to_the_right_counts(herd):
    text = "\n".join(f"the quick brown fox {i} jumps over the lazy dog's back\nThe end of line {i}" for i in range(9))
    record = wordcount.run(herd.client, text, "wc", lines=4, top=3)
    expected = Counter(wordcount.words(text))
    assert record["chunks"] == 5 and record["failed"] == [], record
    assert record["words"] == sum(expected.values()) and record["distinct"] == len(expected), record
    assert record["top"][0] == ["the", 27] and all(expected[w] == n == 9 for w, n in record["top"][1:]), record
    assert herd.client.job("wc")["counts"]["succeeded"] == 1 + 5 + 1


def test_an_exe_analyzer_declares_a_join_as_a_python_one_does(herd):
    herd.client.add_executor("exe-root", {"kind": "python", "target": f"{FUNCS}:work"})
    herd.client.add_analyzer("exe-root", {"kind": "exe", "target": EXE_ANALYZER})
    herd.client.submit({"id": "e1", "type": "exe-root", "job": "exe", "payload": {}})
    herd.client.wait("exe", timeout=60)
    join = herd.client.task("join-e1")
    assert join["state"] == "succeeded" and join["payload"]["tag"] == "exe", join
    assert [c["record"]["mid"] for c in join["payload"]["children"]] == [7]
