"""Scheduled tasks through the faults that could lose or double a tick: Redis SIGKILLed and restarted
from its AOF, and the manager (whose Scheduler fires the ticks) SIGKILLed and replaced.

Each case's job holds 100 tasks submitted at once (the fault strikes when 30 % are archived) and the
ticks of a schedule firing every second into the same job. Its ticks live only in Redis (the next-fire
sorted set); a tick's task id comes from the schedule's name and the tick, so the accepted set is
every tick from the schedule's first to its last (after the schedule is deleted): a tick missing is
lost, a tick twice is double. Outages here are shorter than `catch_up_s` (60 s), so no tick may be
coalesced: each must fire, late if need be.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time

from taskherd.client import ClientError
from tests.faults.harness import FUNCS
from tests.helpers import mysql_connect, wait_until

N = 100
NAME = "faults-every-second"


def _scheduled_job(case, cluster):
    run = case.start(cluster, {"sched-work": {"kind": "python", "target": f"{FUNCS}:scheduled", "max_attempts": 5}})
    run.submit(run.healthy(N))
    payload = {"log": str(run.calls), "locks": str(run.locks), "sleep_s": 0.02, "schedule": NAME}
    put = run.client.put_schedule(NAME, {"every_s": 1, "fire_time_key": "fired_at",
                                         "task": {"type": "sched-work", "job": run.job, "payload": payload}})
    run.first_tick_ms = put["schedule"]["next_fire_ms"]
    return run


def _fired_after(case, run, at: float, ticks: int) -> None:
    """Until the schedule has fired `ticks` ticks after `at` (Unix s); an API slow to answer on a
    busy machine is asked again."""
    def fired() -> bool:
        try:
            last = run.client.schedule(NAME)["last_fired_ms"]
        except ClientError:
            return False
        return bool(last) and last >= (at + ticks) * 1000

    case.expect(fired, timeout=60, message=f"{ticks} ticks fired after {at:.1f}")


def _delete(run) -> None:
    def deleted() -> bool:
        try:
            run.client.delete_schedule(NAME)
        except ClientError as exc:
            return exc.status == 404  # an earlier try went through
        return True

    wait_until(deleted, timeout=30, message=f"schedule {NAME} deleted")


def _stop_and_expect_every_tick(case, run) -> None:
    """Delete the schedule, let any tick in flight land, and accept every tick from its first to the
    last one archived: the history then counts a missing tick as lost and a second one as double."""
    _delete(run)
    deleted = time.time()
    case.expect(lambda: time.time() > deleted + 1.5, timeout=5, message="a scheduler round past the delete")
    run.wait_done()
    ticks = _archived_ticks(run)
    last = max(ticks) if ticks else run.first_tick_ms
    run.expected.update({_tick_id(t): "succeeded" for t in range(run.first_tick_ms, last + 1, 1000)})
    case.notes.append(f"schedule every 1 s: {len(ticks)} of {(last - run.first_tick_ms) // 1000 + 1} ticks archived")


def _archived_ticks(run) -> dict[int, list[dict]]:
    conn = mysql_connect(run.cluster.settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, executions FROM tasks WHERE job = %s AND id LIKE %s", (run.job, f"sched-{NAME}-%"))
            rows = cur.fetchall()
    finally:
        conn.close()
    return {_tick_ms(task_id): json.loads(execs) for task_id, execs in rows}


def _tick_id(ms: int) -> str:
    return f"sched-{NAME}-{dt.datetime.fromtimestamp(ms / 1000, dt.UTC):%Y%m%dT%H%M%SZ}"


def _tick_ms(task_id: str) -> int:
    stamp = task_id.rsplit("-", 1)[1]
    return int(dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).timestamp() * 1000)


def _lateness(case, run) -> None:
    """How late after its tick each tick's first execution started; notes the largest."""
    starts = [(tick, execs[0]["started"]) for tick, execs in _archived_ticks(run).items() if execs]
    early = [_tick_id(t) for t, s in starts if s < t]
    case.check(not early, f"ticks that ran before their time: {early[:5]}")
    if starts:
        case.notes.append(f"latest tick started {max(s - t for t, s in starts) / 1000:.1f} s after its time")


def test_14_scheduled_tasks_across_redis_sigkill_restart(make_cluster, case):
    # Given a job of 100 tasks and a schedule firing every second into it, mid-way
    cluster = make_cluster()
    run = _scheduled_job(case, cluster)
    run.wait_archived(0.3)
    _fired_after(case, run, run.first_tick_ms / 1000, 2)
    # When redis-server is SIGKILLed, stays down 3 s, and restarts from its AOF
    services = cluster.services.manager
    run.fault()
    services.stop_one("redis", signal.SIGKILL)
    run.hold(3.0)
    services.start_one("redis")
    run.healed()
    case.notes.append(f"redis SIGKILL, down {run.t_heal - run.t_fault:.1f} s")
    _fired_after(case, run, run.t_heal, 4)
    # Then every tick fired exactly once, those of the outage late: nothing lost, nothing doubled
    _stop_and_expect_every_tick(case, run)
    case.finish()
    _lateness(case, run)
    case.check(not cluster.unexpected_exits(), "every pod still runs")
    case.assert_ok()


def test_15_scheduled_tasks_across_manager_sigkill_restart(make_cluster, case):
    # Given a job of 100 tasks and a schedule firing every second into it, mid-way
    cluster = make_cluster()
    run = _scheduled_job(case, cluster)
    run.wait_archived(0.3)
    _fired_after(case, run, run.first_tick_ms / 1000, 2)
    # When the manager pod (the only Scheduler) is SIGKILLed and a new one started 2 s later
    manager = cluster.pod("manager")
    manager.doomed = True
    run.fault()
    os.kill(manager.pid, signal.SIGKILL)
    manager.proc.wait(10)
    run.hold(2.0)  # ticks fall due with no Scheduler anywhere, besides those of the new pod's start
    cluster.add("manager", "manager")
    run.healed()
    case.notes.append(f"manager SIGKILL, replaced after {run.t_heal - run.t_fault:.1f} s")
    cluster.wait_api()
    _fired_after(case, run, time.time(), 4)
    # Then the new manager fires the ticks missed meanwhile, each once, and goes on
    _stop_and_expect_every_tick(case, run)
    case.finish()
    _lateness(case, run)
    case.check(not cluster.pod("manager").exited(), "the new manager runs")
    case.assert_ok()
