"""Every pod serves /healthz, /readyz and /metrics, and registers its metrics URL: a worker pod's
counters equal what a job did; liveness stays 200 while Redis is down, readiness says 503 naming
it, and both recover."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskherd.client import Client, ClientError
from taskherd.config import from_dict
from taskherd.deploy.local.cluster import stop_pods
from taskherd.store.state_store import StateStore
from tests.helpers import Services, start_pods, wait_until, write_config

OK = [sys.executable, "-c", "import json,sys; print(json.dumps({'echo': json.load(sys.stdin)}))"]
FAIL = [sys.executable, "-c", "import sys; sys.stderr.write('broken'); sys.exit(3)"]


@pytest.fixture
def cluster(clean: Services, tmp_path: Path) -> Iterator[tuple[Client, dict[str, str], Services]]:
    """A manager pod and a worker pod (probe port 0: a free one); yields the client, the metrics URL
    of each role as registered, and the services."""
    data = clean.settings.model_dump()
    data["worker"].update(slots=2, http_port=0)
    data["retry"] = {"backoff_base_s": 0.1, "backoff_max_s": 0.2}
    settings = from_dict(data)
    pods, _ = start_pods(write_config(settings, tmp_path))
    store = StateStore(settings.redis)
    try:
        urls = wait_until(lambda: _metrics_urls(store), timeout=60, message="both pods registered with a metrics URL")
        with Client(f"http://{settings.api.host}:{settings.api.port}") as client:
            wait_until(lambda: client.ready(), timeout=60, ignore=(ClientError,), message="manager ready")
            yield client, urls, clean
    finally:
        store.close()
        stop_pods(pods, 10)


def _metrics_urls(store: StateStore) -> dict[str, str] | None:
    urls = {n["role"]: n.get("metrics_url", "") for n in store.members.nodes()}
    return urls if all(urls.get(role) for role in ("manager", "worker")) else None


def _counter(text: str, name: str, **labels: str) -> float:
    """The value of one sample of `name` with exactly these labels (0 when absent)."""
    for line in text.splitlines():
        m = re.match(rf"{name}{{(.*)}} (\S+)$", line)
        if m and dict(re.findall(r'(\w+)="([^"]*)"', m[1])) == labels:
            return float(m[2])
    return 0.0


def test_worker_metrics_count_what_the_job_did(cluster: tuple[Client, dict[str, str], Services]) -> None:
    client, urls, _ = cluster
    client.add_executor("ok", {"kind": "exe", "target": OK})
    client.add_executor("bad", {"kind": "exe", "target": FAIL, "max_attempts": 2})
    tasks = [{"id": f"ok-{i}", "type": "ok", "job": "m", "payload": {"i": i}} for i in range(5)]
    tasks += [{"id": f"bad-{i}", "type": "bad", "job": "m", "payload": {"i": i}} for i in range(2)]
    client.submit(tasks)
    assert client.wait("m", timeout=60)["counts"]["failed"] == 2
    worker = httpx.get(urls["worker"], timeout=5).text
    assert _counter(worker, "taskherd_tasks_total", outcome="succeeded", type="ok") == 5
    assert _counter(worker, "taskherd_tasks_total", outcome="retried", type="bad") == 2
    assert _counter(worker, "taskherd_tasks_total", outcome="failed", type="bad") == 2
    assert _counter(worker, "taskherd_execution_seconds_count", type="bad") == 4
    assert _counter(worker, "taskherd_worker_slots", state="busy") + _counter(
        worker, "taskherd_worker_slots", state="idle") == 2
    manager = httpx.get(urls["manager"], timeout=5).text
    assert _counter(manager, "taskherd_tasks_total", outcome="dead_lettered", type="bad") == 2
    assert _counter(manager, "taskherd_tasks_archived_total", state="succeeded") == 5


def test_liveness_holds_and_readiness_names_redis_while_it_is_down(
        cluster: tuple[Client, dict[str, str], Services]) -> None:
    _, urls, services = cluster
    probes = {role: url.removesuffix("/metrics") for role, url in urls.items()}
    services.manager.stop_one("redis")
    try:
        for base in probes.values():
            wait_until(lambda: _status(f"{base}/readyz") == 503, timeout=30, message=f"{base}/readyz 503")
            assert _status(f"{base}/healthz") == 200
            body = httpx.get(f"{base}/readyz", timeout=10).json()
            assert [e["service"] for e in body["errors"]] == ["redis"]
    finally:
        services.manager.start_one("redis")
    for base in probes.values():
        wait_until(lambda: _status(f"{base}/readyz") == 200, timeout=30, message=f"{base}/readyz 200 again")
        assert _status(f"{base}/healthz") == 200


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return 0
