"""Priorities (issue 16, item 2), on real services: with one slot, higher priorities overtake lower
ones submitted first; the priority is checked, stored and shown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from taskherd.client import ApiUnreachable, ClientError
from tests.helpers import wait_until
from tests.integration import test_pod
from tests.integration.limits_funcs import spans
from tests.integration.test_pod import Pods, registered

pods = test_pod.pods

SPAN = "tests.integration.limits_funcs:span"


def _herd(group: Pods) -> None:
    for pod in (group.start("m", "manager"), group.start("w", "worker")):
        registered(group.settings, pod)

    def answers() -> bool:
        try:
            group.client.executors()
            return True
        except ApiUnreachable:
            return False
    wait_until(answers, timeout=60, message="the API answers")


def test_with_one_slot_every_high_priority_task_starts_before_any_waiting_low_one(
        pods: Callable[..., Pods], tmp_path: Path) -> None:
    # Given one worker pod with one slot, busy with a task of 3 s
    group = pods(worker={"slots": 1})
    _herd(group)
    group.client.add_executor("pr", {"kind": "python", "target": SPAN, "max_attempts": 1})
    log = tmp_path / "pr.log"
    group.client.submit({"id": "busy", "type": "pr", "job": "prio", "payload": {"log": str(log), "sleep_s": 3,
                                                                                  "tag": "busy"}})
    wait_until(lambda: group.client.task("busy")["state"] == "running", timeout=60, message="the slot is busy")
    # When 10 tasks of priority 1 are submitted, then 10 of priority 9
    low = [{"id": f"low-{i}", "type": "pr", "job": "prio", "priority": 1,
            "payload": {"log": str(log), "sleep_s": 0.05, "tag": "low"}} for i in range(10)]
    high = [{"id": f"high-{i}", "type": "pr", "job": "prio", "priority": 9,
             "payload": {"log": str(log), "sleep_s": 0.05, "tag": "high"}} for i in range(10)]
    group.client.submit(low)
    group.client.submit(high)
    assert group.client.task("busy")["state"] == "running", "the slot freed before all were submitted"
    assert group.client.wait("prio", timeout=120)["done"]
    # Then every high one started before any low one (start times from inside the executor)
    calls = spans(str(log))
    order = [tag for _, _, tag in calls]
    print("start order after the busy task:", " ".join(order[1:]))
    assert order[0] == "busy" and len(order) == 21
    last_high = max(s for s, _, tag in calls if tag == "high")
    first_low = min(s for s, _, tag in calls if tag == "low")
    assert last_high < first_low, order
    # And once archived, each still shows the priority it ran at
    assert [group.client.task(t)["priority"] for t in ("busy", "low-0", "high-0")] == [5, 1, 9]


def test_priority_is_checked_and_defaults_to_the_executor_spec(pods: Callable[..., Pods], tmp_path: Path) -> None:
    # Given an executor whose tasks default to priority 7
    group = pods()
    _herd(group)
    group.client.add_executor("pd", {"kind": "python", "target": SPAN, "priority": 7})
    payload = {"log": str(tmp_path / "pd.log")}
    # When tasks are submitted with no priority, a given one, and bad ones
    group.client.submit({"id": "d-1", "type": "pd", "job": "pd", "payload": payload, "delay_s": 60})
    group.client.submit({"id": "d-2", "type": "pd", "job": "pd", "payload": payload, "priority": 0, "delay_s": 60})
    for bad in (10, -1, "9", 2.5, True):
        with pytest.raises(ClientError) as refused:
            group.client.submit({"type": "pd", "job": "pd", "payload": payload, "priority": bad})
        # Then a bad one is a 422 naming the field
        assert refused.value.status == 422 and "priority" in str(refused.value), (bad, refused.value)
    # And the others keep theirs (the spec's by default), shown by GET /tasks/{id}
    assert group.client.task("d-1")["priority"] == 7
    assert group.client.task("d-2")["priority"] == 0
    # And a spec's bad priority or limit is a 422 naming the field
    for field, bad in (("priority", 12), ("rate_limit_per_s", 0), ("max_concurrency", 0), ("rate_burst", 0)):
        with pytest.raises(ClientError) as refused:
            group.client.add_executor("pd2", {"kind": "python", "target": SPAN, field: bad})
        assert refused.value.status == 422 and field in str(refused.value), (field, refused.value)


def test_a_delayed_task_keeps_its_priority_when_it_comes_due(pods: Callable[..., Pods], tmp_path: Path) -> None:
    # Given one slot busy for 4 s, 10 tasks of priority 6 waiting, and a task of priority 9 delayed by 1 s
    group = pods(worker={"slots": 1})
    _herd(group)
    group.client.add_executor("pr", {"kind": "python", "target": SPAN, "max_attempts": 1})
    log = tmp_path / "pr.log"
    group.client.submit({"id": "busy", "type": "pr", "job": "later", "payload": {"log": str(log), "sleep_s": 4,
                                                                                   "tag": "busy"}})
    wait_until(lambda: group.client.task("busy")["state"] == "running", timeout=60, message="the slot is busy")
    # (6: above the default, so a due task published without its priority would come after them)
    group.client.submit([{"id": f"low-{i}", "type": "pr", "job": "later", "priority": 6,
                          "payload": {"log": str(log), "sleep_s": 0.05, "tag": "low"}} for i in range(10)])
    group.client.submit({"id": "high", "type": "pr", "job": "later", "priority": 9, "delay_s": 1,
                         "payload": {"log": str(log), "tag": "high"}})
    assert group.client.task("high")["priority"] == 9
    # When it comes due (the watcher publishes it) while the slot is still busy
    wait_until(lambda: group.client.task("high")["state"] == "pending", timeout=30, message="the delayed task due")
    assert group.client.task("busy")["state"] == "running", "the slot freed before the delayed task was due"
    assert group.client.wait("later", timeout=120)["done"]
    # Then it runs first once the slot is free: it went out on its priority's topic
    order = [tag for _, _, tag in spans(str(log))]
    print("start order:", " ".join(order))
    assert order[:2] == ["busy", "high"], order
