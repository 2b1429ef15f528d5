"""What the API and the CLI say, said as a user reads it (issue 13, item 10): a finished task's
cancel names its final state, the CLI names its own flags and the file's lines, an error with no
field has no dash, node numbers are numbers, and an empty list says so.

Runs against the Manager and Api actors of test_api's `stack`, on real services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskherd.cli import main
from taskherd.client import ClientError
from taskherd.store.archive import Archive, ArchivedTask
from tests.integration import test_api
from tests.integration.test_api import ECHO, Stack

stack, typed = test_api.stack, test_api.typed  # the fixtures, shared


def archive_task(stack: Stack, task_id: str, state: str) -> None:
    """A task that ran and was archived in `state` (nothing of it left in Redis)."""
    archive = Archive(stack.settings.mysql)
    try:
        archive.archive([ArchivedTask(id=task_id, job="j1", type="echo", state=state, attempts=1, digest="0" * 64,
                                      parent="", payload="{}", result="{}", error=None, executions="[]",
                                      created_ms=1, finished_ms=2)])
    finally:
        archive.close()


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
def test_cancelling_a_finished_task_says_its_final_state(typed: Stack, state: str) -> None:
    archive_task(typed, "done-1", state)
    answer = typed.http.post("/tasks/done-1/cancel")
    assert answer.status_code == 200
    assert answer.json() == {"id": "done-1", "was": state, "cancelled": False}


def test_cancelling_a_waiting_task_still_says_it_was_pending(typed: Stack) -> None:
    typed.http.post("/tasks", json=typed.task(id="w1"))
    assert typed.http.post("/tasks/w1/cancel").json() == {"id": "w1", "was": "pending", "cancelled": True}


def test_the_cli_409_on_a_different_spec_names_the_replace_flag(stack: Stack,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    api = ["--api", stack.url, "executor", "add", "echo", "--kind", "python"]
    assert main([*api, "--target", ECHO["target"]]) == 0
    capsys.readouterr()
    assert main([*api, "--target", "tests.unit.fixtures.runner_funcs:whoami"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 409 replace: ") and "add --replace to replace it" in err, err
    assert "replace=true" not in err


def test_submit_file_errors_name_the_file_and_line(typed: Stack, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Given a file whose third task (line 5, after a blank line) has a type nobody registered
    lines = tmp_path / "tasks.jsonl"
    lines.write_text('{"id": "a"}\n{"id": "b"}\n\n{"id": "c", "payload": {"n": 3}}\n{"id": "d", "type": "nope"}\n')
    assert main(["--api", typed.url, "submit", "--job", "j1", "--type", "echo", "--file", str(lines)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: 409 {lines}:5: type: no executor registered"), err
    assert "tasks.3" not in err


def test_submit_file_errors_name_the_line_in_a_later_chunk(typed: Stack, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Given more tasks than one request takes (stack's max_batch is 5), the bad one in the second chunk
    lines = tmp_path / "tasks.jsonl"
    lines.write_text("".join(json.dumps({"id": f"t{i}", "max_attempts": 0 if i == 7 else 1}) + "\n"
                             for i in range(9)))
    config = tmp_path / "taskherd.toml"
    config.write_text("[api]\nmax_batch = 5\n")
    argv = ["--config", str(config), "--api", typed.url, "submit", "--job", "j1", "--type", "echo", "--file", str(lines)]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert err.splitlines()[-1].startswith(f"error: 422 {lines}:8: max_attempts: "), err
    assert out.split()[::2] == ["t0", "t1", "t2", "t3", "t4"], "the first chunk was submitted and is shown"


def test_an_error_without_a_field_prints_no_dash(typed: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert ClientError(503, {"errors": [{"field": None, "message": "redis unavailable: down"}]}).describe() == \
        "503 redis unavailable: down"
    typed.manager.stop()
    assert main(["--api", typed.url, "executor", "add", "x", "--kind", "python", "--target", ECHO["target"]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 503 the manager is not running"), err


def test_nodes_give_numbers_as_numbers(stack: Stack) -> None:
    from taskherd.actors.registry import NodeInfo, Registry
    from taskherd.store.state_store import StateStore

    info = NodeInfo.for_this_process("worker", 3)
    Registry.start(StateStore(stack.settings.redis).members, info, stack.settings.registry, supervisor=None,
                   slot="registry")
    nodes = test_api.wait_until(lambda: stack.http.get("/nodes").json(), timeout=10, message="node registered")
    assert nodes[0]["pid"] == info.pid and nodes[0]["slots"] == 3
    assert isinstance(nodes[0]["started"], float) and abs(nodes[0]["started"] - info.started) < 0.01


def test_an_empty_task_list_says_no_tasks_on_stderr(typed: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--api", typed.url, "task", "list", "--state", "failed"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "no tasks"
    archive_task(typed, "dead-1", "failed")
    assert main(["--api", typed.url, "task", "list", "--state", "failed"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["dead-1"] and err == ""
