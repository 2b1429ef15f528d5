"""A system teardown that leaves the pods running (no --stop) leaves them able to work: the topics
they are subscribed to are emptied, not deleted (deleting one closed the consumer's connection, and
the analyzer that subscribed again while nsqd still deleted the topic never heard a doorbell again)."""

from __future__ import annotations

import sys
from pathlib import Path

from taskherd.client import Client, ClientError
from taskherd.deploy.local.cluster import stop_pods
from taskherd.nsq.topics import task_topics
from tests.helpers import Services, start_pods, wait_until, write_config

ECHO = [sys.executable, "-c", "import json,sys; print(json.dumps(json.load(sys.stdin)))"]


def test_pods_left_running_by_a_system_teardown_take_new_work(clean: Services, tmp_path: Path) -> None:
    settings = clean.settings
    pods, out = start_pods(write_config(settings, tmp_path))
    try:
        with Client(f"http://{settings.api.host}:{settings.api.port}") as client:
            wait_until(lambda: client.ready(), timeout=60, ignore=(ClientError,), message="manager ready")
            client.add_executor("echo", {"kind": "exe", "target": ECHO})
            client.submit([{"id": f"a-{i}", "type": "echo", "job": "before", "payload": {"i": i}} for i in range(5)])
            assert client.wait("before", timeout=60)["counts"]["succeeded"] == 5
            done = client.teardown_all()
            emptied = {t.rsplit("/", 1)[1] for t in done["topics_emptied"]}
            # every priority's tasks topic: the slots read them all
            assert emptied == {*task_topics(settings.nsq), settings.nsq.results_topic}, done
            client.submit([{"id": f"b-{i}", "type": "echo", "job": "after", "payload": {"i": i}} for i in range(5)])
            assert client.wait("after", timeout=30)["counts"]["succeeded"] == 5
    finally:
        stop_pods(pods, 10)
