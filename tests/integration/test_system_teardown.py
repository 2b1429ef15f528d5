"""`taskherd teardown --all` (POST /system/teardown) on a manager pod and a worker pod: it refuses while
a job is open and goes on with --cancel-open; it leaves no task, job or lease key in Redis and no
taskherd topic in nsqd; with --stop every pod exits 0 (workers drained) and pods started later run a
job as on a fresh system."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskherd.cli.main import main as cli
from taskherd.client import Client, ClientError
from taskherd.config import Settings, from_dict
from taskherd.config.toml_out import dumps
from taskherd.deploy.local.cluster import Pod, stop_pods
from taskherd.store import keys
from taskherd.store.state_store import StateStore
from tests.helpers import DIRECT, Services, nsqd_post, redis_client, wait_until
from tests.local_up import Up, run_one_echo_task, up_settings

OK = [sys.executable, "-c", "import json,sys; print(json.dumps({'echo': json.load(sys.stdin)}))"]
SLOW = [sys.executable, "-c", "import time; time.sleep(120)"]
KEPT = ("th:{specs}:", "th:nodes", "th:node:", "th:stop", "th:lease:timeout-watcher", "th:gone:", "th:{i:",
        "th:series:")
"""What a system teardown keeps (taskherd.store.keyspace says why); the count of open tasks must be 0."""
TASKHERD = [str(Path(sys.executable).parent / "taskherd")]


class Herd:
    """A manager pod and a worker pod on the test services."""

    def __init__(self, settings: Settings, config: Path) -> None:
        self.settings, self.out = settings, io.StringIO()
        self.pods = [Pod("manager", "manager", config, self.out), Pod("worker", "worker", config, self.out)]
        for pod in self.pods:
            pod.start()
        self.api = f"http://{settings.api.host}:{settings.api.port}"
        self.client = Client(self.api)
        try:
            wait_until(lambda: self.client.ready() and len(self.client.nodes()) == 2, timeout=60,
                       ignore=(ClientError,), message="manager ready, both pods registered")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n{self.out.getvalue()[-3000:]}") from None

    def run_job(self, job: str, n: int = 3) -> None:
        self.client.add_executor("ok", {"kind": "exe", "target": OK})
        self.client.submit([{"id": f"{job}-{i}", "type": "ok", "job": job, "payload": {"i": i}} for i in range(n)])
        assert self.client.wait(job, timeout=60)["counts"]["succeeded"] == n

    def stop(self) -> None:
        self.client.close()
        stop_pods(self.pods, 30)


@pytest.fixture
def herd_config(clean: Services, tmp_path: Path) -> tuple[Settings, Path]:
    data = clean.settings.model_dump()
    data["worker"].update(slots=2, http_port=0)
    settings = from_dict(data)
    config = tmp_path / "pods.toml"
    config.write_text(dumps(settings))
    return settings, config


@pytest.fixture
def herd(herd_config: tuple[Settings, Path]) -> Iterator[Herd]:
    herd = Herd(*herd_config)
    try:
        yield herd
    finally:
        herd.stop()


def taskherd(herd: Herd, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli(["--api", herd.api, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def state_keys(settings: Settings) -> list[str]:
    """taskherd's keys in Redis that are task, job or lease state, by a SCAN of its own."""
    r = redis_client(settings)
    try:
        names = sorted(k.decode() for k in r.scan_iter(match="th:*", count=1000))
        left = [k for k in names if not k.startswith(KEPT) and k != keys.OPEN_TASKS]
        return left + ([keys.OPEN_TASKS] if r.get(keys.OPEN_TASKS) not in (None, b"0") else [])
    finally:
        r.close()


def nsqd_topics(settings: Settings) -> list[str]:
    """taskherd's topics that nsqd has, from its /stats."""
    with DIRECT.open(f"http://{settings.nsq.nsqd_http_addresses[0]}/stats?format=json", timeout=5) as resp:
        stats = json.load(resp)
    return [t["topic_name"] for t in stats.get("topics") or [] if t["topic_name"].startswith("taskherd.")]


def lookupd_topics(settings: Settings) -> list[str]:
    with DIRECT.open(f"http://{settings.nsq.lookupd_http_addresses[0]}/topics", timeout=5) as resp:
        return [t for t in json.load(resp).get("topics") or [] if t.startswith("taskherd.")]


def test_teardown_refuses_an_open_job_and_with_cancel_open_leaves_nothing(herd: Herd,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Given a job that ran, a job with a task running, and a message nobody consumes on the dead-letter topic
    herd.run_job("ran")
    herd.client.add_executor("slow", {"kind": "exe", "target": SLOW})
    herd.client.submit({"id": "slow-1", "type": "slow", "job": "busy", "payload": {}})
    wait_until(lambda: herd.client.job("busy")["counts"]["running"] == 1, timeout=30, message="slow-1 running")
    assert nsqd_post(herd.settings, f"/pub?topic={herd.settings.nsq.deadletter_topic}", b"junk") == 200
    before = state_keys(herd.settings)

    # When: teardown --all, then with --cancel-open
    code, out, err = taskherd(herd, capsys, "teardown", "--all")
    # Then the first is refused, names the open job, and changes nothing
    assert code == 1, (out, err)
    assert "'busy' (1 running)" in err and "cancel_open=true" in err and "open: busy" in err
    assert state_keys(herd.settings) == before
    assert herd.client.job("busy")["counts"]["running"] == 1

    started = time.monotonic()
    code, out, err = taskherd(herd, capsys, "teardown", "--all", "--cancel-open")
    took = time.monotonic() - started
    assert code == 0, (out, err)
    assert "cancelled job busy" in out and "torn down 2 job(s): busy, ran" in out
    assert "taskherd.deadletter" in out and "Redis holds no task, job or lease key" in out
    # Redis holds no task, job or lease key; the archive still answers for both jobs
    assert state_keys(herd.settings) == []
    assert herd.client.task("slow-1")["state"] == "cancelled"
    assert herd.client.job("ran")["counts"]["succeeded"] == 3
    # the dead-letter topic (no consumer subscribes to it again) is gone with its message
    assert herd.settings.nsq.deadletter_topic not in nsqd_topics(herd.settings)
    assert herd.settings.nsq.deadletter_topic not in lookupd_topics(herd.settings)
    print(f"teardown --all --cancel-open took {took:.2f} s")


def test_teardown_stop_exits_every_pod_drained_and_a_later_start_runs_clean(
        herd_config: tuple[Settings, Path], capsys: pytest.CaptureFixture[str]) -> None:
    settings, config = herd_config
    herd = Herd(settings, config)
    try:
        # Given a job that ran
        herd.run_job("first")
        assert set(nsqd_topics(settings)) >= {settings.nsq.tasks_topic, settings.nsq.results_topic}
        nodes = {n["id"] for n in herd.client.nodes()}

        # When: teardown --all --stop
        code, out, err = taskherd(herd, capsys, "teardown", "--all", "--stop")
        assert code == 0, (out, err)
        assert f"asked 2 pod(s) to exit: {', '.join(sorted(n for n in nodes if n.startswith('worker')))}" in out

        # Then every pod exits 0 (a worker's 0 means it drained), and nothing of taskherd is left
        for pod in herd.pods:
            wait_until(pod.exited, timeout=60, message=f"pod {pod.name} exited")
            assert pod.proc is not None and pod.proc.returncode == 0, herd.out.getvalue()[-3000:]
        assert state_keys(settings) == []
        assert nsqd_topics(settings) == [] and lookupd_topics(settings) == []
        assert "asked node" in herd.out.getvalue() and "system teardown: deleted topic(s)" in herd.out.getvalue()
        store = StateStore(settings.redis)
        try:
            assert store.members.nodes() == [] and not store.redis.exists(keys.STOP)
        finally:
            store.close()
    finally:
        herd.stop()

    # And pods started later on the same services are not asked to stop, and run a job
    again = Herd(settings, config)
    try:
        again.run_job("second")
        assert not any(p.exited() for p in again.pods)
    finally:
        again.stop()


def test_a_stop_request_names_one_registration(clean: Services) -> None:
    # Given a stop request for node n as registered at 1.5
    store = StateStore(clean.settings.redis)
    try:
        store.members.ask_to_stop({"n": "1.5"})
        # Then it asks that registration, not a later one with the same id (a restarted container's pid 1)
        assert store.members.asked_to_stop("n", "1.5")
        assert not store.members.asked_to_stop("n", "2.5") and not store.members.asked_to_stop("m", "1.5")
        # and the node's entry goes as it deregisters
        store.members.leave("n")
        assert not store.redis.exists(keys.STOP)
    finally:
        store.close()


def test_keyspace_leftovers_keep_specs_nodes_and_tombstones_only(clean: Services) -> None:
    store = StateStore(clean.settings.redis)
    try:
        # Given what a teardown keeps, and one key of a job
        r = store.redis
        r.set(keys.executor("t"), "{}")
        r.set(keys.analyzer("t"), "{}")
        r.set(keys.SPECS_VERSION, "v")
        r.hset(keys.node("n"), "id", "n")
        r.zadd(keys.NODES, {"n": 1})
        r.set(keys.WATCHER_LEASE, "n")
        r.set(keys.tombstone("j", "x"), "d")
        r.set(keys.index("x"), "j", px=10_000)
        r.hset(keys.series(1), "started", 1)
        r.set(keys.OPEN_TASKS, "0")
        r.hset(keys.task("j", "x"), "state", "pending")
        r.set(keys.index("y"), "j")  # a live task's index entry (no TTL)
        # Then only the job's key and the live index entry are leftovers, and the job is found from them
        assert store.keyspace.leftovers() == sorted([keys.task("j", "x"), keys.index("y")])
        assert store.keyspace.jobs() == ["j"]
        # and a count of open tasks other than 0 is one too
        r.set(keys.OPEN_TASKS, "3")
        assert store.keyspace.leftovers() == sorted([keys.task("j", "x"), keys.index("y"), keys.OPEN_TASKS])
    finally:
        store.close()


def test_up_ends_once_teardown_stop_stopped_its_pods_and_starts_clean_on_the_same_data(
        service_binaries: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a `taskherd up` whose job ran
    up = Up(TASKHERD, up_settings(), tmp_path / "data", tmp_path)
    try:
        up.start()
        up.wait_ready()
        assert run_one_echo_task(up, sys.executable, "before")["counts"]["succeeded"] == 1
        # When: teardown --all --stop
        code = cli(["--api", up.url, "teardown", "--all", "--stop"])
        assert code == 0, capsys.readouterr()
        # Then `up` restarts no pod, stops its services and exits 0, leaving no process behind
        assert up.proc is not None and up.proc.wait(60) == 0, up.log()
        assert "[up] every pod stopped on request" in up.log() and "restarting" not in up.log()
        assert up.still_running() == []
        # And a later `up` on the same data dir starts clean and runs a job
        up.start()
        up.wait_ready()
        assert run_one_echo_task(up, sys.executable, "after")["counts"]["succeeded"] == 1
        assert up.stop() == 0
    finally:
        up.kill()
