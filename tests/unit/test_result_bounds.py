"""Bounded results ([worker].max_result_bytes) per runner kind: an oversize result fails its call at
once, not retried, naming both sizes, and the worker never holds more than the bound of it.

Memory is checked as the peak RSS of this process (the worker's stand-in), sampled while the call runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from taskherd.config import from_dict
from taskherd.errors import ConfigError
from taskherd.runners import Outcome, Runner
from taskherd.specs import RunnerSpec
from tests.helpers import QuietHandler

FIXTURES = Path(__file__).parent / "fixtures"
MiB = 1 << 20
LIMIT = "[worker].max_result_bytes = 1048576"


class PeakRss:
    """The most this process's RSS grew over its baseline while the block ran (sampled every 2 ms)."""

    def __enter__(self) -> PeakRss:
        self._me = psutil.Process()
        self.baseline = self.peak = self._me.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, self._me.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._me.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@pytest.fixture
def runner() -> Iterator[Runner]:
    r = Runner(pythonpath=[str(FIXTURES)])  # the default bound, 1 MiB
    yield r
    r.close()


def failed_for_size(outcome: Outcome) -> str:
    assert (outcome.status, outcome.retryable, outcome.result) == ("failed", False, None), outcome
    assert outcome.error is not None
    return outcome.error


# -- exe -------------------------------------------------------------------------------------------


def test_an_exe_writing_50_mb_fails_fast_and_the_worker_holds_no_more_than_the_bound(runner: Runner) -> None:
    spec = RunnerSpec("exe", ["sh", "-c", "yes xxxxxxxxxxxxxxx | head -c 52428800; sleep 30"])
    with PeakRss() as rss:
        outcome = runner.run(spec, {}, timeout_s=60)
    assert failed_for_size(outcome) == f"result of more than {MiB + 65536} bytes exceeds {LIMIT}"
    assert outcome.duration_s < 10  # the tree was killed, not waited for (sleep 30)
    assert rss.growth < 10 * MiB, f"RSS grew by {rss.growth / MiB:.1f} MiB"


def test_an_exe_writing_without_end_is_killed_once_over_the_bound(runner: Runner) -> None:
    outcome = runner.run(RunnerSpec("exe", ["yes"]), {}, timeout_s=60)
    assert "exceeds [worker].max_result_bytes" in failed_for_size(outcome)
    assert outcome.duration_s < 10


def test_an_exe_result_just_over_the_bound_names_its_exact_size(runner: Runner) -> None:
    script = 'printf \'{"blob":"%s"}\' "$(head -c $1 /dev/zero | tr "\\0" x)"'
    spec = RunnerSpec("exe", ["sh", "-c", script, "sh", str(MiB + 1 - len('{"blob":""}'))])
    assert failed_for_size(runner.run(spec, {}, timeout_s=30)) == f"result of {MiB + 1} bytes exceeds {LIMIT}"
    at_bound = RunnerSpec("exe", ["sh", "-c", script, "sh", str(MiB - len('{"blob":""}'))])
    assert runner.run(at_bound, {}, timeout_s=30).ok


def test_an_exe_still_gets_a_large_payload_while_its_stdout_is_read(runner: Runner) -> None:
    payload = {"blob": "y" * (3 * MiB)}  # more than a pipe holds: written as the exe reads
    outcome = runner.run(RunnerSpec("exe", ["sh", "-c", 'wc -c | xargs printf \'{"n": %s}\'']), payload, 30)
    assert outcome.result == {"n": 3 * MiB + len('{"blob":""}')}


# -- python ----------------------------------------------------------------------------------------


def test_a_python_result_over_the_bound_is_refused_by_the_child_with_both_sizes(runner: Runner) -> None:
    spec = RunnerSpec("python", "bound_funcs:sized")
    with PeakRss() as rss:
        outcome = runner.run(spec, {"bytes": 5 * MiB}, timeout_s=30)
    assert failed_for_size(outcome) == f"result of {5 * MiB} bytes exceeds {LIMIT}"
    assert rss.growth < 3 * MiB, f"RSS grew by {rss.growth / MiB:.1f} MiB"
    pid = runner.python_pid
    assert runner.run(spec, {"bytes": MiB}, timeout_s=30).ok  # exactly the bound fits
    assert runner.python_pid == pid  # a refused result is the user's doing: the child stays


def test_a_reply_line_over_the_bound_is_not_read_and_the_child_is_killed(runner: Runner) -> None:
    with PeakRss() as rss:
        outcome = runner.run(RunnerSpec("python", "bound_funcs:past_the_child"), {}, timeout_s=30)
    error = failed_for_size(outcome)
    assert error.startswith("result of more than ") and error.endswith(LIMIT)
    assert int(error.split()[4]) <= MiB + 65536 + 65536  # the bound, the slack, one read
    assert runner.python_pid is None
    assert rss.growth < 10 * MiB, f"RSS grew by {rss.growth / MiB:.1f} MiB"


def test_a_python_error_message_is_cut_short(runner: Runner) -> None:
    outcome = runner.run(RunnerSpec("python", "bound_funcs:long_error"), {"bytes": 4 * MiB}, timeout_s=30)
    assert outcome.status == "failed" and outcome.error is not None and outcome.retryable
    assert outcome.error.startswith("bound_funcs:long_error raised ValueError: xxx") and len(outcome.error) <= 4096


# -- http ------------------------------------------------------------------------------------------


BODIES = {path: b'{"blob":"' + b"x" * (n - len('{"blob":""}')) + b'"}' for path, n in (("/big", 5 * MiB), ("/fits", MiB))}
"""Made before any RSS is measured: the server runs in this process too."""


class _Handler(QuietHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/endless":  # chunked, no length: the runner must stop reading by itself
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
            try:
                while True:
                    self.wfile.write(chunk)
            except OSError:
                return
        self.reply(200, BODIES[self.path])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def test_an_http_body_over_the_bound_by_its_length_is_refused_unread(runner: Runner, server: str) -> None:
    with PeakRss() as rss:
        outcome = runner.run(RunnerSpec("http", f"{server}/big"), {}, timeout_s=30)
    assert failed_for_size(outcome) == f"result of {5 * MiB} bytes exceeds {LIMIT}"
    assert rss.growth < 3 * MiB, f"RSS grew by {rss.growth / MiB:.1f} MiB"
    assert runner.run(RunnerSpec("http", f"{server}/fits"), {}, timeout_s=30).ok


def test_an_endless_http_body_is_cut_off_past_the_bound(runner: Runner, server: str) -> None:
    started = time.monotonic()
    with PeakRss() as rss:
        outcome = runner.run(RunnerSpec("http", f"{server}/endless"), {}, timeout_s=30)
    error = failed_for_size(outcome)
    assert error.startswith("result of more than ") and error.endswith(LIMIT)
    assert time.monotonic() - started < 10
    assert rss.growth < 10 * MiB, f"RSS grew by {rss.growth / MiB:.1f} MiB"


# -- the setting -----------------------------------------------------------------------------------


def test_the_bound_is_configurable_up_to_what_mariadb_can_archive() -> None:
    assert from_dict({"worker": {"max_result_bytes": 4 * MiB}}).worker.max_result_bytes == 4 * MiB
    with pytest.raises(ConfigError, match=r"\[worker\]\.max_result_bytes"):
        from_dict({"worker": {"max_result_bytes": 16 * MiB}})


def test_a_smaller_bound_applies_to_every_kind(tmp_path: Path) -> None:
    with Runner(pythonpath=[str(FIXTURES)], max_result_bytes=2048) as small:
        error = failed_for_size(small.run(RunnerSpec("python", "bound_funcs:sized"), {"bytes": 2049}, 30))
        assert error == "result of 2049 bytes exceeds [worker].max_result_bytes = 2048"
        exe = RunnerSpec("exe", ["sh", "-c", 'printf \'{"blob":"%s"}\' "$(head -c 3000 /dev/zero | tr "\\0" x)"'])
        assert failed_for_size(small.run(exe, {}, 30)) == "result of 3011 bytes exceeds [worker].max_result_bytes = 2048"
