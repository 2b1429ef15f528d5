"""The task life end to end, on real nsqd, Redis and MariaDB with real manager and worker pods."""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Iterator

import pytest

from taskherd.client import ClientError
from taskherd.store import keys
from taskherd.store.archive import Archive
from taskherd.store.state_store import StateStore
from tests.helpers import QuietHandler, channel_stats, wait_until

PY = "tests.e2e.funcs"


def done(cluster, job: str, timeout: float = 60) -> dict:
    return wait_until(lambda: (j := cluster.client.job(job)) and j["done"] and j, timeout=timeout,
                      ignore=(ClientError,), message=f"job {job} done")


def job_keys(cluster, job: str) -> list[str]:
    store = StateStore(cluster.settings.redis)
    return list(store.redis.scan_iter(match=keys.job_pattern(job)))


def test_same_id_twice_runs_once_and_archives_once(cluster):
    c = cluster.client
    c.add_executor("echo", {"kind": "python", "target": f"{PY}:echo"})
    first = c.submit({"id": "t-1", "type": "echo", "job": "j1", "payload": {"n": 1}})
    again = c.submit({"id": "t-1", "type": "echo", "job": "j1", "payload": {"n": 1}})
    assert first["status"] == "created" and again["status"] == "exists"
    done(cluster, "j1")
    task = c.task("t-1")
    assert task["state"] == "succeeded" and len(task["executions"]) == 1
    assert task["result"]["echo"] == {"n": 1}
    with pytest.raises(ClientError) as conflict:
        c.submit({"id": "t-1", "type": "echo", "job": "j1", "payload": {"n": 2}})
    assert conflict.value.status == 409
    assert c.submit({"id": "t-1", "type": "echo", "job": "j1", "payload": {"n": 1}})["status"] == "exists"
    counts = Archive(cluster.settings.mysql).counts("j1")
    assert counts == {"succeeded": 1, "records": 1}


def test_replaced_executor_is_used_without_restarting_workers(cluster):
    c = cluster.client
    c.add_executor("ver", {"kind": "python", "target": f"{PY}:version_a"})
    c.submit({"id": "v-1", "type": "ver", "job": "jv", "payload": {}})
    done(cluster, "jv")
    assert c.task("v-1")["result"] == {"version": "a"}
    with pytest.raises(ClientError) as conflict:
        c.add_executor("ver", {"kind": "python", "target": f"{PY}:version_b"})
    assert conflict.value.status == 409
    c.add_executor("ver", {"kind": "python", "target": f"{PY}:version_b"}, replace=True)
    c.submit({"id": "v-2", "type": "ver", "job": "jv", "payload": {}})
    done(cluster, "jv")
    assert c.task("v-2")["result"] == {"version": "b"}
    assert all(not p.exited() for p in cluster.pods)


def test_children_get_deterministic_ids_and_the_job_finishes_once(cluster):
    c = cluster.client
    c.add_executor("tree", {"kind": "python", "target": f"{PY}:echo"})
    c.add_analyzer("tree", {"kind": "python", "target": f"{PY}:tree"})
    c.submit({"id": "root", "type": "tree", "job": "jt", "payload": {"depth": 0, "fan": 3, "max_depth": 3}})
    status = done(cluster, "jt")
    expected = 1 + 3 + 9 + 27
    assert status["total"] == expected and status["counts"]["succeeded"] == expected and status["open"] == 0
    archive = Archive(cluster.settings.mysql)
    assert archive.counts("jt") == {"succeeded": expected, "records": expected}
    from taskherd.intake import child_id
    first_child = c.task(child_id("root", 0))
    assert first_child["parent"] == "root" and first_child["payload"]["i"] == 0
    summary = archive.job("jt")
    assert summary["total"] == expected and summary["succeeded"] == expected


def test_an_analyzer_naming_a_child_twice_adds_it_once(cluster):
    c = cluster.client
    c.add_executor("dup", {"kind": "python", "target": f"{PY}:echo"})
    c.add_analyzer("dup", {"kind": "python", "target": f"{PY}:twice"})
    c.submit({"id": "parent", "type": "dup", "job": "jd", "payload": {}})
    status = done(cluster, "jd")
    assert status["total"] == 2
    assert c.task("the-child")["parent"] == "parent"
    # a redelivered result of an archived task (re-analysis) changes nothing
    from taskherd.nsq.messages import TaskRef
    from taskherd.nsq.publisher import Publisher

    Publisher(cluster.settings.nsq).publish(cluster.settings.nsq.results_topic, [TaskRef("jd", "parent").encode()])
    Publisher(cluster.settings.nsq).publish(cluster.settings.nsq.tasks_topic, [TaskRef("jd", "parent").encode()])
    wait_until(lambda: _topic_drained(cluster), timeout=20, message="redelivered messages consumed")
    assert c.job("jd")["total"] == 2 and Archive(cluster.settings.mysql).counts("jd")["succeeded"] == 2


def _topic_drained(cluster) -> bool:
    from taskherd.nsq.publisher import Publisher
    q = Publisher(cluster.settings.nsq)
    return q.backlog(cluster.settings.nsq.results_topic) == 0 and q.backlog(cluster.settings.nsq.tasks_topic) == 0


def test_teardown_leaves_no_key_of_the_job(cluster):
    c = cluster.client
    c.add_executor("echo", {"kind": "python", "target": f"{PY}:echo"})
    c.submit([{"type": "echo", "job": "jx", "payload": {"n": i}} for i in range(20)])
    done(cluster, "jx")
    assert c.teardown("jx")["leftovers"] == []
    assert job_keys(cluster, "jx") == []
    assert c.job("jx")["done"] is True  # the summary stays in MySQL


class _Handler(QuietHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = {"/ok": 200, "/bad": 400, "/down": 503, "/analyze": 200}[self.path]
        out = {"got": body} if self.path != "/analyze" else {"record": {"via": "http", "id": body["task"]["id"]}}
        self.reply(status, json.dumps(out).encode())


@pytest.fixture
def http_target() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_every_executor_and_analyzer_kind_including_failures(cluster, http_target):
    c = cluster.client
    exe_ok = [sys.executable, "-c", "import json,sys; print(json.dumps({'exe': json.load(sys.stdin)}))"]
    exe_fail = [sys.executable, "-c", "import sys; sys.stderr.write('exe broke'); sys.exit(3)"]
    exe_analyzer = [sys.executable, "-c",
                    "import json,sys; d=json.load(sys.stdin); print(json.dumps({'record': {'via': 'exe'}}))"]
    specs = {
        "py-ok": ({"kind": "python", "target": f"{PY}:echo"}, {"kind": "python", "target": f"{PY}:tree"}),
        "py-fail": ({"kind": "python", "target": f"{PY}:boom", "max_attempts": 2}, None),
        "exe-ok": ({"kind": "exe", "target": exe_ok}, {"kind": "exe", "target": exe_analyzer}),
        "exe-fail": ({"kind": "exe", "target": exe_fail, "max_attempts": 1}, None),
        "http-ok": ({"kind": "http", "target": f"{http_target}/ok"}, {"kind": "http", "target": f"{http_target}/analyze"}),
        "http-4xx": ({"kind": "http", "target": f"{http_target}/bad"}, None),
        "http-5xx": ({"kind": "http", "target": f"{http_target}/down", "max_attempts": 2}, None),
        "bad-analyzer": ({"kind": "python", "target": f"{PY}:echo"}, {"kind": "python", "target": f"{PY}:bad_analyzer"}),
        "bad-exe-analyzer": ({"kind": "python", "target": f"{PY}:echo"}, {"kind": "exe", "target": exe_fail}),
        "bad-http-analyzer": ({"kind": "python", "target": f"{PY}:echo"},
                              {"kind": "http", "target": f"{http_target}/bad"}),
    }
    for task_type, (executor, analyzer) in specs.items():
        c.add_executor(task_type, executor)
        if analyzer:
            c.add_analyzer(task_type, analyzer)
    c.submit([{"id": t, "type": t, "job": "kinds", "payload": {"depth": 9, "n": 1}} for t in specs])
    status = done(cluster, "kinds", timeout=90)
    tasks = {t: c.task(t) for t in specs}
    assert tasks["py-ok"]["state"] == "succeeded" and tasks["py-ok"]["record"]["depth"] == 9
    assert tasks["exe-ok"]["result"] == {"exe": {"depth": 9, "n": 1}} and tasks["exe-ok"]["record"] == {"via": "exe"}
    assert tasks["http-ok"]["result"] == {"got": {"depth": 9, "n": 1}} and tasks["http-ok"]["record"]["via"] == "http"
    assert tasks["py-fail"]["state"] == "failed" and len(tasks["py-fail"]["executions"]) == 2
    assert "boom" in tasks["py-fail"]["error"]
    assert tasks["exe-fail"]["state"] == "failed" and "exe broke" in json.dumps(tasks["exe-fail"]["executions"])
    assert tasks["http-4xx"]["state"] == "failed" and len(tasks["http-4xx"]["executions"]) == 1
    assert tasks["http-5xx"]["state"] == "failed" and len(tasks["http-5xx"]["executions"]) == 2
    for bad in ("bad-analyzer", "bad-exe-analyzer", "bad-http-analyzer"):
        assert tasks[bad]["state"] == "failed" and "analyzer" in tasks[bad]["error"], tasks[bad]
    assert "exe broke" in tasks["bad-exe-analyzer"]["error"]
    assert status["counts"]["succeeded"] == 3 and status["counts"]["failed"] == 7



def test_an_analyzer_that_fails_once_is_retried_and_its_task_succeeds(cluster, tmp_path):
    # Given an analyzer that raises the first time it sees each task (a retryable failure)
    c = cluster.client
    c.add_executor("flaky", {"kind": "python", "target": f"{PY}:echo"})
    c.add_analyzer("flaky", {"kind": "python", "target": f"{PY}:fails_first_analysis"})
    ids, marks = [f"fa-{i}" for i in range(3)], tmp_path / "analyzed"
    marks.mkdir()
    c.submit([{"id": i, "type": "flaky", "job": "jfa", "payload": {"dir": str(marks)}} for i in ids])
    # When the job runs, Then each result is analyzed again after a backoff and its task succeeds
    status = done(cluster, "jfa", timeout=30)
    assert status["counts"]["succeeded"] == 3 and status["counts"].get("failed", 0) == 0
    assert sorted(p.name for p in marks.iterdir()) == ids  # each analysis failed once first
    assert Archive(cluster.settings.mysql).counts("jfa") == {"succeeded": 3, "records": 3}


def test_a_long_poll_answers_with_progress_then_with_done(cluster):
    c = cluster.client
    c.add_executor("sleepy", {"kind": "python", "target": f"{PY}:sleepy"})
    c.submit({"id": "lp-1", "type": "sleepy", "job": "jlp", "payload": {"sleep_s": 2.0}})
    # A short long-poll on a running job answers with its progress when its wait is over
    early = c.job("jlp", wait_s=0.2)
    assert early["done"] is False and early["total"] == 1
    # A long one answers with the job done, well before its 60 s are up (the ResultAnalyzer wakes it)
    status = c.job("jlp", wait_s=60)
    assert status["done"] is True and status["counts"]["succeeded"] == 1
    assert status == c.job("jlp")  # the status handed over at wake-up is what a read gives
    # The client's wait rides on it; an unknown job is a 404, not a wait
    assert c.wait("jlp", timeout=5)["done"] is True
    with pytest.raises(ClientError) as missing:
        c.job("no-such-job", wait_s=5)
    assert missing.value.status == 404


def test_a_task_longer_than_nsqs_msg_timeout_keeps_its_message(cluster):
    # Given nsqd's msg_timeout of 2 s (the e2e settings) and a task that runs 4 s
    from taskherd.actors.worker import CHANNEL
    c = cluster.client
    c.add_executor("sleepy", {"kind": "python", "target": f"{PY}:sleepy"})
    c.submit({"id": "long-msg", "type": "sleepy", "job": "jlm", "payload": {"sleep_s": 4.0}})
    # When it runs to the end
    done(cluster, "jlm")
    # Then its message was touched while it ran: nsqd never timed it out and sent it again
    stats = channel_stats(cluster.settings, cluster.settings.nsq.tasks_topic, CHANNEL)
    assert stats is not None and stats["timeout_count"] == 0, stats
    assert len(c.task("long-msg")["executions"]) == 1
