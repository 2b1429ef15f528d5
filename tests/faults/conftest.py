"""Fixtures of the fault suite, and the table of figures printed at the end of the session.

- `case` (function): names the case, collects its figures and its own violations, and at teardown
  adds its row to the table (also for a failed case) and kills any executor process it leaked.
- `make_cluster` (function): `make_cluster(hooked=False, workers=2, auth=None)` (auth None: on when
  TASKHERD_FAULTS_AUTH=1) starts the manager and worker pods
  on the session's services, emptied first (`clean`); stops them at teardown.

The table is printed by `pytest_terminal_summary` and written to `tests/faults/last_run.md` (an artifact
of the run, ignored by git).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults import report
from tests.faults.harness import EXE_TASK, FUNCS, FaultCluster, JobRun, describe, is_dead, kill_leftovers
from tests.faults.history import Figures, History, read_calls
from tests.helpers import Services, wait_until

SESSION_STARTED = time.monotonic()
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll of the job otherwise


class Case:
    """One fault case: its job run, its figures, and the violations it found on the way."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name, self.tmp = name, tmp
        self.run: JobRun | None = None
        self.figures: Figures | None = None
        self.problems: list[str] = []
        self.notes: list[str] = []

    def start(self, cluster: FaultCluster, executors: dict[str, dict[str, Any]] | None = None) -> JobRun:
        """The job of this case, with the `work` executors (python and exe) and any others registered."""
        specs = {"work": {"kind": "python", "target": f"{FUNCS}:work", "max_attempts": 5},
                 "exe-work": {"kind": "exe", "target": [sys.executable, EXE_TASK], "max_attempts": 5},
                 **(executors or {})}
        for task_type, spec in specs.items():
            cluster.client.add_executor(task_type, spec)
        self.run = JobRun(cluster, self.name, self.tmp)
        return self.run

    def expect(self, predicate: Callable[[], Any], timeout: float, message: str) -> Any:
        """Like `wait_until`, but a miss is recorded as a violation and the case carries on to its figures."""
        try:
            return wait_until(predicate, timeout=timeout, message=message)
        except AssertionError as exc:
            self.problems.append(str(exc))
            return None

    def expect_dead(self, pids: list[int], timeout: float, what: str) -> None:
        """Every pid gone (or a zombie) within `timeout`; else a violation naming the survivors."""
        try:
            wait_until(lambda: all(is_dead(p) for p in pids), timeout=timeout, message=what)
        except AssertionError:
            alive = {p: describe(p) for p in pids if not is_dead(p)}
            self.problems.append(f"{what}: still alive after {timeout:g} s: {alive}")

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)

    def finish(self, *, overlaps: bool = True) -> History:
        """Wait for the job, read its history, record the figures and the history's violations."""
        assert self.run is not None
        history = History.read(self.run)
        self.figures = history.figures(self.name)
        self.figures.notes = self.notes  # notes added after the history still reach the table
        self.problems = history.violations(overlaps=overlaps) + self.problems
        crashes = self.crashes()
        if crashes:
            self.notes.append("actor crashes: " + ", ".join(f"{a} x{n}" for a, n in sorted(crashes.items())))
        return history

    def crashes(self) -> Counter:
        """Actors that died of an exception in any pod, by class (pykka logs each one)."""
        assert self.run is not None
        found = (re.search(r"\[([\w-]+)\].*Unhandled exception in (\w+)", line)
                 for line in self.run.cluster.log.grep("Unhandled exception in"))
        return Counter(f"{m.group(1)}/{m.group(2)}" for m in found if m)

    def assert_ok(self) -> None:
        """Fail with every violation found, the history's and the case's own."""
        where = f"\n(pods log: {self.run.cluster.log.path})" if self.run else ""
        assert not self.problems, "\n".join(self.problems) + where


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    c = Case(_label(request), tmp_path)
    yield c
    rep = getattr(request.node, "rep_call", None)
    figures = c.figures or Figures(c.name, n=len(c.run.expected) if c.run else 0, measured=False,
                                   notes=list(c.notes) + ["failed before its history could be read"])
    figures.outcome = "pass" if rep is not None and rep.passed else "FAIL"
    report.ROWS.append(figures)
    if c.run is not None:
        pids = {p for call in read_calls(c.run.calls) for p in (call.pid, *call.spawned)}
        leaked = kill_leftovers(pids)
        if leaked:
            figures.notes.append(f"teardown killed {len(leaked)} leftover executor process(es)")


def _label(request: pytest.FixtureRequest) -> str:
    """`test_01_worker_sigkill_mid_task` -> `01 worker sigkill mid task`."""
    return request.node.name.removeprefix("test_").replace("_", " ")


@pytest.fixture
def make_cluster(case: Case, clean: Services, tmp_path: Path) -> Iterator[Callable[..., FaultCluster]]:
    clusters: list[FaultCluster] = []

    def make(*, hooked: bool = False, workers: int = 2, slots: int = 2, auth: bool | None = None) -> FaultCluster:
        cluster = FaultCluster(clean, tmp_path, hooked=hooked, slots=slots, auth=auth)
        clusters.append(cluster)
        if cluster.auth:
            case.notes.append("auth on")
        return cluster.start(workers)

    yield make
    for cluster in clusters:
        cluster.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not report.ROWS:
        return
    path = report.write(report.ROWS, time.monotonic() - SESSION_STARTED)
    terminalreporter.write_sep("=", "fault suite: figures per case")
    terminalreporter.write(report.markdown(report.ROWS))
    terminalreporter.write_line(f"(legend and table in {path})")
