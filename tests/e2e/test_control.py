"""Cancel, dead letters and retry, end to end on real pods."""

from __future__ import annotations

import psutil
import pytest

from taskherd.cli import main
from taskherd.client import ClientError
from taskherd.store.archive import Archive
from tests.e2e.test_task_life import done, job_keys
from tests.helpers import wait_until

PY = "tests.e2e.funcs"


def test_a_poison_task_runs_max_attempts_times_then_is_a_dead_letter_that_retry_requeues(cluster):
    c = cluster.client
    c.add_executor("poison", {"kind": "python", "target": f"{PY}:boom", "max_attempts": 3})
    c.submit({"id": "p-1", "type": "poison", "job": "jp", "payload": {"n": 1}})
    status = done(cluster, "jp")
    task = c.task("p-1")
    assert task["state"] == "failed" and len(task["executions"]) == 3
    assert all("boom on 1" in e["error"] for e in task["executions"])
    assert status["counts"]["failed"] == 1
    assert c.tasks("failed", job="jp")[0] == ["p-1"]

    c.add_executor("poison", {"kind": "python", "target": f"{PY}:echo", "max_attempts": 3}, replace=True)
    assert c.retry("p-1")["status"] == "retried"
    status = done(cluster, "jp")
    assert status["counts"]["failed"] == 0 and status["counts"]["succeeded"] == 1
    assert c.task("p-1")["state"] == "succeeded"
    assert Archive(cluster.settings.mysql).counts("jp") == {"succeeded": 1, "records": 1}
    with pytest.raises(ClientError) as not_dead:
        c.retry("p-1")
    assert not_dead.value.status == 409


def test_cancelling_a_running_task_kills_its_executor(cluster, tmp_path):
    c = cluster.client
    c.add_executor("slow", {"kind": "python", "target": f"{PY}:marker_sleep"})
    pidfile = tmp_path / "pid"
    c.submit({"id": "s-1", "type": "slow", "job": "jc", "payload": {"pidfile": str(pidfile), "sleep_s": 60}})
    pid = wait_until(lambda: pidfile.exists() and pidfile.read_text() and int(pidfile.read_text()), timeout=30)
    assert c.task("s-1")["state"] == "running"
    assert c.cancel("s-1")["was"] == "running"
    status = done(cluster, "jc", timeout=20)
    assert status["counts"]["cancelled"] == 1
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
               timeout=10, message="the cancelled executor's process is gone")
    assert c.task("s-1")["state"] == "cancelled"


def test_cancelling_a_job_cancels_waiting_tasks_and_refuses_new_ones(cluster, tmp_path):
    c = cluster.client
    c.add_executor("slow", {"kind": "python", "target": f"{PY}:marker_sleep"})
    c.submit([{"id": f"w-{i}", "type": "slow", "job": "jj",
               "payload": {"pidfile": str(tmp_path / f"pid{i}"), "sleep_s": 60}} for i in range(10)])
    wait_until(lambda: c.job("jj")["counts"]["running"] == 4, timeout=30, message="4 slots busy")
    assert c.cancel_job("jj")["cancelled"] == 10
    status = done(cluster, "jj", timeout=30)
    assert status["counts"]["cancelled"] == 10 and status["total"] == 10
    with pytest.raises(ClientError) as refused:
        c.submit({"id": "late", "type": "slow", "job": "jj", "payload": {}})
    assert refused.value.status == 409 and "was cancelled" in str(refused.value)


def test_teardown_refuses_an_open_job_and_with_cancel_kills_archives_then_tears_it_down(cluster, tmp_path, capsys):
    c = cluster.client
    api = ["--api", c.base_url]
    c.add_executor("slow", {"kind": "python", "target": f"{PY}:marker_sleep"})
    pidfiles = [tmp_path / f"pid{i}" for i in range(6)]
    c.submit([{"id": f"td-{i}", "type": "slow", "job": "jt", "payload": {"pidfile": str(p), "sleep_s": 60}}
              for i, p in enumerate(pidfiles)])
    pids = wait_until(lambda: [int(p.read_text()) for p in pidfiles if p.exists() and p.read_text()] or None,
                      timeout=30, message="an executor started")
    # Given an open job with running executors, when it is torn down without --cancel
    with pytest.raises(ClientError) as refused:
        c.teardown("jt")
    # Then it is refused, naming what is open, and nothing is deleted or killed
    assert refused.value.status == 409 and "is open" in str(refused.value) and "running" in str(refused.value)
    assert main(api + ["job", "teardown", "jt"]) == 1
    err = capsys.readouterr().err
    assert "is open" in err and "Traceback" not in err
    assert c.job("jt")["open"] == 6 and all(psutil.pid_exists(pid) for pid in pids)
    # When it is torn down with --cancel: cancelled, killed, archived, then torn down
    assert main(api + ["job", "teardown", "jt", "--cancel"]) == 0
    assert "torn down" in capsys.readouterr().out
    assert [c.task(f"td-{i}")["state"] for i in range(6)] == ["cancelled"] * 6
    assert Archive(cluster.settings.mysql).counts("jt") == {"cancelled": 6, "records": 0}
    assert job_keys(cluster, "jt") == []
    for pid in pids:
        wait_until(lambda pid=pid: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                   timeout=10, message=f"executor {pid} killed")
