"""`taskherd up` keeps its cluster whole: one `up` per data dir, a service that dies is restarted
(within a bound, then `up` gives up loudly), and a service that cannot start says why in one line.

Each `up` runs as a child process (`.venv/bin/taskherd up`) on ports of its own (tests/local_up.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from taskherd.config import from_dict
from taskherd.deploy.local.services import ServiceManager, _redis_ping
from taskherd.errors import ServiceError
from tests.helpers import redis_client, wait_until
from tests.local_up import Up, run_one_echo_task, up_settings

TASKHERD = [str(Path(sys.executable).parent / "taskherd")]
"""The console script: unlike `python -m`, it does not put the working directory on sys.path."""


def started(up: Up) -> Up:
    up.start()
    up.wait_ready()
    return up


@pytest.fixture(scope="module")
def cluster(service_binaries: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """One running `up` for the tests that leave it running."""
    workdir = tmp_path_factory.mktemp("up")
    up = Up(TASKHERD, up_settings(), workdir / "data", workdir)
    try:
        yield started(up)
    finally:
        up.kill()
        sys.stderr.write(up.log())


def redis_answers(up: Up) -> bool:
    client = redis_client(up.settings)
    try:
        return bool(client.ping())
    finally:
        client.close()


def restarted_pids(up: Up) -> list[int]:
    return [int(m) for m in re.findall(r"^\[up\] redis restarted \(pid (\d+)\)$", up.log(), re.M)]


def test_a_second_up_on_the_same_data_dir_fails_naming_the_holder_and_changes_nothing(cluster: Up,
                                                                                      tmp_path: Path) -> None:
    # Given a running `up`, and the config it wrote into its data dir
    config = cluster.data_dir / "cluster.toml"
    before = config.read_bytes()
    # When a second `up` with other ports starts on the same data dir
    second = Up(TASKHERD, up_settings(), cluster.data_dir, tmp_path)
    assert second.settings.redis.port != cluster.settings.redis.port
    second.start()
    assert second.proc is not None
    code = second.proc.wait(60)
    # Then it exits non-zero with one line naming the pid of the first
    assert code != 0
    lines = second.log().strip().splitlines()
    assert len(lines) == 1 and f"pid {cluster.proc.pid}" in lines[0], lines
    # And the data dir's config is untouched and the first cluster still serves
    assert config.read_bytes() == before
    assert cluster.ready()


def test_a_service_that_cannot_start_says_why_in_one_line(service_binaries: dict[str, str],
                                                          tmp_path: Path) -> None:
    # Given an nsqd running on a data dir
    first = ServiceManager(up_settings(), tmp_path)
    first.start_one("nsqd")
    try:
        # When another nsqd, on other ports, is started on the same data dir
        second = ServiceManager(up_settings(), tmp_path)
        with pytest.raises(ServiceError) as raised:
            second.start_one("nsqd")
    finally:
        first.stop()
    # Then the error's first line carries nsqd's own reason, and no 20-line tail follows it
    message = str(raised.value).splitlines()
    assert "failed to lock data-path" in message[0], message
    assert len(message) <= 2, message


def test_up_restarts_a_killed_redis_and_the_cluster_runs_a_task_again(cluster: Up) -> None:
    # Given a running `up`
    killed = cluster.child_pid("redis-server")
    assert killed is not None
    # When its Redis dies
    os.kill(killed, signal.SIGKILL)
    # Then `up` says so, reaps it and restarts it
    wait_until(lambda: "[up] redis exited (code -9, SIGKILL); restarting (1/5)" in cluster.log(), timeout=10,
               message="`up` reports the dead Redis")
    wait_until(lambda: redis_answers(cluster), timeout=30, ignore=(redis.ConnectionError,),
               message="Redis answers PING again")
    # (a cluster's node answers PING before the cluster serves again: `up` says when it does)
    wait_until(lambda: "[up] redis restarted" in cluster.log(), timeout=60, message="`up` restarted Redis")
    assert cluster.child_pid("redis-server") not in (None, killed)
    with pytest.raises(psutil.NoSuchProcess):  # reaped, not left a zombie
        psutil.Process(killed).status()
    # And the cluster runs a task
    status = run_one_echo_task(cluster, sys.executable, "after-redis-restart")
    assert status["counts"].get("succeeded") == 1, status


def test_up_gives_up_on_a_service_that_keeps_dying(service_binaries: dict[str, str], tmp_path: Path) -> None:
    # Given a running `up`
    up = Up(TASKHERD, up_settings(), tmp_path / "data", tmp_path)
    try:
        started(up)
        up.record()
        # When its Redis dies six times within a minute (each time once `up` has restarted it)
        pid = up.child_pid("redis-server")
        for restarts in range(6):
            assert pid is not None
            up.record()
            os.kill(pid, signal.SIGKILL)
            if restarts < 5:
                pid = wait_until(lambda: restarted_pids(up)[restarts:restarts + 1], timeout=30,
                                 message=f"restart {restarts + 1} of Redis")[0]
        # Then `up` gives up: it says why, stops pods and services and exits non-zero
        assert up.proc is not None
        assert up.proc.wait(90) != 0
        assert "redis exited (code -9, SIGKILL) after 5 restarts within 60 s; giving up" in up.log()
        assert up.still_running() == []
    finally:
        up.kill()
        sys.stderr.write(up.log())


def test_services_ping_redis_without_redis_py() -> None:
    # Only taskherd.store may import redis-py
    script = "import sys, taskherd.deploy.local.services; print('redis' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.single_redis  # probes the one instance's port; a cluster's password: tests/integration/test_redis_cluster.py
def test_a_redis_with_a_password_is_probed_with_auth(service_binaries: dict[str, str],
                                                     tmp_path: Path) -> None:
    # Given settings with a Redis password
    data = up_settings().model_dump()
    data["redis"]["password"] = "s3cret"
    manager = ServiceManager(from_dict(data), tmp_path)
    try:
        # When Redis is started, Then the probe authenticates and sees it answer
        manager.start_one("redis")
        # And a wrong password is "not answering", naming Redis's reply
        with pytest.raises(ServiceError, match="WRONGPASS"):
            _redis_ping(data["redis"]["port"], "wrong")
    finally:
        manager.stop()
