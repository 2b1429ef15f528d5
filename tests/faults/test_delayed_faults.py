"""Delayed tasks through the faults that could lose their time: Redis SIGKILLed and restarted from its
AOF, and the manager (whose TimeoutWatcher promotes them) SIGKILLed and replaced, while they wait.

Their due times live only in Redis (the job's scheduled set), never in NSQ; each case's job mixes 100
tasks that run at once with 100 delayed 1-8 s, so the fault strikes while most still wait, some fall
due during the outage and some after it. Besides lost 0 and double 0: no delayed task started before
its time (each execution's `started` against the task's `run_at_ms`, both on Redis's clock).
"""

from __future__ import annotations

import json
import os
import signal

from tests.faults.harness import healthy_sleep
from tests.helpers import mysql_connect

N = 100


def _delayed_job(case, cluster):
    run = case.start(cluster)
    run.submit(run.healthy(N))
    run.submit([run.task(f"later-{i:03d}", "work", healthy_sleep(i), delay_s=round(1.0 + 7.0 * i / N, 2))
                for i in range(N)])
    return run


def _never_early(case, run) -> None:
    """Every execution of a delayed task started at or after its time; notes the largest lateness."""
    conn = mysql_connect(run.cluster.settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, run_at_ms, executions FROM tasks WHERE job = %s AND id LIKE 'later-%%'", (run.job,))
            rows = cur.fetchall()
    finally:
        conn.close()
    starts = [(task_id, run_at, e["started"]) for task_id, run_at, execs in rows for e in json.loads(execs)]
    case.check(len(rows) == N and all(run_at for _, run_at, _ in rows), f"{len(rows)} delayed rows with run_at_ms")
    early = [f"{t}: {(s - r) / 1000:+.3f} s" for t, r, s in starts if r is not None and s < r]
    case.check(not early, f"delayed tasks started before their time: {early[:5]}")
    if starts:
        late = max((s - r) / 1000 for _, r, s in starts if r is not None)
        case.notes.append(f"{N} delayed 1-8 s: none early, latest start {late:.1f} s after its time")


def test_12_delayed_tasks_across_redis_sigkill_restart(make_cluster, case):
    # Given a job of 100 tasks at once and 100 delayed 1-8 s, mid-way
    cluster = make_cluster()
    run = _delayed_job(case, cluster)
    run.wait_archived(0.3)
    # When redis-server is SIGKILLed while most delayed tasks wait, stays down 3 s, and restarts from its AOF
    services = cluster.services.manager
    run.fault()
    services.stop_one("redis", signal.SIGKILL)
    run.hold(3.0)
    services.start_one("redis")
    run.healed()
    case.notes.append(f"redis SIGKILL, down {run.t_heal - run.t_fault:.1f} s")
    # Then every delayed task ran once, none before its time: nothing lost, nothing doubled
    case.finish()
    _never_early(case, run)
    case.check(not cluster.unexpected_exits(), "every pod still runs")
    case.assert_ok()


def test_13_delayed_tasks_across_manager_sigkill_restart(make_cluster, case):
    # Given a job of 100 tasks at once and 100 delayed 1-8 s, mid-way
    cluster = make_cluster()
    run = _delayed_job(case, cluster)
    run.wait_archived(0.3)
    # When the manager pod (the one TimeoutWatcher) is SIGKILLed while they wait, and a new one started
    manager = cluster.pod("manager")
    manager.doomed = True
    run.fault()
    os.kill(manager.pid, signal.SIGKILL)
    manager.proc.wait(10)
    cluster.add("manager", "manager")
    run.healed()
    cluster.wait_api()
    # Then the new manager's watcher starts every one of them once, none before its time
    case.finish()
    _never_early(case, run)
    case.check(not cluster.pod("manager").exited(), "the new manager runs")
    case.assert_ok()
