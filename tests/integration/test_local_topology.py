"""The local cluster with several managers and nsqd (`taskherd up --managers N --nsqd M`, issue 15,
items 3 and 5): an nsqd SIGKILLed mid-job loses no accepted task (the watcher republishes what it held
through another nsqd) and archives each once; killing the pod of the manager whose TimeoutWatcher is
active mid-job hands the watcher to the other within the lease TTL, and the job still comes out right.

Each cluster runs on a block of ports of its own (tests/local_up.py); the second is a real `taskherd up`
child process, the first a `Cluster` in this process (so that the killed nsqd stays dead: `up`
would restart it at once).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskherd.config import Settings, from_dict
from taskherd.config.toml_out import dumps
from taskherd.deploy.local.cluster import Cluster
from taskherd.store import keys
from tests.helpers import mysql_connect, redis_client, wait_until
from tests.local_up import REPO, Up, up_settings

TASKHERD = [str(Path(sys.executable).parent / "taskherd")]
FUNCS = "tests.e2e.funcs"


def call(url: str, method: str, path: str, body: Any = None, timeout: float = 15) -> Any:
    resp = httpx.request(method, f"{url}{path}", json=body, timeout=timeout, trust_env=False)
    resp.raise_for_status()
    return resp.json()


def succeeded(url: str, job: str) -> int:
    return int(call(url, "GET", f"/jobs/{job}")["counts"]["succeeded"])


def wait_done(urls: list[str], job: str, timeout: float) -> dict[str, Any]:
    """The job's status once done, asked of whichever manager answers."""
    def done() -> dict[str, Any] | None:
        for url in urls:
            try:
                status = call(url, "GET", f"/jobs/{job}?wait_s=5", timeout=15)
            except httpx.HTTPError:
                continue
            return status if status.get("done") else None
        return None

    return wait_until(done, timeout=timeout, interval=0.2, message=f"job {job} done")


def archive(settings: Settings, job: str) -> tuple[dict[str, str], int, list[str]]:
    """MySQL's view of `job`: state by task id, how many records, and the ids with more than one
    execution recorded ok."""
    conn = mysql_connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, state, executions FROM tasks WHERE job = %s", (job,))
            rows = cur.fetchall()
            cur.execute("SELECT COUNT(*) FROM records WHERE job = %s", (job,))
            records = int(cur.fetchone()[0])
    finally:
        conn.close()
    doubled = [r[0] for r in rows if sum(e.get("status") == "ok" for e in json.loads(r[2])) > 1]
    return {r[0]: r[1] for r in rows}, records, doubled


def fast(settings: Settings) -> Settings:
    """Short sweeps, leases and republish delay, so an nsqd's loss is recovered in seconds."""
    data = settings.model_dump()
    data["manager"].update(watcher_interval_s=0.5, republish_after_s=2.0)
    data["worker"].update(slots=2, lease_renew_s=0.5, lease_ttl_s=3.0, drain_grace_s=5.0)
    data["nsq"].update(lookupd_poll_interval_s=1.0, msg_timeout_s=5.0)
    data["registry"].update(heartbeat_s=0.5, node_ttl_s=1.0)
    return from_dict(data)


@pytest.fixture
def in_process(service_binaries: dict[str, str], tmp_path: Path) -> Iterator[tuple[Cluster, io.StringIO]]:
    """2 managers, 2 nsqd, 2 worker pods; pods' output kept (and shown when the test fails)."""
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(REPO)  # the pods (and their executors) import tests.e2e.funcs from here
    try:
        with Cluster(fast(up_settings()), workers=2, data_dir=str(tmp_path / "data"), out=out,
                     managers=2, nsqd=2) as cluster:
            yield cluster, out
    finally:
        os.chdir(cwd)
        sys.stderr.write(out.getvalue()[-20000:])


def test_an_nsqd_killed_mid_job_loses_no_task_and_archives_each_once(in_process: tuple[Cluster, io.StringIO]) -> None:
    cluster, out = in_process
    urls, job, n = cluster.api_urls, "nsqd-lost", 240
    # Given a job of 240 short tasks submitted half through each manager, so both nsqd hold some
    call(urls[0], "PUT", "/executors/nap", {"kind": "python", "target": f"{FUNCS}:sleepy", "max_attempts": 5})
    tasks = [{"id": f"nap-{i}", "type": "nap", "job": job, "payload": {"sleep_s": 0.03}} for i in range(n)]
    call(urls[0], "POST", "/tasks", {"tasks": tasks[: n // 2]})
    call(urls[1], "POST", "/tasks", {"tasks": tasks[n // 2:]})
    wait_until(lambda: succeeded(urls[0], job) >= n // 8, timeout=60, message="an eighth of the job done")
    # When the second nsqd is SIGKILLed (and stays down), with the messages it held
    done_at_kill = succeeded(urls[0], job)
    cluster.services.kill_one("nsqd-2")
    killed_at = time.monotonic()
    # Then the job is done, every accepted task archived as succeeded, once
    status = wait_done(urls, job, timeout=120)
    took = time.monotonic() - killed_at
    states, records, doubled = archive(cluster.settings, job)
    assert status["counts"]["succeeded"] == n and status["total"] == n
    assert states == {t["id"]: "succeeded" for t in tasks} and records == n and doubled == []
    # And what the dead nsqd held was republished by the watcher, through the other nsqd
    assert "that NSQ no longer holds" in out.getvalue()
    print(f"\nnsqd-2 SIGKILLed at {done_at_kill} of {n} tasks done: the job was done {took:.1f} s later, "
          f"{n} of {n} archived once")


class TopologyUp(Up):
    """`taskherd up --managers 2 --nsqd 2` with two worker pods of two slots."""

    def start(self) -> None:
        config = self.workdir / "up.toml"
        config.write_text(dumps(self.settings))
        argv = [*self.command, "--config", str(config), "up", "--workers", "2", "--managers", "2", "--nsqd", "2",
                "--data-dir", str(self.data_dir)]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd,
                                         start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def watcher_holder(settings: Settings) -> str | None:
    """The node id holding the TimeoutWatcher's lease."""
    client = redis_client(settings)
    try:
        held = client.get(keys.WATCHER_LEASE)
    finally:
        client.close()
    return held.decode() if held else None


def registration(settings: Settings, node_id: str) -> dict[str, str]:
    """A node's registration (pid, api_url, ...)."""
    client = redis_client(settings)
    try:
        return {k.decode(): v.decode() for k, v in client.hgetall(keys.node(node_id)).items()}
    finally:
        client.close()


def test_up_with_two_managers_survives_the_active_watchers_pod_killed_mid_job(service_binaries: dict[str, str],
                                                                             tmp_path: Path) -> None:
    settings = up_settings()
    data = settings.model_dump()
    data["worker"].update(slots=2, drain_grace_s=5.0)
    settings = from_dict(data)
    up = TopologyUp(TASKHERD, settings, tmp_path / "data", tmp_path)
    urls = [f"http://127.0.0.1:{settings.api.port + i}" for i in range(2)]
    try:
        up.start()
        up.wait_ready()
        # Given `up --managers 2 --nsqd 2`: both APIs answer, `up` printed both
        assert all(httpx.get(f"{url}/readyz", timeout=5, trust_env=False).status_code == 200 for url in urls)
        assert all(url in up.log() for url in urls)
        # and a tree job (1 + 4 + 16 + 64 + 256 tasks, children made by the analyzer) under way
        job, n = "failover", 341
        call(urls[0], "PUT", "/executors/tree", {"kind": "python", "target": f"{FUNCS}:sleepy"})
        call(urls[0], "PUT", "/analyzers/tree", {"kind": "python", "target": f"{FUNCS}:tree"})
        call(urls[1], "POST", "/tasks", {"id": "root", "type": "tree", "job": job,
                                          "payload": {"depth": 0, "fan": 4, "max_depth": 4}})
        wait_until(lambda: succeeded(urls[0], job) >= 60, timeout=90, message="60 tasks of the tree done")
        # When the pod of the manager whose TimeoutWatcher is active is SIGKILLed (with its children)
        holder = wait_until(lambda: watcher_holder(settings), timeout=10, message="a watcher holds the lease")
        victim = registration(settings, holder)
        done_at_kill = succeeded(urls[0], job)
        os.killpg(int(victim["pid"]), signal.SIGKILL)
        killed_at, killed_wall = time.monotonic(), time.time()
        # Then the other manager's watcher takes over within the lease TTL (3 x watcher_interval_s)
        # plus one sweep
        heir = wait_until(lambda: (h := watcher_holder(settings)) not in (None, holder) and h, timeout=15,
                          interval=0.02, message="another node holds the watcher lease")
        failover_s = time.monotonic() - killed_at
        # `up` restarts the killed pod at once, under a new node id: when the lease expires, the surviving
        # manager and the restarted one race for it, and either winning is a correct failover
        heir_is_survivor = float(registration(settings, heir)["started"]) < killed_wall
        ttl_s = 3 * settings.manager.watcher_interval_s
        assert failover_s <= ttl_s + settings.manager.watcher_interval_s + 0.5
        survivor = [url for url in urls if url != victim["api_url"]]
        # And the job still comes out right: every task archived once, each with its record
        status = wait_done(survivor, job, timeout=120)
        states, records, doubled = archive(settings, job)
        assert status["counts"]["succeeded"] == n and status["total"] == n
        assert len(states) == n and set(states.values()) == {"succeeded"} and records == n and doubled == []
        print(f"\nactive watcher {holder} SIGKILLed at {done_at_kill} of {n} tasks done: "
              f"{heir} ({'the other manager' if heir_is_survivor else 'the restarted pod'}) took over in "
              f"{failover_s:.2f} s (lease TTL {ttl_s:.0f} s); "
              f"job right: {n} of {n}")
        assert up.stop() == 0
    finally:
        up.kill()
        if os.environ.get("SHOW_UP_LOG"):
            sys.stderr.write(up.log())
