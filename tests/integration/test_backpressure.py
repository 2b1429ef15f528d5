"""Bounded pending work: `[manager].max_open_tasks` and `max_open_tasks_per_job` on real services.

A Manager and the API run in this process (no worker: tasks stay open, which is what fills a bound).
A submission that would pass a bound is a 429 with Retry-After that creates nothing, in Redis or in
MySQL; a resubmission of what exists is not counted; the count of open tasks of all jobs stays exact
through every transition (a seeded random run, as tests/integration/test_job_totals.py drives it).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskherd.actors.context import PodContext
from taskherd.actors.http_server import HttpServer
from taskherd.actors.manager import Manager
from taskherd.api.app import build_app
from taskherd.cli import main
from taskherd.config import Settings
from taskherd.config.toml_out import dumps
from taskherd.errors import HerdFull
from taskherd.intake import Intake, Submission
from taskherd.nsq.publisher import Publisher
from taskherd.states import LIVE_STATES
from taskherd.store import keys
from taskherd.store.archive import Archive
from taskherd.store.state_store import StateStore
from tests.helpers import Services, mysql_connect, redis_client, wait_until
from tests.integration.test_job_totals import JOB, Model, analyze, check, intake, step  # noqa: F401 (fixture)

PER_JOB, ALL = 5, 8
ECHO = {"kind": "python", "target": "tests.unit.fixtures.runner_funcs:echo"}


def bounded(settings: Settings, per_job: int = PER_JOB, everywhere: int = ALL) -> Settings:
    manager = settings.manager.model_copy(update={"max_open_tasks_per_job": per_job, "max_open_tasks": everywhere})
    return settings.model_copy(update={"manager": manager})


@pytest.fixture
def api(clean: Services, tmp_path: Path) -> Iterator[tuple[httpx.Client, StateStore, Path]]:
    """(an HTTP client of the API, its store, a config file of its settings) with an `echo` executor."""
    settings = bounded(clean.settings)
    store, queue, archive = StateStore(settings.redis), Publisher(settings.nsq), Archive(settings.mysql)
    archive.ensure_schema()
    ctx = PodContext(settings, "test-node", store, queue, archive)
    intake_ = Intake(settings, store, archive, queue)
    manager = Manager.start(intake_, supervisor=None, slot="manager")
    server = HttpServer.start(lambda: build_app(ctx, intake_, lambda: manager), settings.api.host,
                              settings.api.port, supervisor=None, slot="api")
    http = httpx.Client(base_url=f"http://{settings.api.host}:{settings.api.port}", timeout=30)
    config = tmp_path / "bounded.toml"
    config.write_text(dumps(settings))
    try:
        wait_until(lambda: http.get("/healthz").status_code == 200, timeout=15, ignore=(httpx.TransportError,))
        assert http.put("/executors/echo", json=ECHO).status_code == 201
        yield http, store, config
    finally:
        http.close()
        server.stop()
        manager.stop()
        queue.close()
        archive.close()
        store.close()


def tasks(job: str, *ids: str) -> dict[str, Any]:
    return {"tasks": [{"id": i, "type": "echo", "job": job, "payload": {"i": i}} for i in ids]}


def snapshot(store: StateStore, settings: Settings) -> tuple[dict[str, bytes], tuple[Any, ...]]:
    """Every Redis key with its serialized value, and the checksum of MySQL's tasks and jobs tables."""
    raw = redis_client(settings)
    try:
        dumped = {n: raw.dump(n) for n in raw.keys("*")}
    finally:
        raw.close()
    conn = mysql_connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("CHECKSUM TABLE tasks, jobs")
            sums = tuple(cur.fetchall())
    finally:
        conn.close()
    return dumped, sums


def refused(response: httpx.Response) -> str:
    """The message of a 429, after checking its shape: Retry-After, no field, nothing else."""
    assert response.status_code == 429, response.text
    assert response.headers["Retry-After"] == "1"
    body = response.json()
    assert body["retry_after_s"] == 1 and len(body["errors"]) == 1 and body["errors"][0]["field"] is None
    return str(body["errors"][0]["message"])


def refusals(http: httpx.Client, reason: str) -> float:
    line = next((x for x in http.get("/metrics").text.splitlines()
                 if x.startswith(f'taskherd_submits_refused_total{{reason="{reason}"}}')), None)
    return float(line.split()[-1]) if line else 0.0


def test_a_batch_that_would_pass_the_jobs_bound_is_refused_whole_and_changes_nothing(api, clean) -> None:
    http, store, _ = api
    # Given job j1 with 3 open tasks
    assert http.post("/tasks", json=tasks("j1", "a", "b", "c")).status_code == 201
    before, refused_before = snapshot(store, clean.settings), refusals(http, "max_open_tasks_per_job")
    # When a batch of 3 new tasks would make it 6 > 5
    message = refused(http.post("/tasks", json=tasks("j1", "d", "e", "f")))
    # Then it names the bound, the job and both numbers; nothing changed in Redis or MySQL; it is counted
    assert message.startswith("the herd is full: this submit would pass [manager].max_open_tasks_per_job = 5 "
                              "(job j1 has 3 open, 3 asked)"), message
    assert snapshot(store, clean.settings) == before
    assert refusals(http, "max_open_tasks_per_job") == refused_before + 1
    # And a single task is refused the same way once the job is at its bound
    assert http.post("/tasks", json=tasks("j1", "d", "e")).status_code == 201
    assert "(job j1 has 5 open, 1 asked)" in refused(http.post("/tasks", json=tasks("j1", "x")["tasks"][0]))


def test_a_resubmission_is_not_counted_against_the_bound(api) -> None:
    http, store, _ = api
    # Given job j1 at its bound of 5
    assert http.post("/tasks", json=tasks("j1", *"abcde")).status_code == 201
    # When the same batch is sent again (a producer retrying after a lost answer)
    again = http.post("/tasks", json=tasks("j1", *"abcde"))
    # Then it answers exists, as it would below the bound; a new task still does not fit
    assert again.status_code == 200 and again.json()["exists"] == 5
    assert refused(http.post("/tasks", json=tasks("j1", "a", "f")))
    assert store.open_tasks() == 5


def test_the_bound_on_all_jobs_counts_every_job(api) -> None:
    http, store, _ = api
    # Given 5 open tasks in j1 (its own bound) and 2 in j2: 7 of the 8 all jobs may hold
    assert http.post("/tasks", json=tasks("j1", *"abcde")).status_code == 201
    assert http.post("/tasks", json=tasks("j2", "f", "g")).status_code == 201
    # When j3 asks for 2 (its own bound would allow 5)
    message = refused(http.post("/tasks", json=tasks("j3", "h", "i")))
    # Then the bound on all jobs refuses it, naming itself; one more fits exactly
    assert "would pass [manager].max_open_tasks = 8 (all jobs have 7 open, 2 asked)" in message, message
    assert http.post("/tasks", json=tasks("j3", "h")).status_code == 201
    assert store.open_tasks() == 8


def test_a_batch_of_several_jobs_is_refused_whole_when_one_job_would_pass(api, clean) -> None:
    http, store, _ = api
    # Given j2 with 4 open tasks
    assert http.post("/tasks", json=tasks("j2", *"abcd")).status_code == 201
    before = snapshot(store, clean.settings)
    # When one batch brings 2 tasks to j1 (fits) and 2 to j2 (6 > 5)
    both = {"tasks": tasks("j1", "x", "y")["tasks"] + tasks("j2", "e", "f")["tasks"]}
    message = refused(http.post("/tasks", json=both))
    # Then j1's part is not created either
    assert "(job j2 has 4 open, 2 asked)" in message, message
    assert snapshot(store, clean.settings) == before


def test_a_batch_that_can_never_fit_is_a_422_not_a_429(api) -> None:
    http, _, _ = api
    response = http.post("/tasks", json=tasks("j1", *"abcdef"))
    assert response.status_code == 422
    assert response.json()["errors"][0] == {
        "field": "tasks", "service": None,
        "message": "6 new tasks can never fit under [manager].max_open_tasks_per_job = 5; submit at most 5 at a time"}


def test_openapi_declares_the_429_with_retry_after(api) -> None:
    http, _, _ = api
    answer = http.get("/openapi.json").json()["paths"]["/tasks"]["post"]["responses"]["429"]
    assert "Retry-After" in answer["headers"] and answer["content"]["application/json"]["schema"]


def test_cli_submit_gives_up_after_its_deadline_with_a_clear_error(api, capsys) -> None:
    http, _, config = api
    # Given j1 at its bound, and no worker to drain it
    assert http.post("/tasks", json=tasks("j1", *"abcde")).status_code == 201
    capsys.readouterr()
    # When the CLI submits one more with a deadline of 1.5 s
    code = main(["--config", str(config), "submit", "--job", "j1", "--type", "echo", "--id", "f",
                 "--submit-deadline", "1.5"])
    # Then it retried for that long, then said why it stopped, in lines a person can act on
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err[0].startswith("error: 429 the herd is full: this submit would pass [manager].max_open_tasks_per_job = 5"), err
    assert err[1] == "error: gave up after 1.5 s of retries (Client(submit_deadline=...), taskherd submit --submit-deadline)"


# --- the count of open tasks of all jobs stays exact -----------------------------------------------------
def live_everywhere(store: StateStore) -> int:
    """What the counter must equal: the live-state sets of every job, counted."""
    names = store.redis.scan_iter(match=f"{keys.PREFIX}:{{j:*}}:*", count=1000)  # every master of a cluster
    return sum(store.redis.zcard(n) for n in names if n.rsplit(":", 1)[-1] in set(LIVE_STATES))


@pytest.mark.parametrize("seed", range(8))
def test_the_count_of_open_tasks_stays_exact_through_every_transition(intake, seed) -> None:  # noqa: F811
    """Given seeded random submits, leases, finishes, promotes, requeues, cancels, analyses (retire)
    and retries of dead letters in two jobs, the counter equals the live tasks after every step; a
    teardown of a job with live tasks takes them out; once all is archived it is 0."""
    rnd, model, history = random.Random(seed), Model(), []
    other = intake.submit([Submission(type="t", job="other", payload={}, id=f"o{i}") for i in range(3)])
    assert [a.status for a in other] == ["created"] * 3
    for _ in range(60):
        history.append(step(intake, model, rnd))
        check(intake, model, history)
        assert intake.store.open_tasks() == live_everywhere(intake.store), history
    intake.store.teardown("other")
    assert intake.store.open_tasks() == live_everywhere(intake.store), history
    intake.store.teardown(JOB)
    assert intake.store.open_tasks() == 0 == live_everywhere(intake.store), history


def test_children_are_never_refused(intake) -> None:  # noqa: F811
    """An analyzer's children (intake.submit without `bounded`) pass the bound; a user's submit is refused."""
    settings = bounded(intake.settings, per_job=2, everywhere=2)
    bounded_intake = Intake(settings, intake.store, intake.archive, intake.publisher)
    kids = [Submission(type="t", job=JOB, payload={"i": i}, id=f"k{i}", parent="p") for i in range(4)]
    assert [a.status for a in bounded_intake.submit(kids, where="children")] == ["created"] * 4
    with pytest.raises(HerdFull):
        bounded_intake.submit([Submission(type="t", job=JOB, payload={}, id="u")], bounded=True)
    assert intake.store.open_tasks() == 4
