"""A python executor's `taskherd.progress(...)` shows in GET /tasks/{id} and `taskherd task show`
while the task runs (sent with the lease renewals), and costs a tight loop of reports next to nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import Pods
from tests.helpers import wait_until

TASKHERD = str(Path(sys.executable).parent / "taskherd")


def _progress(pods: Pods, task_id: str) -> dict | None:
    task = pods.client.task(task_id)
    return task["progress"] if task["state"] == "running" else None


def test_progress_shows_while_the_task_runs_and_goes_with_it(cluster: Pods, tmp_path: Path) -> None:
    go = tmp_path / "go"
    cluster.client.add_executor("steps", {"kind": "python", "target": "tests.e2e.progress_funcs:report_then_wait"})
    cluster.client.submit({"id": "p-1", "type": "steps", "job": "pj", "payload": {"go": str(go)}})

    shown = wait_until(lambda: _progress(cluster, "p-1"), timeout=30, message="progress of p-1 while it runs")
    assert (shown["fraction"], shown["message"]) == (0.25, "a quarter")
    assert isinstance(shown["updated_ms"], int)
    cli = subprocess.run([TASKHERD, "--config", str(tmp_path / "pods.toml"), "task", "show", "p-1"],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["progress"]["message"] == "a quarter"

    go.touch()
    assert cluster.client.wait("pj", timeout=60)["counts"]["succeeded"] == 1
    assert cluster.client.task("p-1").get("progress") is None


def test_ten_thousand_reports_in_a_tight_loop_do_not_slow_the_task(cluster: Pods) -> None:
    cluster.client.add_executor("tight", {"kind": "python", "target": "tests.e2e.progress_funcs:tight_loop"})
    cluster.client.submit({"id": "t-1", "type": "tight", "job": "tj", "payload": {"n": 10_000}})
    assert cluster.client.wait("tj", timeout=60)["counts"]["succeeded"] == 1
    run = cluster.client.task("t-1")["executions"][-1]
    assert run["duration_s"] < 1.0, run
