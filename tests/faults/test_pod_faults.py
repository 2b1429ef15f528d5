"""Pods failing under a running job: killed, drained, restarted, or with an actor crashing inside."""

from __future__ import annotations

import os
import signal

from tests.faults.harness import is_dead, running_on
from tests.faults.history import read_calls
from tests.helpers import wait_until

N = 200


def _busy_worker(cluster, run, kind: str):
    """A worker pod with a call of `kind` open in one of its processes, and every process below it."""
    for pod in cluster.workers():
        calls = running_on(pod, read_calls(run.calls))
        if any(c.kind == kind for c in calls):
            return pod, [p.pid for p in pod.runner_children()], calls
    return None


def test_01_worker_sigkill_mid_task(make_cluster, case):
    # Given a job of 200 short python tasks on two worker pods, with a few 6 s exe tasks joining at 30%
    cluster = make_cluster()
    run = case.start(cluster)
    run.submit(run.healthy(N))
    run.wait_archived(0.3)
    run.submit([run.task(f"x-{i}", "exe-work", 6.0) for i in range(2)])
    victim, doomed, calls = wait_until(lambda: _busy_worker(cluster, run, "exe"), timeout=30,
                                       message="a worker pod running an exe task")

    # When that worker pod is SIGKILLed (the pod process alone: its runner children must notice)
    run.fault()
    os.kill(victim.pid, signal.SIGKILL)
    run.healed()
    case.notes.append(f"killed {victim.name} running {', '.join(sorted(c.task for c in calls))}")

    # Then everything it ran dies by itself before the lease (3 s) could expire and be re-run elsewhere
    ttl = cluster.settings.worker.lease_ttl_s
    case.expect(lambda: all(is_dead(p) for p in doomed), timeout=ttl - 0.5,
                message=f"the killed pod's executors {doomed} die by themselves within {ttl - 0.5} s "
                        f"(alive: {[p for p in doomed if not is_dead(p)]})")
    # and the job completes with nothing lost, nothing doubled, never two executions of a task at once
    history = case.finish()
    assert history.affected(), "the killed pod's tasks ran again elsewhere"
