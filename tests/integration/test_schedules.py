"""Schedules on real services: every tick fires exactly once (archive ids unique, none missing), with
two managers racing and one SIGKILLed mid-run, across a window with no manager at all (the missed
ticks fire once on return), and a DELETE stops it. The API's answers and the CLI's lines without pods.

A tick's task id is `sched-NAME-<tick, UTC>`: the archive (MySQL, unique on id) tells which ticks
fired, and each row's executions that it ran once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taskherd.cli import main
from taskherd.client import Client, ClientError
from taskherd.deploy.local.cluster import Pod
from tests.helpers import Services, free_port, mysql_connect, wait_until
from tests.integration import test_api
from tests.integration import test_delayed as delayed
from tests.integration.test_api import Stack, error

stack, typed = test_api.stack, test_api.typed  # the API's fixtures: Manager and HttpServer, no worker

INTERVAL_S = delayed.INTERVAL_S


@dataclass
class Herd(delayed.Herd):
    """test_delayed's herd (the same pods, the watcher and the scheduler every INTERVAL_S), and more."""

    def manager(self, name: str) -> Pod:
        """Another manager pod, its API on a port of its own."""
        pod = Pod(name, "manager", self.config, self.out, args=("--api-port", str(free_port())))
        pod.start()
        self.pods.append(pod)
        return pod

    def archived(self, job: str) -> dict[str, int]:
        """Task id -> executions, of the job's archived tasks."""
        conn = mysql_connect(self.settings)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id, executions FROM tasks WHERE job = %s", (job,))
                return {row[0]: len(json.loads(row[1])) for row in cur.fetchall()}
        finally:
            conn.close()

    def stop_schedule_and_drain(self, name: str) -> dict[str, int]:
        self.client.delete_schedule(name)
        wait_until(lambda: self.client.job(name)["done"], timeout=30, ignore=(ClientError,), message=f"job {name} done")
        return self.archived(name)


@pytest.fixture
def herd(clean: Services, tmp_path: Path) -> Iterator[Herd]:
    """A manager pod and a worker pod of 2 slots, every sweep and scheduler round each INTERVAL_S."""
    yield from delayed.running_herd(clean, tmp_path, Herd)


def tick_of(task_id: str) -> int:
    """`sched-NAME-20261206T143000Z` -> the tick's Unix second."""
    return int(dt.datetime.strptime(task_id.rsplit("-", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).timestamp())


def gaps(ticks: list[int], period: int) -> list[tuple[int, int]]:
    """(last tick before, first tick after) of each run of missing ticks."""
    return [(a, b) for a, b in zip(ticks, ticks[1:]) if b - a != period]


def fired_past(herd: Herd, name: str, n: int, timeout: float = 30) -> dict[str, Any]:
    """Wait until the schedule has fired `n` more ticks than now; its view then."""
    now = herd.client.schedule(name)
    first = now["last_fired_ms"] or now["next_fire_ms"] - 1000
    return wait_until(lambda: (s := herd.client.schedule(name))["last_fired_ms"] and
                      s["last_fired_ms"] >= first + n * 1000 and s, timeout=timeout, ignore=(ClientError,),
                      message=f"{name} fired {n} more ticks")


def test_every_second_fires_each_tick_exactly_once_and_delete_stops_it(herd: Herd) -> None:
    # Given a schedule every second (its tasks at priority 7: they go through the priority bands)
    put = herd.client.put_schedule("ticks", {"every_s": 1, "task": {"type": "ok", "payload": {"n": 1}, "priority": 7}})
    assert put["status"] == "created" and put["schedule"]["next_fire_ms"] % 1000 == 0
    first = put["schedule"]["next_fire_ms"] // 1000
    # When it runs for 6 ticks and is deleted
    fired_past(herd, "ticks", 6)
    deleted_at = herd.store.now_ms() // 1000
    archived = herd.stop_schedule_and_drain("ticks")
    # Then every tick from its first on fired once, each task ran once, none is missing
    ticks = sorted(tick_of(t) for t in archived)
    assert ticks[0] == first and len(ticks) >= 6, ticks
    assert gaps(ticks, 1) == [] and set(archived.values()) == {1}, archived
    assert herd.client.job("ticks")["total"] == len(ticks)
    # and after the DELETE nothing more fires (a tick in flight at that moment at most)
    wait_until(lambda: herd.store.now_ms() // 1000 >= deleted_at + 3, timeout=10, message="3 s past the delete")
    assert ticks[-1] <= deleted_at + 1 and len(herd.archived("ticks")) == len(ticks)
    with pytest.raises(ClientError) as exc:
        herd.client.schedule("ticks")
    assert exc.value.status == 404


def test_two_managers_one_sigkilled_mid_run_fire_every_tick_exactly_once(herd: Herd) -> None:
    # Given two managers (both run a Scheduler) and a schedule every second
    herd.manager("manager-2")
    wait_until(lambda: len(herd.client.nodes()) == 3, timeout=60, ignore=(ClientError,), message="second manager up")
    herd.client.put_schedule("racing", {"every_s": 1, "task": {"type": "ok"}})
    fired_past(herd, "racing", 3)
    # When the first manager is SIGKILLed mid-run
    victim = herd.pods[0]
    assert victim.role == "manager" and victim.pid
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(10)
    killed_at = herd.store.now_ms() // 1000
    other = Client(f"http://127.0.0.1:{herd.pods[-1].args[1]}", timeout=10)
    herd.client = other
    wait_until(lambda: other.ready().get("ok"), timeout=30, ignore=(ClientError,), message="the other API answers")
    fired_past(herd, "racing", 4)
    archived = herd.stop_schedule_and_drain("racing")
    total = other.job("racing")["total"]
    other.close()
    # Then every tick, those around the kill included, fired exactly once: none missing, none doubled
    ticks = sorted(tick_of(t) for t in archived)
    assert ticks[0] < killed_at < ticks[-1] - 2, (ticks, killed_at)
    assert gaps(ticks, 1) == [] and set(archived.values()) == {1} and total == len(ticks), (archived, total)


def test_ticks_missed_while_no_manager_runs_fire_once_on_return(herd: Herd) -> None:
    # Given a schedule every second that catches up at most 2 s late, fired a few times
    herd.client.put_schedule("gap", {"every_s": 1, "catch_up_s": 2, "task": {"type": "ok"}})
    fired_past(herd, "gap", 3)
    # When the only manager is stopped for well over 3 ticks, then a new one starts
    manager = herd.pods[0]
    manager.stop(10)
    stopped_at = herd.store.now_ms() // 1000
    wait_until(lambda: herd.store.now_ms() // 1000 >= stopped_at + 5, timeout=15, message="5 s with no manager")
    herd.manager("manager-back")
    back = Client(f"http://127.0.0.1:{herd.pods[-1].args[1]}", timeout=10)
    herd.client = back
    wait_until(lambda: back.ready().get("ok"), timeout=60, ignore=(ClientError,), message="the new manager is ready")
    fired_past(herd, "gap", 3)
    archived = herd.stop_schedule_and_drain("gap")
    back.close()
    # Then the missed ticks fired once, as one task at the latest of them, and the rest each once
    ticks = sorted(tick_of(t) for t in archived)
    holes = gaps(ticks, 1)
    assert len(holes) == 1 and holes[0][1] - holes[0][0] >= 4, (holes, ticks)
    assert holes[0][0] <= stopped_at + 1 and set(archived.values()) == {1}, (holes, stopped_at)
    assert "missed" in herd.out.getvalue()


# --- the API and the CLI, on the API stack (no pods) --------------------------------------------------
def test_put_answers_created_unchanged_replaced_and_get_lists_next_fire_times(typed: Stack) -> None:
    http = typed.http
    body = {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "task": {"type": "echo", "payload": {"a": 1}}}
    first = http.put("/schedules/nightly", json=body)
    assert first.status_code == 201 and first.json()["status"] == "created", first.json()
    shown = first.json()["schedule"]
    assert shown["next_fire_at"].endswith(("T02:30:00+01:00", "T02:30:00+02:00")) and shown["last_fired_at"] is None
    again = http.put("/schedules/nightly", json=body)
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    other = http.put("/schedules/nightly", json={**body, "cron": "0 3 * * *"})
    assert other.status_code == 200 and other.json()["status"] == "replaced"
    assert other.json()["schedule"]["next_fire_at"][11:19] == "03:00:00"
    http.put("/schedules/often", json={"every_s": 60, "task": {"type": "echo"}})
    listed = http.get("/schedules").json()["schedules"]
    assert [s["name"] for s in listed] == ["nightly", "often"]
    assert listed[1]["next_fire_ms"] % 60_000 == 0 and listed[1]["timezone"] == "UTC"
    assert http.get("/schedules/often").json()["every_s"] == 60
    assert http.delete("/schedules/often").json() == {"name": "often", "deleted": True}
    gone = http.delete("/schedules/often")
    assert gone.status_code == 404 and error(gone)["field"] == "name"
    assert http.get("/schedules/often").status_code == 404


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/schedules/s", {"cron": "61 * * * *"}, "cron"),
    ("/schedules/s", {"cron": "5-1 * * * *"}, "cron"),
    ("/schedules/s", {"cron": "* * * * *", "every_s": 5}, "cron"),
    ("/schedules/s", {}, "cron"),
    ("/schedules/s", {"every_s": 0}, "every_s"),
    ("/schedules/s", {"every_s": 5, "timezone": "Mars/Olympus"}, "timezone"),
    ("/schedules/s", {"every_s": 5, "catch_up_s": -1}, "catch_up_s"),
    ("/schedules/s", {"every_s": 5, "task": {"type": "echo", "priority": 12}}, "task.priority"),
    ("/schedules/bad%20name", {"every_s": 5}, "name"),
])
def test_a_bad_schedule_is_a_422_naming_the_field_and_writes_nothing(typed: Stack, path: str, body: dict,
                                                                     field: str) -> None:
    before = typed.frozen()
    answer = typed.http.put(path, json={"task": {"type": "echo"}, **body})
    assert answer.status_code == 422 and error(answer)["field"] == field, answer.json()
    assert typed.frozen() == before


def test_a_schedule_of_a_type_without_executor_is_a_409(typed: Stack) -> None:
    answer = typed.http.put("/schedules/s", json={"every_s": 5, "task": {"type": "nobody"}})
    assert answer.status_code == 409 and error(answer)["field"] == "task.type"


def test_the_cli_adds_lists_and_removes_and_says_a_bad_cron_in_one_line(
        typed: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    api = ["--api", typed.url]
    assert main([*api, "schedule", "add", "hourly", "--cron", "@hourly", "--type", "echo", "--payload", '{"a": 1}']) == 0
    assert capsys.readouterr().out.startswith("schedule hourly: created, next fire ")
    assert main([*api, "schedule", "list"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("hourly\t@hourly (UTC)\tnext ") and "never fired" in line
    assert main([*api, "schedule", "add", "bad", "--cron", "0 25 * * *", "--type", "echo"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 422 cron: expected 5 fields"), err
    assert main([*api, "schedule", "rm", "hourly"]) == 0 and "deleted" in capsys.readouterr().out
    assert main([*api, "schedule", "rm", "hourly"]) == 1
    assert capsys.readouterr().err.strip() == "error: 404 name: no schedule named 'hourly'"
