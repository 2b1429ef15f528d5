"""Delayed tasks (`delay_s`, `run_at`): scheduled until their time, never leased before it, started
within one watcher interval of it, also across a manager's SIGKILL and restart; cancelled before it,
never run. On real pods and services; the API's validation on the API stack (no pod).

The lateness of a start is measured on Redis's clock at both ends: the task's `run_at_ms` (set when it
was created) and its execution's `started` (when a slot leased it).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from taskherd.cli import main
from taskherd.client import Client, ClientError
from taskherd.config import from_dict
from taskherd.config.settings import Settings
from taskherd.deploy.local.cluster import Pod, stop_pods
from taskherd.store import keys
from taskherd.store.state_store import StateStore
from tests.helpers import Services, start_pods, wait_until, write_config
from tests.integration import test_api
from tests.integration.test_api import Stack, error

stack, typed = test_api.stack, test_api.typed  # the API's fixtures: Manager and HttpServer, no worker

OK = [sys.executable, "-c", "import json,sys; print(json.dumps({'echo': json.load(sys.stdin)}))"]
INTERVAL_S = 0.5
"""The watcher's interval in these pods: a delayed task must start no later than this after its time."""
HOP_S = 0.25
"""What a start may take beyond the sweep that promotes it: the sweep's own work, the publish, nsqd,
the slot's lease (a few ms when the 2 cores are quiet)."""


@dataclass
class Herd:
    settings: Settings
    client: Client
    store: StateStore
    pods: list[Pod]
    config: Path
    out: Any


H = TypeVar("H", bound=Herd)


@pytest.fixture
def herd(clean: Services, tmp_path: Path) -> Iterator[Herd]:
    """A manager pod and a worker pod of 2 slots, the watcher sweeping every INTERVAL_S."""
    yield from running_herd(clean, tmp_path, Herd)


def running_herd(clean: Services, tmp_path: Path, kind: type[H]) -> Iterator[H]:
    """The pods of `herd`, as `kind` (a Herd, or a test module's Herd with more to it), stopped after."""
    data = clean.settings.model_dump()
    data["manager"].update(watcher_interval_s=INTERVAL_S)
    data["worker"].update(slots=2, http_port=0)
    settings = from_dict(data)
    config = write_config(settings, tmp_path)
    pods, out = start_pods(config)
    store = StateStore(settings.redis)
    client = Client(f"http://{settings.api.host}:{settings.api.port}", timeout=10)
    try:
        wait_until(lambda: len(client.nodes()) == 2, timeout=60, ignore=(ClientError,), message="both pods registered")
        client.add_executor("ok", {"kind": "exe", "target": OK})
        yield kind(settings, client, store, pods, config, out)
    finally:
        client.close()
        store.close()
        stop_pods(pods, 10)


def lateness_s(task: dict[str, Any]) -> float:
    """Its one execution's start less its due time, in seconds (negative: it started early)."""
    assert task["state"] == "succeeded" and len(task["executions"]) == 1, task
    return (task["executions"][0]["started"] - task["run_at_ms"]) / 1000


def test_delayed_tasks_wait_scheduled_and_start_within_one_watcher_interval(herd: Herd) -> None:
    client = herd.client
    # Given four tasks delayed 2-3.5 s (one by run_at in RFC 3339, one by run_at in epoch seconds) and one at once
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    tasks = [{"id": f"d{i}", "type": "ok", "job": "later", "payload": {"i": i}, "delay_s": 2.0 + 0.5 * i}
             for i in range(2)]
    tasks += [{"id": "rfc", "type": "ok", "job": "later", "run_at": at.isoformat().replace("+00:00", "Z")},
              {"id": "epoch", "type": "ok", "job": "later", "run_at": time.time() + 3.5},
              {"id": "now", "type": "ok", "job": "later"}]
    assert [a["status"] for a in client.submit(tasks)] == ["created"] * 5
    # Then while they wait they are scheduled, with their time, and open in the job
    shown = client.task("rfc")
    assert shown["state"] == "scheduled" and shown["executions"] == []
    assert abs(shown["run_at_ms"] - at.timestamp() * 1000) < 1
    status = client.job("later")
    assert status["counts"]["scheduled"] == 4 and status["open"] >= 4 and not status["done"], status
    # and the one without a delay runs at once, while they still wait
    wait_until(lambda: client.task("now")["state"] == "succeeded", timeout=2, message="the undelayed task ran")
    status = client.job("later")  # archived, yet the job is open: its delayed tasks count
    assert status["counts"]["scheduled"] == 4 and status["open"] == 4 and not status["done"], status
    # When their time comes, Then each starts then: not before, and within one watcher interval after
    done = client.wait("later", timeout=30)
    assert done["counts"]["succeeded"] == 5, done
    late = {t: lateness_s(client.task(t)) for t in ("d0", "d1", "rfc", "epoch")}
    print("lateness s:", json.dumps(late))
    assert all(0 <= s <= INTERVAL_S + HOP_S for s in late.values()), late


def test_a_delayed_task_cancelled_before_its_time_never_runs(herd: Herd) -> None:
    client = herd.client
    # Given a task delayed 2 s
    client.submit({"id": "c1", "type": "ok", "job": "cancelled-later", "delay_s": 2.0})
    due_ms = client.task("c1")["run_at_ms"]
    # When it is cancelled while it waits
    assert client.cancel("c1") == {"id": "c1", "was": "scheduled", "cancelled": True}
    # Then the job is done with it cancelled, and past its time plus two sweeps it has never run
    assert client.wait("cancelled-later", timeout=10)["counts"]["cancelled"] == 1
    wait_until(lambda: herd.store.now_ms() > due_ms + 2 * INTERVAL_S * 1000, timeout=5, message="its time passed")
    task = client.task("c1")
    assert task["state"] == "cancelled" and task["executions"] == [], task


def test_a_delayed_task_starts_on_time_after_the_manager_is_killed_during_its_wait(herd: Herd) -> None:
    client = herd.client
    # Given a task delayed 8 s
    client.submit({"id": "k1", "type": "ok", "job": "survives", "delay_s": 8.0})
    due_ms = client.task("k1")["run_at_ms"]
    # When the manager pod is SIGKILLed during its wait and a new one is started
    manager = herd.pods[0]
    assert manager.role == "manager" and manager.pid
    os.kill(manager.pid, signal.SIGKILL)
    manager.proc.wait(10)
    replacement = Pod("manager-2", "manager", herd.config, herd.out)
    replacement.start()
    herd.pods.append(replacement)
    wait_until(lambda: client.ready().get("ok"), timeout=60, ignore=(ClientError,), message="the new manager is ready")
    holder = wait_until(lambda: herd.store.redis.get(keys.WATCHER_LEASE), timeout=10, message="a watcher is active")
    assert herd.store.now_ms() < due_ms, "the new manager took longer than the delay to start: the case tests nothing"
    # Then the task is still scheduled, and starts on time under the new manager's watcher
    assert client.task("k1")["state"] == "scheduled"
    done = client.wait("survives", timeout=30)
    assert done["counts"]["succeeded"] == 1, done
    late = lateness_s(client.task("k1"))
    print(f"lateness after the manager's restart: {late:.3f} s (watcher {holder})")
    assert 0 <= late <= INTERVAL_S + HOP_S, late


# --- the API's validation, and what a delayed task is before its time (no pod) ----------------------------
@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"delay_s": -1}, "delay_s", "greater than or equal to 0"),
    ({"delay_s": "5"}, "delay_s", "valid number"),
    ({"delay_s": 10 ** 9}, "delay_s", "less than or equal to"),
    ({"run_at": "tomorrow"}, "run_at", "RFC 3339"),
    ({"run_at": "2026-12-24T18:00:00"}, "run_at", "offset"),
    ({"run_at": "2026-02-30T18:00:00Z"}, "run_at", "day is out of range"),
    ({"run_at": True}, "run_at", "got bool"),
    ({"run_at": -5}, "run_at", "epoch seconds ≥ 0"),
    ({"delay_s": 1, "run_at": 1}, "run_at", "not both"),
])
def test_a_bad_delay_s_or_run_at_is_a_422_naming_the_field(typed: Stack, fields: dict[str, Any], field: str,
                                                          words: str) -> None:
    before = typed.frozen()
    one = typed.http.post("/tasks", json=typed.task(id="bad", **fields))
    assert one.status_code == 422 and error(one)["field"] == field and words in error(one)["message"], one.json()
    batch = typed.http.post("/tasks", json={"tasks": [typed.task(id="fine"), typed.task(id="bad", **fields)]})
    assert batch.status_code == 422 and error(batch)["field"] == f"tasks.1.{field}", batch.json()
    assert typed.frozen() == before


def test_a_delayed_task_is_scheduled_in_redis_not_in_nsq_and_the_cli_submits_and_shows_one(
        typed: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    # Given tasks delayed by the API and the CLI, both ways
    assert typed.http.post("/tasks", json=typed.task(id="a", delay_s=60)).status_code == 201
    assert main(["--api", typed.url, "submit", "--job", "j1", "--type", "echo", "--id", "b", "--delay-s", "60"]) == 0
    assert main(["--api", typed.url, "submit", "--job", "j1", "--type", "echo", "--id", "c",
                 "--run-at", "2099-01-01T00:00:00+01:00"]) == 0
    assert capsys.readouterr().out.split() == ["b", "created", "c", "created"]
    # Then nothing is published, every one is scheduled and open, and task show says when it runs
    assert typed.depth() in (None, 0)
    status = typed.http.get("/jobs/j1").json()
    assert status["counts"]["scheduled"] == 3 and status["counts"]["pending"] == 0 and status["open"] == 3, status
    assert main(["--api", typed.url, "task", "show", "c"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "scheduled" and shown["run_at_ms"] == 4070905200000
    # and a resubmission with another delay is the same task (the delay is not part of its identity)
    again = typed.http.post("/tasks", json=typed.task(id="a", delay_s=5))
    assert again.status_code == 200 and again.json()["status"] == "exists"
    # and a run_at already past runs at once: pending and published
    assert typed.http.post("/tasks", json=typed.task(id="d", run_at=1)).status_code == 201
    assert typed.http.get("/tasks/d").json()["state"] == "pending" and typed.depth() == 1
