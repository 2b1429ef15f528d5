"""The Kubernetes ConfigMap's configuration runs: a manager pod and a worker pod reading it (service
addresses substituted, `nsqd_tcp_address = ""` kept) run a job to done, publishing through an nsqd
they found through nsqlookupd."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from taskherd.client import Client, ClientError
from taskherd.config import load
from taskherd.deploy.local.cluster import Pod, stop_pods
from tests.helpers import Services, wait_until
from tests.k8s_config import configmap_toml, local_toml

ECHO = [sys.executable, "-c", "import json,sys; print(json.dumps({'echo': json.load(sys.stdin)}))"]


def test_the_configmap_keeps_nsqd_discovery_for_everyone() -> None:
    assert 'nsqd_tcp_address = ""' in configmap_toml()


def test_pods_reading_the_configmap_run_a_job(clean: Services, tmp_path: Path) -> None:
    config = tmp_path / "taskherd.toml"
    config.write_text(local_toml(clean.settings))
    settings = load(config)
    assert settings.nsq.nsqd_tcp_address == "" and settings.log.format == "json"
    out = io.StringIO()
    pods = [Pod("manager", "manager", config, out), Pod("worker", "worker", config, out)]
    for pod in pods:
        pod.start()
    try:
        with Client(f"http://{settings.api.host}:{settings.api.port}") as client:
            wait_until(lambda: client.ready(), timeout=60, ignore=(ClientError,), message="manager ready")
            client.add_executor("echo", {"kind": "exe", "target": ECHO})
            client.submit({"tasks": [{"id": f"k8s-{i}", "type": "echo", "job": "k8s", "payload": {"n": i}}
                                     for i in range(20)]})
            status = client.wait("k8s", timeout=60)
        assert status["done"] and status["counts"]["succeeded"] == 20, status
        assert "ValueError" not in out.getvalue() and "Traceback" not in out.getvalue(), out.getvalue()[-3000:]
    finally:
        stop_pods(pods, 10)
