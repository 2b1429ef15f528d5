"""Progress reports (`taskherd.progress`, an exe's TASKHERD_PROGRESS_FD) reach the runner while the
call runs, belong to that call only, and cost a tight loop next to nothing."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskherd
from taskherd.runners import Runner
from taskherd.runners.progress import ProgressPipe
from taskherd.specs import RunnerSpec
from tests.unit.test_runners import FIXTURES, live_children, wait_until


@pytest.fixture
def runner() -> Iterator[Runner]:
    before = {p.pid for p in live_children()}
    r = Runner(pythonpath=[str(FIXTURES)])
    yield r
    r.close()
    assert [p for p in live_children() if p.pid not in before] == [], "a process the runner started outlived it"


def test_a_python_executors_progress_is_seen_while_it_runs_and_not_after(runner: Runner, tmp_path: Path) -> None:
    go = tmp_path / "go"
    started = runner.start(RunnerSpec("python", "progress_funcs:report_then_wait"), {"go": str(go)}, 30)
    assert wait_until(runner.progress, what="the report") == {"fraction": 0.25, "message": "a quarter"}
    go.touch()
    assert started().result == {"went": True}
    assert runner.progress() is None


def test_ten_thousand_reports_in_a_tight_loop_cost_well_under_a_second(runner: Runner) -> None:
    bare = runner.run(RunnerSpec("python", "progress_funcs:bare_loop"), {"n": 10_000}, 30)
    tight = runner.run(RunnerSpec("python", "progress_funcs:tight_loop"), {"n": 10_000}, 30)
    assert tight.ok, tight.error
    assert tight.result["elapsed_s"] - bare.result["elapsed_s"] < 0.5, (tight.result, bare.result)


def test_an_exe_writes_progress_lines_to_the_fd_its_environment_names(runner: Runner, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = ('echo "0.5 half way there" >"/dev/fd/$TASKHERD_PROGRESS_FD"; '
              'while [ ! -e "$1" ]; do sleep 0.01; done; echo "{}"')
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(
        runner.run(RunnerSpec("exe", ["sh", "-c", script, "sh", str(go)]), {}, 30)))
    thread.start()
    try:
        assert wait_until(runner.progress, what="the exe's report") == {"fraction": 0.5, "message": "half way there"}
    finally:
        go.touch()
        thread.join(30)
    assert outcome[0].ok, outcome[0].error
    assert runner.progress() is None


def test_a_report_tagged_with_another_call_is_not_this_calls() -> None:
    pipe = ProgressPipe()
    try:
        os.write(pipe.write_fd, b'{"id":1,"f":0.9,"m":"late"}\n{"id":2,"f":0.1,"m":"now"}\nnot a report\n')
        assert pipe.latest(2) == {"fraction": 0.1, "message": "now"}
        assert pipe.latest(1) is None
    finally:
        pipe.close()


def test_progress_outside_a_worker_does_nothing_and_refuses_a_bad_fraction() -> None:
    taskherd.progress(0.5, "no worker here")
    with pytest.raises(ValueError, match="from 0 to 1"):
        taskherd.progress(1.5)
    with pytest.raises(ValueError, match="from 0 to 1"):
        taskherd.progress("half")  # type: ignore[arg-type]
