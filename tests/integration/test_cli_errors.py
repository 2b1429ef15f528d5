"""No CLI command prints a traceback for a user's mistake or a service's absence.

Every command is found by walking `build_parser()`'s subparsers (a new command is covered without
touching this file) and run as a subprocess, as a user runs it: with a config file that does not
exist, with no API listening, and with `--api` pointed at a port that speaks another protocol (the
session's real MariaDB). stderr must hold no "Traceback", and the exit code must say it failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskherd.cli import build_parser
from tests.helpers import Services, free_port

STARTS_PROCESSES = {"run", "up", "demo"}
"""Commands that would start pods or a whole cluster: run only where they fail before starting anything."""
NO_API = {"config check", "config show"}
"""Commands that never reach the API (nor Redis): they may succeed whatever --api says."""
ROOT = Path(__file__).resolve().parents[2]


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The argv of every runnable command (`("task", "show", "x")`), required arguments filled in."""
    out: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub.get_default("handler") is None:
                    out += leaf_commands(sub, (*prefix, name))
                else:
                    out.append((*prefix, name, *_required_args(sub)))
    return out


def _required_args(parser: argparse.ArgumentParser) -> list[str]:
    argv: list[str] = []
    for action in parser._actions:
        value = str(next(iter(action.choices))) if action.choices else "x"
        if not action.option_strings:
            argv.append(value)
        elif action.required:
            argv += [action.option_strings[-1], value]
    return argv


COMMANDS = leaf_commands(build_parser())


def _name(argv: tuple[str, ...]) -> str:
    return " ".join(a for a in argv if not a.startswith("-") and a != "x")[:40]


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    # -P: the checkout's taskherd/ folder must not shadow the installed package (see deploy/local/cluster.py)
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-P", "-m", "taskherd", *argv], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


def assert_said_in_lines(done: subprocess.CompletedProcess[str], argv: tuple[str, ...]) -> None:
    assert "Traceback" not in done.stderr, f"taskherd {' '.join(argv)} printed a traceback:\n{done.stderr}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) <= 3, f"taskherd {' '.join(argv)}: expected a short message, got:\n{done.stderr}"


def test_the_walk_finds_every_command_group() -> None:
    names = {_name(c).split()[0] for c in COMMANDS}
    assert {"submit", "task", "job", "executor", "analyzer", "config", "nodes", "run", "up"} <= names
    assert ("task", "list", "--state", "succeeded") in COMMANDS


@pytest.mark.parametrize("argv", COMMANDS, ids=_name)
def test_a_missing_config_file_is_one_line_and_exit_2(argv: tuple[str, ...]) -> None:
    done = run_cli("--config", "/no/such/taskherd.toml", *argv)
    assert_said_in_lines(done, argv)
    assert done.returncode == 2, done.stderr


@pytest.mark.parametrize("argv", [c for c in COMMANDS if c[0] not in STARTS_PROCESSES], ids=_name)
def test_no_api_listening_is_a_message_not_a_traceback(argv: tuple[str, ...], tmp_path: Path) -> None:
    # Given nothing listening where the API (and, for `nodes`, Redis) should be; --api without a scheme
    port = free_port()
    config = tmp_path / "taskherd.toml"
    config.write_text(f"[redis]\nport = {port}\nsocket_timeout_s = 2\n[api]\nport = {port}\n")
    done = run_cli("--config", str(config), "--api", f"127.0.0.1:{port}", *argv)
    assert_said_in_lines(done, argv)
    if " ".join(argv[:2]) not in NO_API:
        assert done.returncode != 0, done.stderr
    if argv[0] not in ("nodes", "config") and done.returncode == 1:
        assert f"cannot reach the taskherd API at http://127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize("argv", [c for c in COMMANDS if c[0] not in STARTS_PROCESSES], ids=_name)
def test_an_api_url_that_does_not_speak_http_is_one_line_naming_it(argv: tuple[str, ...], services: Services,
                                                                   tmp_path: Path) -> None:
    # Given --api (and Redis, for `nodes`) pointed at MariaDB, which greets in its own binary protocol
    port = services.settings.mysql.port
    config = tmp_path / "taskherd.toml"
    config.write_text(f"[redis]\nport = {port}\nsocket_timeout_s = 2\n")
    done = run_cli("--config", str(config), "--api", f"http://127.0.0.1:{port}", *argv)
    assert_said_in_lines(done, argv)
    if " ".join(argv[:2]) not in NO_API:
        assert done.returncode != 0, done.stderr
    if argv[0] not in ("nodes", "config") and done.returncode == 1:
        lines = [line for line in done.stderr.splitlines() if line.strip()]  # `job wait`: no bar before it either
        assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
        assert f"cannot reach the taskherd API at http://127.0.0.1:{port}" in lines[0], done.stderr


@pytest.mark.parametrize("api", ["ftp://127.0.0.1:1", "http://", "http://127.0.0.1:port"])
def test_an_unusable_api_url_is_a_usage_error(api: str) -> None:
    done = run_cli("--api", api, "job", "status", "x")
    assert_said_in_lines(done, ("--api", api))
    assert done.returncode == 2 and done.stderr.startswith(f"error: --api {api}: "), done.stderr


def test_config_show_into_a_closed_pipe_ends_quietly() -> None:
    # Given a reader that has already gone (as `head -1` has after its line)
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-P", "-m", "taskherd", "config", "show"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=30, cwd=ROOT)
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141
