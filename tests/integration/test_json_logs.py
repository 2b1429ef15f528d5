"""`[log] format = "json"`: a pod writes one JSON object per line, and every event about a task
carries its task id, job, execution id, node and role as fields of their own."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from taskherd.client import Client, ClientError
from taskherd.config import from_dict
from taskherd.deploy.local.cluster import stop_pods
from taskherd.logs import _Json, task_fields
from tests.helpers import Services, start_pods, wait_until, write_config

ECHO = [sys.executable, "-c", "import json,sys; print(json.dumps(json.load(sys.stdin)))"]


def test_a_task_event_has_its_ids_as_fields_and_a_plain_event_has_none() -> None:
    formatter = _Json("worker-h-1", "worker")
    record = logging.LogRecord("taskherd.worker", logging.WARNING, __file__, 1, "killed %s", ("t1",), None)
    record.taskherd = task_fields("j1", "t1", "e1", "resize")["taskherd"]
    assert json.loads(formatter.format(record)) | {"ts": 0} == {
        "ts": 0, "level": "WARNING", "logger": "taskherd.worker", "msg": "killed t1", "node": "worker-h-1",
        "role": "worker", "job": "j1", "task": "t1", "exec": "e1", "type": "resize"}
    plain = logging.LogRecord("taskherd.pod", logging.INFO, __file__, 1, "up", (), None)
    assert set(json.loads(formatter.format(plain))) == {"ts", "level", "logger", "msg", "node", "role"}


def test_a_worker_pod_logs_json_lines_with_every_task_event_naming_its_task(clean: Services, tmp_path: Path) -> None:
    data = clean.settings.model_dump()
    data["log"] = {"format": "json", "level": "DEBUG"}
    settings = from_dict(data)
    pods, out = start_pods(write_config(settings, tmp_path))
    try:
        with Client(f"http://{settings.api.host}:{settings.api.port}") as client:
            wait_until(lambda: client.ready(), timeout=60, ignore=(ClientError,), message="manager ready")
            client.add_executor("echo", {"kind": "exe", "target": ECHO})
            client.submit([{"id": f"js-{i}", "type": "echo", "job": "js", "payload": {"i": i}} for i in range(3)])
            assert client.wait("js", timeout=60)["counts"]["succeeded"] == 3
    finally:
        stop_pods(pods, 10)
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]  # "[worker] {...}"
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {e["role"] for e in events} == {"manager", "worker"} and all(e["node"] for e in events)
    leased = [e for e in events if e["msg"].startswith("leased js-")]
    recorded = [e for e in events if e["msg"].startswith("recorded js-")]
    assert len(leased) == len(recorded) == 3
    for e in leased + recorded:
        assert e["job"] == "js" and e["task"] in e["msg"] and len(e["exec"]) == 32 and e["type"] == "echo"
        assert e["role"] == "worker" and e["node"].startswith("worker-")
    done = [e for e in events if e["msg"] == "job js is done"]
    assert len(done) == 1 and done[0]["job"] == "js" and done[0]["role"] == "manager"
