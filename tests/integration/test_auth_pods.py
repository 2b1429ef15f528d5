"""Auth and allowlists on real pods (`taskherd run`): what a pod says first, and a spec that a narrowed
`[security]` list no longer admits, refused by the worker at lease time before any executor starts."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from taskherd.client import Client
from taskherd.config.toml_out import dumps
from tests.helpers import wait_until
from tests.integration import test_pod
from tests.integration.test_pod import Pods

pods = test_pod.pods
"""test_pod's fixture: pods on one config file with fast timings, all stopped at the end."""

ADMIN = "tok-admin-31b9e7"
MARKER_SCRIPT = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('ran'); print('{}')"


def first_line(pods_: Pods, name: str) -> str:
    return wait_until(lambda: next((line for line in pods_.log.getvalue().splitlines() if line.startswith(f"[{name}]")),
                                   None), timeout=30, message=f"{name}'s first log line")


def test_an_open_api_says_so_in_its_first_log_line_and_in_readyz(pods: Callable[..., Pods]) -> None:
    cluster = pods()
    cluster.start("manager", "manager")
    line = first_line(cluster, "manager")
    assert "WARNING" in line and "API auth OFF" in line, line
    url = f"http://{cluster.settings.api.host}:{cluster.settings.api.port}/readyz"
    assert wait_until(lambda: httpx.get(url).json().get("auth"), timeout=60, ignore=(httpx.TransportError,)) == "off"


def test_a_stored_spec_outside_a_narrowed_exe_allow_fails_its_task_at_lease_time(pods: Callable[..., Pods],
                                                                                 tmp_path: Path) -> None:
    # Given auth on, and a manager whose [security].exe_allow admits this Python: an exe executor is stored
    auth = {"tokens": [{"name": "ops", "sha256": hashlib.sha256(ADMIN.encode()).hexdigest(),
                        "scopes": ["read", "submit", "admin"]}]}
    cluster = pods(auth=auth, security={"exe_allow": [sys.executable]})
    cluster.start("manager", "manager")
    assert "API auth on, 1 token(s): ops" in first_line(cluster, "manager")
    marker = tmp_path / "ran"
    with Client(f"http://{cluster.settings.api.host}:{cluster.settings.api.port}", token=ADMIN) as client:
        wait_until(lambda: client.ready()["ok"], timeout=60, ignore=(Exception,), message="manager ready")
        client.add_executor("mark", {"kind": "exe", "target": [sys.executable, "-c", MARKER_SCRIPT, str(marker)],
                                     "max_attempts": 3})
        # When a worker starts on a config whose list was narrowed since, and a task of it is submitted
        narrowed = cluster.settings.model_copy(update={"security": cluster.settings.security.model_copy(
            update={"exe_allow": ("/opt/vetted/*",)})})
        cluster.config.write_text(dumps(narrowed))
        cluster.start("worker", "worker")
        assert "auth on; [security] exe_allow ['/opt/vetted/*']" in first_line(cluster, "worker")
        client.submit({"id": "m-1", "type": "mark", "job": "narrowed", "payload": {}})
        status = client.wait("narrowed", timeout=60)
        task = client.task("m-1")
    # Then the task fails at once (no retry) with the list named, and the executor never started
    assert status["counts"]["failed"] == 1, status
    assert task["state"] == "failed" and len(task["executions"]) == 1, task
    assert "refused by [security]" in task["error"] and "[security].exe_allow = ['/opt/vetted/*']" in task["error"]
    assert not marker.exists()
