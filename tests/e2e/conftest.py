"""A real cluster for end-to-end tests: the session's services plus manager and worker pods as child
processes (`taskherd run`), exactly as `taskherd up` starts them."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskherd.client import Client
from taskherd.config import from_dict
from taskherd.config.settings import Settings
from taskherd.config.toml_out import dumps
from taskherd.deploy.local.cluster import Pod
from tests.helpers import Services, wait_until


@dataclass
class Pods:
    settings: Settings
    client: Client
    pods: list[Pod]
    log: io.StringIO

    def by_name(self, name: str) -> Pod:
        return next(p for p in self.pods if p.name == name)


def fast(settings: Settings) -> Settings:
    """Test timings: short leases and sweeps so recovery is seconds, not minutes."""
    data = settings.model_dump()
    data["manager"].update(watcher_interval_s=0.5, republish_after_s=3.0)
    data.setdefault("retry", {}).update(backoff_base_s=0.2, backoff_max_s=1.0)
    data["worker"].update(slots=2, lease_renew_s=0.5, lease_ttl_s=3.0, drain_grace_s=5.0)
    data["nsq"].update(lookupd_poll_interval_s=1.0, msg_timeout_s=2.0)
    data["registry"].update(heartbeat_s=0.5, node_ttl_s=1.0)
    return from_dict(data)


class _Tee(io.StringIO):
    def write(self, s: str) -> int:
        sys.stderr.write(s)
        return super().write(s)


@pytest.fixture
def cluster(clean: Services, tmp_path: Path) -> Iterator[Pods]:
    settings = fast(clean.settings)
    config = tmp_path / "pods.toml"
    config.write_text(dumps(settings))
    log = _Tee()
    pods = [Pod("manager", "manager", config, log), Pod("worker-1", "worker", config, log),
            Pod("worker-2", "worker", config, log)]
    for pod in pods:
        pod.start()
    client = Client(f"http://{settings.api.host}:{settings.api.port}")
    try:
        wait_until(lambda: len(client.nodes()) == 3, timeout=60, ignore=(Exception,),
                   message="manager and two workers registered")
        yield Pods(settings, client, pods, log)
    finally:
        for pod in pods:
            pod.stop(15)
