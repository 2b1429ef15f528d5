"""A slot leases a short type several tasks at a time and records their outcomes together (one Redis
round trip per batch: `taskherd.actors.worker`), and what it leased keeps every guarantee of a task
leased ahead: each runs once, and behind a long task the rest go back to an idle slot at the next
renewal tick instead of waiting. On real services, with worker pods of one slot each."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx

from taskherd.actors.worker import CHANNEL
from taskherd.client import Client, ClientError
from taskherd.nsq.topics import task_topic
from taskherd.specs import DEFAULT_PRIORITY
from tests.helpers import channel_stats, wait_until
from tests.integration import test_pod
from tests.integration.test_pod import PY, Pods, registered

pods = test_pod.pods
"""test_pod's fixture: pods on one config file with fast timings, all stopped at the end."""

SHORT = {"kind": "python", "target": f"{PY}:sleepy", "timeout_s": 60}


def _up(group: Pods) -> tuple[Client, str, str]:
    """A manager and one worker pod of one slot, the executor registered, and the type's short runs
    learned by the slot (it batches a type only after it has run it); the worker's node id and
    metrics URL."""
    manager, worker = group.start("manager", "manager"), group.start("w1", "worker")
    registered(group.settings, manager)
    node = registered(group.settings, worker)
    client = group.client
    wait_until(lambda: client.ready(), timeout=30, ignore=(ClientError,), message="manager API ready")
    client.add_executor("short", SHORT)
    client.submit([{"id": f"warm{i}", "type": "short", "job": "warm", "payload": {"sleep_s": 0}} for i in range(3)])
    wait_until(lambda: client.job("warm")["done"], timeout=30, message="the warm-up job done")
    return client, node["id"], node["metrics_url"]


def _batches(metrics_url: str) -> tuple[float, float, float]:
    """The worker pod's lease batches: (round trips, tasks leased, round trips that leased 2 or more)."""
    text = httpx.get(metrics_url, timeout=5).text
    value = {m[1]: float(m[2]) for m in re.finditer(r'^(taskherd_lease_batch_size_\w+(?:\{le="[^"]+"\})?) (\S+)$',
                                                     text, re.M)}
    count, total = value['taskherd_lease_batch_size_count'], value['taskherd_lease_batch_size_sum']
    return count, total, count - value['taskherd_lease_batch_size_bucket{le="1.0"}']


def _executions(client: Client, task_id: str) -> list[dict[str, Any]]:
    return client.task(task_id)["executions"]


def test_short_tasks_are_leased_in_batches_and_each_runs_once(pods: Callable[..., Pods]) -> None:
    # Given one slot that has run the short type
    group = pods(worker={"slots": 1, "http_port": 0})
    client, _, metrics_url = _up(group)
    before = _batches(metrics_url)
    # When 200 short tasks are submitted at once
    client.submit([{"id": f"s{i}", "type": "short", "job": "many", "payload": {"sleep_s": 0}} for i in range(200)])
    status = wait_until(lambda: (s := client.job("many"))["done"] and s, timeout=60, message="the job done")
    # Then each ran once, and the slot leased them in fewer round trips than tasks, several at a time
    assert status["total"] == 200 and status["counts"]["succeeded"] == 200, status
    ran = [len(_executions(client, f"s{i}")) for i in range(200)]
    assert ran == [1] * 200, ran
    after = _batches(metrics_url)
    trips, leased, batched = (a - b for a, b in zip(after, before))
    assert leased == 200 and trips < 200 and batched >= 1, (trips, leased, batched)
    # and nsqd saw each message finished (a batch's FINs go in one write as its last task starts): none
    # waits in flight for msg_timeout (15 s) to come back
    topic = task_topic(group.settings.nsq, DEFAULT_PRIORITY)
    wait_until(lambda: (channel_stats(group.settings, topic, CHANNEL) or {}).get("in_flight_count") == 0,
               timeout=5, message="no message left in flight on nsqd")
    assert channel_stats(group.settings, topic, CHANNEL)["timeout_count"] == 0


def test_behind_a_long_task_the_rest_of_a_batch_goes_to_an_idle_slot(pods: Callable[..., Pods]) -> None:
    # Given one slot (renewals every 2 s) that batches the short type
    group = pods(worker={"slots": 1, "http_port": 0, "lease_renew_s": 2.0, "lease_ttl_s": 6.0})
    client, node_id, _ = _up(group)
    # When a task of that type that runs 6 s comes first, then 7 short ones
    client.submit([{"id": "long", "type": "short", "job": "mixed", "payload": {"sleep_s": 6}}] +
                  [{"id": f"q{i}", "type": "short", "job": "mixed", "payload": {"sleep_s": 0}} for i in range(7)])
    # Then the slot holds several of them leased behind the long one (a batch: one was the most before)
    wait_until(lambda: client.job("mixed")["counts"].get("leased", 0) >= 2, timeout=30, ignore=(ClientError,),
               message="more than one task leased behind the long one")
    # and, once a second pod is up, the short ones run there, once each, before the long one ends
    other = group.start("w2", "worker")
    other_id = registered(group.settings, other)["id"]
    wait_until(lambda: client.job("mixed")["done"], timeout=60, message="the job done")
    long_end = _executions(client, "long")[-1]
    for i in range(7):
        runs = _executions(client, f"q{i}")
        assert len(runs) == 1 and runs[0]["worker"].startswith(f"{other_id}/"), runs
        assert runs[0]["started"] < long_end["started"] + 6000, (runs, long_end)
    assert len(_executions(client, "long")) == 1 and long_end["worker"].startswith(f"{node_id}/")
