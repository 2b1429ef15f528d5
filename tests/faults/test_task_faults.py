"""Tasks that are themselves the fault: poison, and executors slower than their time-out."""

from __future__ import annotations

import http.server
import json
import select
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.faults.funcs import CallLog
from tests.faults.harness import EXE_TASK, FUNCS
from tests.helpers import QuietHandler

N = 200
POISON_ATTEMPTS = 3
SLOW_ATTEMPTS = 2


def test_08_poison_tasks_dead_lettered(make_cluster, case):
    # Given a job of 200 short tasks, and poison types allowed 3 attempts
    cluster = make_cluster()
    poison = {"boom": {"kind": "python", "target": f"{FUNCS}:boom", "max_attempts": POISON_ATTEMPTS},
              "die": {"kind": "python", "target": f"{FUNCS}:die", "max_attempts": POISON_ATTEMPTS}}
    run = case.start(cluster, poison)
    run.submit(run.healthy(N))
    run.wait_archived(0.3)

    # When, at 30%, five tasks that always raise and five that kill their executor (os._exit) join the job
    run.fault()
    run.submit([run.task(f"{kind}-{i}", kind, 0.0) for kind in poison for i in range(5)], final="failed")
    run.healed()

    # Then each poison task runs exactly max_attempts times and ends failed, listed as a dead letter,
    # every error on record; every healthy task succeeds after a single execution
    history = case.finish()
    calls = Counter(c.task for c in history.calls)
    dead = [t for t, want in run.expected.items() if want == "failed"]
    for task_id in dead:
        row = history.rows.get(task_id, {"executions": []})
        errors = [e.get("error") or "" for e in row["executions"]]
        case.check(len(errors) == POISON_ATTEMPTS and calls[task_id] == POISON_ATTEMPTS,
                   f"{task_id}: {len(errors)} recorded executions, {calls[task_id]} calls; want {POISON_ATTEMPTS}")
        want = "always fails" if task_id.startswith("boom") else "python child died"
        case.check(all(want in e for e in errors), f"{task_id}: every attempt's error says {want!r}: {errors}")
    listed, _ = cluster.client.tasks("failed", job=run.job, limit=100)
    case.check(sorted(listed) == sorted(dead), f"dead letters listed {sorted(listed)}, want {sorted(dead)}")
    healthy = [t for t, want in run.expected.items() if want == "succeeded"]
    once = [t for t in healthy if len(history.rows.get(t, {}).get("executions", [])) != 1 or calls[t] != 1]
    case.check(not once, f"healthy tasks that did not run exactly once: {once[:10]}")
    case.notes.append(f"{len(dead)} poison tasks dead-lettered after {POISON_ATTEMPTS} attempts each")
    case.assert_ok()


class _SlowHandler(QuietHandler):
    """An http executor slower than its time-out. It stops when the client goes away (a killed
    request), so its call's end is when the worker abandoned it."""

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with CallLog(payload, "http") as call:
            deadline = call.t0 + float(payload["sleep_s"])
            while time.time() < deadline:
                if _client_gone(self.connection):
                    call.status = "abandoned"
                    self.close_connection = True
                    return
        self.reply(200, json.dumps({"id": payload["id"]}).encode())


def _client_gone(sock: socket.socket) -> bool:
    """True once the peer closed the connection; waits up to 20 ms for news."""
    readable, _, _ = select.select([sock], [], [], 0.02)
    return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""


@pytest.fixture
def slow_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow"
    server.shutdown()
    server.server_close()


def test_09_executors_slower_than_timeout(make_cluster, case, slow_server):
    # Given a job of 200 short tasks, and python, exe (through `sh -c 'sleep 30 & wait'`) and http
    # executors that take 30 s against a 1 s time-out, with 2 attempts each
    cluster = make_cluster()
    slow = {"slow-py": {"kind": "python", "target": f"{FUNCS}:work"},
            "slow-exe": {"kind": "exe", "target": [sys.executable, EXE_TASK]},
            "slow-http": {"kind": "http", "target": slow_server}}
    run = case.start(cluster, {t: {**s, "timeout_s": 1.0, "max_attempts": SLOW_ATTEMPTS} for t, s in slow.items()})
    run.submit(run.healthy(N))
    run.wait_archived(0.3)

    # When two tasks of each join the job at 30%
    run.fault()
    run.submit([run.task(f"{t}-{i}", t, 30.0, payload={"grandchild": True}) for t in slow for i in range(2)],
               final="failed")
    run.healed()

    # Then each is killed at its time-out, retried, and ends failed after exactly 2 timed-out attempts,
    # never two at once; no process of theirs is left, the exe's shell and its background sleep included
    history = case.finish()
    slow_calls = [c for c in history.calls if c.task.startswith("slow-")]
    per_task = Counter(c.task for c in slow_calls)
    for task_id, want in run.expected.items():
        if want != "failed":
            continue
        statuses = [e["status"] for e in history.rows.get(task_id, {}).get("executions", [])]
        case.check(statuses == ["timeout"] * SLOW_ATTEMPTS and per_task[task_id] == SLOW_ATTEMPTS,
                   f"{task_id}: executions {statuses}, {per_task[task_id]} calls; want {SLOW_ATTEMPTS} time-outs")
    pids = sorted({p for c in slow_calls if c.kind != "http" for p in (c.pid, *c.spawned)})
    case.check(all(c.spawned for c in slow_calls if c.kind == "exe"), "every exe call logged its shell and sleep")
    case.expect_dead(pids, 5, "processes of the timed-out python and exe executors (and their grandchildren)")
    lasted = [round(c.end - c.start, 1) for c in slow_calls if c.kind == "http" and c.end is not None]
    case.check(len(lasted) == 2 * SLOW_ATTEMPTS and all(x < 3 for x in lasted),
               f"every http call was abandoned at its time-out, its connection closed: lasted {lasted} s")
    case.notes.append(f"{len(per_task)} slow tasks x {SLOW_ATTEMPTS} time-outs; {len(pids)} executor pids all gone")
    case.assert_ok()

