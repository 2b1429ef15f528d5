"""GET /jobs?state=open|done, the client's jobs() and `taskherd job list`: open jobs from Redis, done
ones from their summaries in MySQL, paged by name."""

from __future__ import annotations

import pytest

from taskherd.cli import main
from taskherd.client import Client
from taskherd.store.archive import Archive
from taskherd.store.state_store import NewTask, StateStore
from tests.integration import test_api
from tests.integration.test_bounded_state import finish_job

stack = test_api.stack


@pytest.fixture
def jobs(stack: test_api.Stack) -> test_api.Stack:
    """Three open jobs and two done ones (summarized in MySQL, as the analyzer writes them)."""
    store, archive = StateStore(stack.settings.redis), Archive(stack.settings.mysql)
    for job in ("o-1", "o-2", "o-3"):
        store.submit(job, [NewTask(f"{job}-t", job, "t", "{}", "d", 3, 60.0)])
    for job in ("d-1", "d-2"):
        finish_job(store, archive, job, [f"{job}-a", f"{job}-b"])
        archive.save_job(job, {"total": 2, "succeeded": 2, "failed": 0, "cancelled": 0, "created_ms": 1,
                               "finished_ms": 2})
        store.mark_summarized(job)
        store.settle(job)
    return stack


def test_open_and_done_jobs_are_listed_apart_and_paged(jobs: test_api.Stack) -> None:
    with Client(jobs.url) as client:
        first, cursor = client.jobs("open", limit=2)
        rest, end = client.jobs("open", limit=2, cursor=cursor)
        done, _ = client.jobs("done")
    assert [j["job"] for j in first] == ["o-1", "o-2"] and cursor == "o-2"
    assert [j["job"] for j in rest] == ["o-3"] and end is None
    assert all(j["open"] == 1 and not j["done"] for j in first + rest)
    assert [(j["job"], j["total"], j["counts"]["succeeded"], j["done"]) for j in done] == [
        ("d-1", 2, 2, True), ("d-2", 2, 2, True)]


def test_a_bad_state_is_a_422_naming_it(jobs: test_api.Stack) -> None:
    r = jobs.http.get("/jobs", params={"state": "closed"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "state"


def test_the_cli_lists_jobs_with_their_progress(jobs: test_api.Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--api", jobs.url, "job", "list", "--state", "done"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["JOB", "DONE/TOTAL", "FAILED", "OPEN"]
    assert [line.split() for line in lines[1:]] == [["d-1", "2/2", "0", "0"], ["d-2", "2/2", "0", "0"]]
