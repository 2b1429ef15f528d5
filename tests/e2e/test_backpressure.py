"""Bounded pending work on a real cluster: a manager pod and a worker pod (`taskherd run`), with
`[manager].max_open_tasks_per_job = 4` and `max_open_tasks = 6`.

A producer five times faster than the bound (the Python client, and the CLI streaming a file) is
slowed down by 429s and finishes every task; an analyzer's children are accepted past the bound.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskherd.cli import main
from taskherd.client import Client
from taskherd.config import from_dict
from taskherd.config.toml_out import dumps
from taskherd.deploy.local.cluster import Pod
from tests.e2e.conftest import fast
from tests.helpers import Services, wait_until

PER_JOB, ALL = 4, 6
SLEEPY = {"kind": "python", "target": "tests.e2e.funcs:sleepy", "timeout_s": 30}


class _Tee(io.StringIO):
    def write(self, s: str) -> int:
        sys.stderr.write(s)
        return super().write(s)


@pytest.fixture
def herd(clean: Services, tmp_path: Path) -> Iterator[tuple[Client, Path, str]]:
    """(a client, the cluster's config file, the API URL): one manager and one worker pod."""
    data = fast(clean.settings).model_dump()
    data["manager"].update(max_open_tasks_per_job=PER_JOB, max_open_tasks=ALL)
    data["api"].update(max_batch=2)  # the CLI's --file sends chunks of this size
    settings = from_dict(data)
    config = tmp_path / "herd.toml"
    config.write_text(dumps(settings))
    log = _Tee()
    pods = [Pod("manager", "manager", config, log), Pod("worker", "worker", config, log)]
    for pod in pods:
        pod.start()
    url = f"http://{settings.api.host}:{settings.api.port}"
    client = Client(url, submit_deadline=60)
    try:
        wait_until(lambda: len(client.nodes()) == 2, timeout=60, ignore=(Exception,), message="both pods registered")
        client.add_executor("sleepy", SLEEPY)
        yield client, config, url
    finally:
        client.close()
        for pod in pods:
            pod.stop(15)


def refusals(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith("taskherd_submits_refused_total{"))


def test_a_client_submitting_five_times_the_bound_slows_down_and_finishes_them_all(herd) -> None:
    client, _, url = herd
    # Given a herd that holds 4 open tasks of a job, 6 in all
    tasks = [{"id": f"t{i}", "type": "sleepy", "job": "flood", "payload": {"sleep_s": 0.05}} for i in range(20)]
    # When a producer submits 5 x the job's bound, 2 at a time, as fast as it is let
    answers = client.submit(tasks, chunk=2)
    # Then every task was created (none refused for good), the herd refused some requests on the way,
    # and the job ends with all 20 succeeded
    assert [a["status"] for a in answers] == ["created"] * 20
    assert refusals(url) > 0
    status = client.wait("flood", timeout=120)
    assert status["counts"]["succeeded"] == 20 and status["total"] == 20


def test_cli_submit_file_backs_off_and_submits_the_whole_file(herd, tmp_path, capsys) -> None:
    client, config, url = herd
    # Given a file of 5 x the job's bound, streamed 2 lines per request
    lines = tmp_path / "flood.jsonl"
    lines.write_text("".join(f'{{"id": "f{i}", "payload": {{"sleep_s": 0.05}}}}\n' for i in range(20)))
    capsys.readouterr()
    # When the CLI submits it
    code = main(["--config", str(config), "submit", "--job", "file-flood", "--type", "sleepy", "--file", str(lines),
                 "--submit-deadline", "60"])
    # Then it waited out the 429s and every line was created, in order
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.split()[::2] == [f"f{i}" for i in range(20)] and set(out.split()[1::2]) == {"created"}
    assert "20 created, 0 exist, 0 conflict" in err
    assert refusals(url) > 0
    assert client.wait("file-flood", timeout=120)["counts"]["succeeded"] == 20


def test_an_analyzers_children_are_accepted_past_the_bound(herd) -> None:
    client, _, url = herd
    # Given an analyzer that spawns 3 children per root task (each batch of them fits the bound of 4
    # alone): a job of 3 roots grows to 12 tasks, with up to 12 open at once (a root awaits its archive
    # while its children are created), past the bound of 4 of the job and of 6 of all jobs
    client.add_executor("tree", {"kind": "python", "target": "tests.e2e.funcs:echo"})
    client.add_analyzer("tree", {"kind": "python", "target": "tests.e2e.funcs:tree"})
    roots = [{"id": f"r{i}", "type": "tree", "job": "fan", "payload": {"fan": 3, "max_depth": 1}} for i in range(3)]
    # When the roots are submitted
    client.submit(roots, chunk=1)
    # Then every child was accepted and ran: 12 succeeded, none failed
    status = client.wait("fan", timeout=60)
    assert status["counts"]["succeeded"] == 12 and status["counts"]["failed"] == 0 and status["total"] == 12
    assert refusals(url) == 0
