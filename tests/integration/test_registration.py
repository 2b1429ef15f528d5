"""Registering executors and analyzers: a user's mistake is a 422 and one log line, and a target that
can never run on this host is refused at registration with a 409 (unless `check=false`), naming `target`.

Runs against the Manager and Api actors of test_api's `stack`, on real services."""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path

import httpx
import pytest

from taskherd.cli import main
from tests.integration import test_api
from tests.integration.test_api import ECHO, Stack, error

stack = test_api.stack  # the fixture, shared

PY = "tests.unit.fixtures.runner_funcs"


def rejected(stack: Stack, spec: dict[str, object], path: str = "/executors/t", status: int = 422,
             **params: str) -> httpx.Response:
    before = stack.frozen()
    response = stack.http.put(path, json=spec, params=params)
    assert response.status_code == status, response.text
    assert stack.frozen() == before, "a refused registration wrote something"
    return response


# --- item 8: a 422 is one log line, not an actor's traceback -----------------------------------------
@pytest.mark.parametrize("path, spec", [
    ("/executors/t", {"kind": "python", "target": "not a target"}),
    ("/executors/t", {"kind": "exe", "target": []}),
])  # a bad task type in the path is refused by the route's declared pattern, before the manager
def test_a_refused_registration_logs_one_line_and_no_traceback(stack: Stack, caplog: pytest.LogCaptureFixture,
                                                               path: str, spec: dict[str, object]) -> None:
    caplog.set_level(logging.DEBUG)
    rejected(stack, spec, path)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert "Traceback" not in caplog.text
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno in (logging.INFO, logging.WARNING), caplog.text
    assert "\n" not in refused[0].getMessage()


def test_the_manager_keeps_serving_after_a_refused_registration(stack: Stack) -> None:
    rejected(stack, {"kind": "python", "target": "nosuch_module_xyz:fn"}, status=409)
    assert stack.http.put("/executors/echo", json=ECHO).status_code == 201
    assert stack.manager.is_alive()


# --- item 9: targets that can never run --------------------------------------------------------------
@pytest.fixture
def programs(tmp_path: Path) -> Path:
    """A directory with `tool` (executable) and `data` (a file without x permission)."""
    tool, data = tmp_path / "tool", tmp_path / "data"
    tool.write_text("#!/bin/sh\necho '{}'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    data.write_text("not a program\n")
    return tmp_path


@pytest.mark.parametrize("target, says", [
    ("nosuch_module_xyz:fn", "module 'nosuch_module_xyz' is not found"),
    (f"{PY}.nosuch:fn", f"module '{PY}.nosuch' is not found"),
    ("tests.nosuch_package.mod:fn", "module 'tests.nosuch_package.mod' is not found"),
    ("taskherd.specs.deeper:fn", "module 'taskherd.specs.deeper' is not found"),  # a module is no package
])
def test_a_python_target_whose_module_is_not_found_is_a_409_naming_target(stack: Stack, target: str,
                                                                          says: str) -> None:
    response = rejected(stack, {"kind": "python", "target": target}, status=409)
    assert error(response)["field"] == "target"
    assert says in error(response)["message"] and "check=false" in error(response)["message"]


@pytest.mark.parametrize("target", [
    f"{PY}:echo",                           # from the working directory, where the worker's child looks first
    "taskherd.demo.crawl:fetch",            # an installed package (editable: through its import hook)
    "json:loads", "os.path:join",           # the standard library
])
def test_a_python_target_whose_module_is_found_registers(stack: Stack, target: str) -> None:
    assert stack.http.put("/executors/t", json={"kind": "python", "target": target}).status_code == 201


def test_checking_a_python_target_imports_nothing(stack: Stack) -> None:
    module = f"{PY}_never_imported"
    assert module not in sys.modules
    stack.http.put("/executors/t", json={"kind": "python", "target": f"{module}:fn"})
    assert module not in sys.modules


def test_an_exe_target_that_cannot_run_here_is_a_409_naming_target(stack: Stack, programs: Path) -> None:
    cases = {"/no/such/binary": "does not exist on this host", "nosuch-program-xyz": "is not found on PATH",
             str(programs / "data"): "is not executable", "./tool": "does not exist on this host"}
    for program, says in cases.items():
        response = rejected(stack, {"kind": "exe", "target": [program, "--json"]}, status=409)
        assert error(response)["field"] == "target" and says in error(response)["message"], (program, response.text)


def test_an_exe_target_is_found_by_path_or_relative_to_its_cwd(stack: Stack, programs: Path) -> None:
    specs = [{"kind": "exe", "target": [sys.executable, "-c", "print(1)"]},
             {"kind": "exe", "target": ["sh", "-c", "echo {}"]},
             {"kind": "exe", "target": ["./tool"], "cwd": str(programs)},
             {"kind": "exe", "target": ["tool"], "env": {"PATH": f"{programs}{os.pathsep}/usr/bin"}}]
    for n, spec in enumerate(specs):
        assert stack.http.put(f"/executors/t{n}", json=spec).status_code == 201, stack.http.put(f"/executors/t{n}",
                                                                                                 json=spec).text


@pytest.mark.parametrize("url", ["http://host:notaport/x", "http://host:99999/x", "http:///x"])
def test_an_http_target_that_does_not_parse_is_a_422_naming_target(stack: Stack, url: str) -> None:
    assert error(rejected(stack, {"kind": "http", "target": url}))["field"] == "target"


def test_check_false_registers_a_target_that_exists_only_on_worker_hosts(stack: Stack) -> None:
    for path, spec in [("/executors/a", {"kind": "python", "target": "workeronly.tasks:run"}),
                       ("/analyzers/a", {"kind": "exe", "target": ["/opt/worker-only/tool"]})]:
        response = stack.http.put(path, json=spec, params={"check": "false"})
        assert response.status_code == 201, response.text
        assert stack.http.get(path).json()["target"] == spec["target"]


def test_the_cli_refuses_a_missing_target_naming_its_flag_and_no_check_registers_it(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    api = ["--api", stack.url]
    assert main(api + ["executor", "add", "t", "--kind", "exe", "--target", "/no/such/binary"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 409 target: '/no/such/binary' does not exist") and "add --no-check" in err
    assert main(api + ["executor", "add", "t", "--kind", "exe", "--target", "/no/such/binary", "--no-check"]) == 0
    assert capsys.readouterr().out.strip() == "executor for t: created"
