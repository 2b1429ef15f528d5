"""Running one executor call (python, exe, http) with a hard time-out: real processes, a real server.

Process trees are checked by PID with psutil: "killed" means the pid is gone or a zombie (dead,
waiting to be reaped by whoever inherited it).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from taskherd.runners import Outcome, Runner
from taskherd.runners.process_tree import is_dead
from taskherd.specs import InvalidSpec, RunnerSpec
from tests.helpers import QuietHandler

FIXTURES = Path(__file__).parent / "fixtures"
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, what: str = "") -> T:
    """Poll a state until it holds or the deadline passes (tests never sleep for a state)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what or predicate}")
        time.sleep(0.01)
    return value


def py(function: str) -> RunnerSpec:
    return RunnerSpec("python", f"runner_funcs:{function}")


def sh(script: str, *args: str) -> RunnerSpec:
    return RunnerSpec("exe", ["sh", "-c", script, "sh", *args])


def read_pids(path: Path) -> dict[str, int]:
    return json.loads(path.read_text())


def live_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if not is_dead(p.pid)]


@pytest.fixture
def runner() -> Iterator[Runner]:
    """A runner whose python child can import tests/unit/fixtures; no process may outlive the test."""
    before = {p.pid for p in live_children()}  # e.g. services a session fixture started
    r = Runner(pythonpath=[str(FIXTURES)])
    yield r
    r.close()
    assert [p for p in live_children() if p.pid not in before] == [], "a process the runner started outlived it"


# -- specs -------------------------------------------------------------------------------------


def test_spec_from_dict_accepts_each_kind_and_round_trips() -> None:
    for data in (
        {"kind": "python", "target": "pkg.mod:func"},
        {"kind": "exe", "target": ["./tool", "--json"], "env": {"A": "1"}, "cwd": "/tmp"},
        {"kind": "http", "target": "https://example.com/run", "headers": {"x-key": "k"}},
    ):
        spec = RunnerSpec.from_dict(data)
        assert spec.to_dict() == data
        assert hash(spec) == hash(RunnerSpec.from_dict(spec.to_dict()))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "ruby", "target": "x"}, "kind: must be one of python, exe, http"),
        ({"kind": "python", "target": "pkg.mod.func"}, 'target: expected "module:function"'),
        ({"kind": "exe", "target": "ls -l"}, "target: expected a non-empty list of strings"),
        ({"kind": "http", "target": "ftp://host/x"}, "target: expected an http:// or https:// URL"),
        ({"kind": "python", "target": "m:f", "tiemout": 3}, 'tiemout: unknown field'),
        ({"kind": "python"}, "target: required"),
        ({"kind": "http", "target": "http://h/", "env": {"A": "1"}}, "env: not used by kind http"),
        ({"kind": "exe", "target": ["x"], "env": {"A": 1}}, "env: expected an object of strings"),
    ],
)
def test_spec_from_dict_names_the_bad_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        RunnerSpec.from_dict(data, where="executor resize")
    assert str(caught.value).startswith("executor resize: ")
    assert message in str(caught.value)
    assert caught.value.data == data


# -- python ------------------------------------------------------------------------------------


def test_python_call_returns_the_result(runner: Runner) -> None:
    outcome = runner.run(py("echo"), {"n": 1}, timeout_s=10)
    assert outcome == Outcome("ok", {"echo": {"n": 1}}, None, False, outcome.duration_s)


def test_python_child_is_reused_across_calls(runner: Runner) -> None:
    first = runner.run(py("whoami"), {}, timeout_s=10)
    second = runner.run(py("whoami"), {}, timeout_s=10)
    assert first.result["pid"] == second.result["pid"] == runner.python_pid
    assert first.result["pid"] != psutil.Process().pid


def test_python_payload_larger_than_a_pipe_buffer_round_trips(runner: Runner) -> None:
    payload = {"blob": "x" * (512 << 10)}  # 8 pipe buffers, and its echo within the result bound
    assert runner.run(py("echo"), payload, timeout_s=10).result == {"echo": payload}


def test_payload_that_is_not_a_json_object_fails_without_running(runner: Runner) -> None:
    outcome = runner.run(py("echo"), {"when": object()}, timeout_s=10)
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert "not JSON-serializable" in outcome.error
    assert runner.python_pid is None


def test_python_prints_do_not_corrupt_the_protocol(runner: Runner) -> None:
    assert runner.run(py("noisy"), {}, timeout_s=10).result == {"quiet": True}
    assert runner.run(py("echo"), {"after": "noise"}, timeout_s=10).result == {"echo": {"after": "noise"}}


def test_python_exception_is_a_retryable_failure_with_its_type(runner: Runner) -> None:
    outcome = runner.run(py("fail"), {"why": "disk full"}, timeout_s=10)
    assert (outcome.status, outcome.retryable) == ("failed", True)
    assert outcome.error_type == "runner_funcs.Boom"
    assert "disk full" in outcome.error and "Traceback" in outcome.detail
    assert runner.run(py("whoami"), {}, timeout_s=10).ok  # the child survived its user's exception


@pytest.mark.parametrize(
    ("target", "error_type", "words"),
    [
        ("runner_funcs:nope", "AttributeError", ["runner_funcs:nope", "no attribute 'nope'"]),
        ("no_such_module_xyz:fn", "ModuleNotFoundError", ["no_such_module_xyz"]),
        ("runner_funcs:NOT_A_FUNCTION", "TypeError", ["not a function"]),
    ],
)
def test_python_target_that_cannot_load_is_a_permanent_failure(
    runner: Runner, target: str, error_type: str, words: list[str]
) -> None:
    outcome = runner.run(RunnerSpec("python", target), {}, timeout_s=10)
    assert (outcome.status, outcome.retryable, outcome.error_type) == ("failed", False, error_type)
    assert all(word in outcome.error for word in words), outcome.error


@pytest.mark.parametrize(("function", "words"), [("returns_list", "returned list"), ("returns_nan", "not JSON")])
def test_python_result_that_is_not_a_json_object_fails(runner: Runner, function: str, words: str) -> None:
    outcome = runner.run(py(function), {}, timeout_s=10)
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert words in outcome.error


def test_python_timeout_kills_the_child_tree(runner: Runner, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids.json"
    outcome = runner.run(py("hang_with_grandchild"), {"pidfile": str(pidfile)}, timeout_s=1.0)
    assert (outcome.status, outcome.retryable) == ("timeout", True)
    assert 1.0 <= outcome.duration_s < 3.0
    pids = read_pids(pidfile)
    assert is_dead(pids["child"]) and is_dead(pids["grandchild"])
    assert runner.python_pid is None
    assert runner.run(py("whoami"), {}, timeout_s=10).result["pid"] != pids["child"]


@pytest.mark.parametrize(
    ("function", "exit_code", "words"),
    [("crash", 3, "exit code 3"), ("segfault", -11, "killed by SIGSEGV")],
)
def test_python_child_death_is_a_retryable_failure_and_restarts(
    runner: Runner, function: str, exit_code: int, words: str
) -> None:
    old_pid = runner.run(py("whoami"), {}, timeout_s=10).result["pid"]
    outcome = runner.run(py(function), {}, timeout_s=10)
    assert (outcome.status, outcome.retryable, outcome.exit_code) == ("failed", True, exit_code)
    assert "died during the call" in outcome.error and words in outcome.error
    assert runner.run(py("whoami"), {}, timeout_s=10).result["pid"] != old_pid


def test_python_child_is_recycled_after_n_calls(tmp_path: Path) -> None:
    with Runner(pythonpath=[str(FIXTURES)], recycle_after=2) as runner:
        first, second = (runner.run(py("whoami"), {}, timeout_s=10).result["pid"] for _ in range(2))
        assert first == second
        assert runner.python_pid is None and is_dead(first)
        assert runner.run(py("whoami"), {}, timeout_s=10).result["pid"] != first


def _python_children() -> list[int]:
    """The live python children (the runners' warm children) among `live_children()`."""
    found = []
    for child in live_children():
        try:
            if "taskherd.runners.child" in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:
            pass  # gone meanwhile
    return found


def test_python_child_is_started_by_warm_and_its_successor_ahead_of_the_recycle(tmp_path: Path) -> None:
    """No call waits for an interpreter to boot: the first child starts at `warm()` (a slot's start),
    and the next one while its predecessor still serves its last calls."""
    with Runner(pythonpath=[str(FIXTURES)], recycle_after=2) as runner:
        runner.warm()
        first = runner.python_pid
        assert first is not None and _python_children() == [first]
        assert runner.run(py("whoami"), {}, timeout_s=10).result["pid"] == first
        assert runner.run(py("whoami"), {}, timeout_s=10).result["pid"] == first  # its last call: recycled
        assert runner.python_pid is None and is_dead(first)
        successor = _python_children()
        assert len(successor) == 1, f"expected the successor booted ahead, found {successor}"
        assert runner.run(py("whoami"), {}, timeout_s=10).result["pid"] == successor[0]
    assert _python_children() == [], "close() leaves no child behind, the successor included"


def _reapable(pid: int) -> bool:
    """Dead and reapable: a SIGKILLed process shows as a zombie while its other threads still exit,
    before waitpid (the runner's `poll`) can report it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def test_a_successor_that_died_while_waiting_is_replaced(tmp_path: Path) -> None:
    with Runner(pythonpath=[str(FIXTURES)], recycle_after=1) as runner:
        first = runner.run(py("whoami"), {}, timeout_s=10).result["pid"]
        wait_until(lambda: is_dead(first), what="the first child recycled")
        (standby,) = _python_children()
        psutil.Process(standby).kill()
        wait_until(lambda: _reapable(standby), what="the successor killed")
        outcome = runner.run(py("whoami"), {}, timeout_s=10)
        assert outcome.status == "ok" and outcome.result["pid"] not in (first, standby)


def test_a_child_killed_while_idle_is_replaced_before_the_next_call() -> None:
    with Runner(pythonpath=[str(FIXTURES)]) as runner:
        first = runner.run(py("whoami"), {}, timeout_s=10).result["pid"]
        psutil.Process(first).kill()
        wait_until(lambda: _reapable(first), what="the idle child killed")
        outcome = runner.run(py("whoami"), {}, timeout_s=10)
        assert outcome.status == "ok" and outcome.result["pid"] != first, outcome


# -- exe ---------------------------------------------------------------------------------------


def test_exe_reads_stdin_and_returns_stdout(runner: Runner) -> None:
    script = "import json, sys; print(json.dumps({'got': json.load(sys.stdin)}))"
    spec = RunnerSpec("exe", [sys.executable, "-c", script])
    outcome = runner.run(spec, {"n": 2}, timeout_s=10)
    assert (outcome.status, outcome.result, outcome.exit_code) == ("ok", {"got": {"n": 2}}, 0)


def test_exe_gets_its_env_and_cwd(runner: Runner, tmp_path: Path) -> None:
    spec = RunnerSpec.from_dict({
        "kind": "exe", "target": ["sh", "-c", 'printf \'{"a": "%s", "cwd": "%s"}\' "$TH_A" "$PWD"'],
        "env": {"TH_A": "from spec"}, "cwd": str(tmp_path),
    })
    assert runner.run(spec, {}, timeout_s=10).result == {"a": "from spec", "cwd": str(tmp_path)}


def test_exe_nonzero_exit_fails_and_keeps_the_stderr_tail(runner: Runner) -> None:
    noisy_failure = sh("head -c 10000 /dev/zero | tr '\\0' x >&2; echo >&2; echo 'last words' >&2; exit 3")
    outcome = runner.run(noisy_failure, {}, timeout_s=10)
    assert (outcome.status, outcome.exit_code, outcome.retryable) == ("failed", 3, True)
    assert outcome.error == "exited with code 3: last words"
    assert outcome.detail.endswith("last words\n") and len(outcome.detail) <= 4096


def test_exe_stderr_is_a_pipe_of_which_only_the_tail_is_kept(runner: Runner) -> None:
    # An executor that logs 100 MB: the worker holds a bounded tail, in memory, never a file on disk
    chatty = sh("[ -p /dev/fd/2 ] || exit 9; head -c 100000000 /dev/zero >&2; echo 'the end' >&2; echo '{}'")
    outcome = runner.run(chatty, {}, timeout_s=30)
    assert (outcome.status, outcome.exit_code) == ("ok", 0), outcome
    assert outcome.detail.endswith("the end\n") and len(outcome.detail) <= 4096


def test_exe_that_logs_after_closing_stdout_is_not_blocked(runner: Runner) -> None:
    # More stderr than a pipe buffer after stdout's EOF: still read while the process exits
    late = sh("echo '{\"a\": 1}'; exec 1>&-; head -c 1000000 /dev/zero >&2; echo bye >&2")
    outcome = runner.run(late, {}, timeout_s=10)
    assert (outcome.status, outcome.result) == ("ok", {"a": 1}), outcome
    assert outcome.detail.endswith("bye\n") and outcome.duration_s < 5


def test_exe_whose_background_job_keeps_stderr_open_returns_at_its_exit(runner: Runner, tmp_path: Path) -> None:
    pidfile = tmp_path / "sleeper"
    spec = sh('sleep 30 >/dev/null & echo $! > "$1"; echo started >&2; echo "{}"', str(pidfile))
    outcome = runner.run(spec, {}, timeout_s=20)
    assert (outcome.status, outcome.detail) == ("ok", "started\n"), outcome
    assert outcome.duration_s < 5
    psutil.Process(int(pidfile.read_text())).kill()


@pytest.mark.parametrize(
    ("stdout", "words"),
    [
        ("hello", "stdout is not valid JSON"),
        ("[1, 2]", "stdout is a JSON array, expected a JSON object"),
        ("", "stdout is empty"),
    ],
)
def test_exe_stdout_that_is_not_a_json_object_fails(runner: Runner, stdout: str, words: str) -> None:
    outcome = runner.run(sh('printf "%s" "$1"', stdout), {}, timeout_s=10)
    assert (outcome.status, outcome.retryable, outcome.exit_code) == ("failed", False, 0)
    assert words in outcome.error


def test_exe_that_cannot_start_fails_permanently(runner: Runner) -> None:
    outcome = runner.run(RunnerSpec("exe", ["/no/such/tool"]), {}, timeout_s=10)
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert "/no/such/tool" in outcome.error


def test_exe_timeout_kills_the_grandchild_too(runner: Runner, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    spec = sh('echo $$ > "$1.tmp"; sleep 100 & echo $! >> "$1.tmp"; mv "$1.tmp" "$1"; wait', str(pidfile))
    outcome = runner.run(spec, {}, timeout_s=1.0)
    assert (outcome.status, outcome.retryable) == ("timeout", True)
    assert 1.0 <= outcome.duration_s < 3.0
    shell, sleeper = (int(line) for line in pidfile.read_text().split())
    assert is_dead(shell) and is_dead(sleeper)


# -- http --------------------------------------------------------------------------------------


class _Handler(QuietHandler):
    release: threading.Event

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path == "/slow":
            self.release.wait(10)
        status, reply = {
            "/ok": (200, json.dumps({"echo": body, "key": self.headers.get("x-key")})),
            "/slow": (200, "{}"),
            "/boom": (500, "database is down"),
            "/missing": (404, "no such executor"),
            "/busy": (429, "slow down"),
            "/text": (200, "plain text"),
        }[self.path]
        self.reply(status, reply.encode(), content_type=None)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"release": release})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    release.set()
    httpd.shutdown()
    httpd.server_close()


def http(url: str) -> RunnerSpec:
    return RunnerSpec("http", url)


def test_http_200_json_object_is_the_result(runner: Runner, server: str) -> None:
    spec = RunnerSpec("http", f"{server}/ok", headers={"x-key": "secret"})
    outcome = runner.run(spec, {"n": 3}, timeout_s=10)
    assert (outcome.status, outcome.result) == ("ok", {"echo": {"n": 3}, "key": "secret"})


@pytest.mark.parametrize(
    ("path", "retryable", "words"),
    [("/boom", True, "HTTP 500"), ("/busy", True, "HTTP 429"), ("/missing", False, "HTTP 404"),
     ("/text", False, "response body is not valid JSON")],
)
def test_http_failures_say_whether_to_retry(
    runner: Runner, server: str, path: str, retryable: bool, words: str
) -> None:
    outcome = runner.run(http(f"{server}{path}"), {}, timeout_s=10)
    assert (outcome.status, outcome.retryable) == ("failed", retryable)
    assert words in outcome.error and outcome.detail


def test_http_timeout_is_retryable(runner: Runner, server: str) -> None:
    outcome = runner.run(http(f"{server}/slow"), {}, timeout_s=0.5)
    assert (outcome.status, outcome.retryable) == ("timeout", True)
    assert outcome.duration_s < 2.0


def test_http_connection_refused_is_retryable(runner: Runner) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed on exit: nothing listens there
    outcome = runner.run(http(f"http://127.0.0.1:{port}/x"), {}, timeout_s=5)
    assert (outcome.status, outcome.retryable) == ("failed", True)
    assert "ConnectError" in outcome.error


# -- kill from another thread ------------------------------------------------------------------


def kill_when(runner: Runner, ready: Callable[[], bool]) -> threading.Thread:
    """From another thread: wait until the call is under way, then kill it."""
    def killer() -> None:
        wait_until(ready, what="the call under way")
        assert runner.kill()
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("kind", ["python", "exe"])
def test_kill_from_another_thread_aborts_the_call_and_its_tree(runner: Runner, tmp_path: Path, kind: str) -> None:
    pidfile = tmp_path / "pids"
    if kind == "python":
        spec = py("hang_with_grandchild")
    else:
        script = 'sleep 100 & echo "{\\"child\\": $$, \\"grandchild\\": $!}" > "$1.tmp"; mv "$1.tmp" "$1"; wait'
        spec = sh(script, str(pidfile))
    killer = kill_when(runner, pidfile.exists)
    outcome = runner.run(spec, {"pidfile": str(pidfile)}, timeout_s=30)
    killer.join(5)
    assert (outcome.status, outcome.error, outcome.retryable) == ("killed", "killed", False)
    assert outcome.duration_s < 5
    pids = read_pids(pidfile)
    # An exe's reply ends at EOF, which a SIGKILLed process gives as it closes its files, a moment
    # before the kernel makes it a zombie: wait (with a deadline) rather than race that moment.
    wait_until(lambda: is_dead(pids["child"]) and is_dead(pids["grandchild"]), what="the killed tree dead")
    assert runner.run(py("echo"), {}, timeout_s=10).ok  # the runner is usable after a kill


def test_kill_with_no_call_in_flight_does_nothing(runner: Runner) -> None:
    pid = runner.run(py("whoami"), {}, timeout_s=10).result["pid"]
    assert runner.kill() is False
    assert runner.run(py("whoami"), {}, timeout_s=10).result["pid"] == pid
