"""The Kubernetes ConfigMap's configuration runs: a manager pod and a worker pod reading it (service
addresses substituted, the tokens Secret's path too; `nsqd_tcp_address = ""`, auth and allowlists
kept) run the demo's crawl with a token, publishing through an nsqd they found through nsqlookupd."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from taskherd.client import Client, ClientError
from taskherd.config import load
from taskherd.demo import ANALYZER, EXECUTOR, TASK_TYPE, DemoSite
from taskherd.deploy.local.cluster import stop_pods
from tests.helpers import Services, start_pods, wait_until
from tests.k8s_config import configmap_toml, local_toml

TOKEN = "k8s-test-token"


def test_the_configmap_keeps_nsqd_discovery_and_auth_for_everyone() -> None:
    text = configmap_toml()
    assert 'nsqd_tcp_address = ""' in text and 'tokens_file = "/etc/taskherd-auth/tokens.toml"' in text


def test_pods_reading_the_configmap_run_the_demo_crawl(clean: Services, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(f'tokens = [{{ name = "t", scopes = ["read", "submit", "admin"], sha256 = "{digest}" }}]\n')
    config = tmp_path / "taskherd.toml"
    config.write_text(local_toml(clean.settings, tokens))
    settings = load(config)
    assert settings.nsq.nsqd_tcp_address == "" and settings.log.format == "json" and settings.auth.on
    pods, out = start_pods(config)
    try:
        url = f"http://{settings.api.host}:{settings.api.port}"
        with Client(url) as anonymous:
            wait_until(lambda: anonymous.ready(), timeout=60, ignore=(ClientError,), message="manager ready")
            with pytest.raises(ClientError) as refused:
                anonymous.job("crawl")
            assert refused.value.status == 401
        with DemoSite(pages=20) as site, Client(url, token=TOKEN) as client:
            wait_until(lambda: client.ready(), timeout=60, ignore=(ClientError,), message="manager ready")
            client.add_executor(TASK_TYPE, EXECUTOR)
            client.add_analyzer(TASK_TYPE, ANALYZER)
            client.submit({"id": site.root, "type": TASK_TYPE, "job": "crawl",
                           "payload": {"url": site.root, "base": site.url}})
            status = client.wait("crawl", timeout=120)
        assert status["done"] and status["counts"]["succeeded"] == 20, status
        assert "Traceback" not in out.getvalue(), out.getvalue()[-3000:]
    finally:
        stop_pods(pods, 10)
