"""The services under the pods failing mid-job: nsqd, Redis and MariaDB stopped or killed, then back."""

from __future__ import annotations

import signal

N = 200


def _pods_alive(cluster):
    def check() -> None:
        dead = cluster.unexpected_exits()
        assert not dead, f"pods exited during the outage: {dead}"
    return check


def _outage(case, cluster, service: str, sig: int, down_s: float) -> None:
    """Given a job of 200 short tasks, at 30% stop `service` with `sig`, keep it down `down_s`, start it."""
    run = case.start(cluster)
    run.submit(run.healthy(N))
    run.wait_archived(0.3)
    services = cluster.services.manager
    run.fault()
    services.stop_one(service, sig)
    run.hold(down_s, check=_pods_alive(cluster))
    services.start_one(service)
    run.healed()
    case.notes.append(f"{service} {signal.Signals(sig).name}, down {run.t_heal - run.t_fault:.1f} s")


def test_03_nsqd_sigterm_restart(make_cluster, case):
    # Given a job mid-way, When nsqd stops cleanly (flushing in-flight messages to disk) for 3 s and returns
    cluster = make_cluster()
    _outage(case, cluster, "nsqd", signal.SIGTERM, 3.0)
    # Then the job completes: nothing lost, nothing doubled
    case.finish()
    case.check(not cluster.unexpected_exits(), "every pod still runs")
    case.assert_ok()


def test_04_nsqd_sigkill_restart(make_cluster, case):
    # Given a job mid-way, When nsqd is SIGKILLed (in-flight messages lost) and returns after 3 s
    cluster = make_cluster()
    _outage(case, cluster, "nsqd", signal.SIGKILL, 3.0)
    # Then the job completes: what NSQ lost is republished from Redis; nothing lost, nothing doubled
    case.finish()
    case.check(not cluster.unexpected_exits(), "every pod still runs")
    case.assert_ok()


def test_05_redis_sigkill_restart(make_cluster, case):
    # Given a job mid-way, When redis-server is SIGKILLed, stays down 3 s, and restarts from its AOF
    cluster = make_cluster()
    _outage(case, cluster, "redis", signal.SIGKILL, 3.0)
    # Then nothing acknowledged was lost: the job completes, nothing lost or doubled, never two at once
    case.finish()
    case.check(not cluster.unexpected_exits(), "every pod still runs")
    case.assert_ok()


def test_06_mariadb_stopped_20s(make_cluster, case):
    # Given a job mid-way, When MariaDB is stopped for 20 s, then started
    cluster = make_cluster()
    _outage(case, cluster, "mariadb", signal.SIGTERM, 20.0)
    # Then archiving resumes, and the job completes with one row per task
    case.finish()
    case.check(not cluster.unexpected_exits(), "every pod still runs")
    case.assert_ok()
