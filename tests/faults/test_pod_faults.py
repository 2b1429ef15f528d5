"""Pods failing under a running job: killed, drained, restarted, or with an actor crashing inside."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.faults.harness import running_on
from tests.faults.history import read_calls
from tests.helpers import wait_until

N = 200


def _busy_worker(cluster, run, *kinds: str, prefix: str = "", pod=None):
    """A worker pod (or `pod`) with a call of each of `kinds` open below it, one of a task whose id starts
    with `prefix`; with every process below it and its open calls."""
    for p in [pod] if pod else cluster.workers():
        calls = running_on(p, read_calls(run.calls))
        if all(any(c.kind == k for c in calls) for k in kinds) and any(c.task.startswith(prefix) for c in calls):
            return p, [x.pid for x in p.runner_children()], calls
    return None


def test_01_worker_sigkill_mid_task(make_cluster, case):
    # Given a job of one 10 s exe task and 200 short python tasks on two worker pods
    cluster = make_cluster()
    run = case.start(cluster)
    run.submit([run.task("x-0", "exe-work", 10.0)])
    run.submit(run.healthy(N))
    run.wait_archived(0.3)
    wait_until(lambda: _busy_worker(cluster, run, "exe"), timeout=30, message="a worker pod running the exe task")
    try:  # best also mid python task; short tasks may be over already on a fast machine
        victim, doomed, calls = wait_until(lambda: _busy_worker(cluster, run, "exe", "python"), timeout=3,
                                           interval=0.01)
    except AssertionError:
        victim, doomed, calls = _busy_worker(cluster, run, "exe")

    # When that worker pod is SIGKILLed (the pod process alone: its runner children must notice)
    victim.doomed = True
    run.fault()
    os.kill(victim.pid, signal.SIGKILL)
    run.healed()
    case.notes.append(f"killed {victim.name} running {', '.join(sorted(c.task for c in calls))}")

    # Then everything it ran dies by itself before the lease (3 s) could expire and be re-run elsewhere
    ttl = cluster.settings.worker.lease_ttl_s
    case.expect_dead(doomed, ttl - 0.5, "the killed pod's runner children and executors die by themselves")
    # and the job completes with nothing lost, nothing doubled, never two executions of a task at once
    history = case.finish()
    case.check("x-0" in history.affected(), "the exe task the killed pod was running ran again elsewhere")
    case.assert_ok()


def test_02_worker_sigterm_drains(make_cluster, case):
    # Given a job of two 8 s tasks and 200 short ones on two worker pods, with a drain grace of 2 s
    cluster = make_cluster()
    run = case.start(cluster)
    run.submit([run.task(f"long-{i}", "work", 8.0) for i in range(2)])
    run.submit(run.healthy(N))
    run.wait_archived(0.3)
    victim, doomed, calls = wait_until(lambda: _busy_worker(cluster, run, "python", prefix="long-"),
                                       timeout=30, interval=0.02, message="a worker pod running a long task")

    # When that worker pod gets SIGTERM
    victim.doomed = True
    run.fault()
    victim.proc.send_signal(signal.SIGTERM)
    grace = cluster.settings.worker.drain_grace_s
    code = victim.proc.wait(grace + 20)
    run.healed()
    case.notes.append(f"SIGTERM to {victim.name} running {', '.join(sorted(c.task for c in calls))}; "
                      f"exited {code} after {run.t_heal - run.t_fault:.1f} s")

    # Then it drains: exits 0, leaves no executor behind, finishes its short tasks, hands the long one back
    case.check(code == 0, f"the drained pod exited {code}, not 0")
    case.expect_dead(doomed, 5, "the drained pod's runner children and executors")
    history = case.finish()
    by_task: dict[str, list] = {}
    for c in history.calls:
        by_task.setdefault(c.task, []).append(c)
    for c in calls:
        rerun = [x for x in by_task[c.task] if x.start > run.t_fault]
        row = history.rows[c.task]
        if not c.task.startswith("long-"):
            case.check(not rerun, f"{c.task} was running at SIGTERM and should have finished there: {rerun}")
            continue
        # handed back: pending again with the attempt not counted, no expired lease on record
        case.check(bool(rerun) and row["attempts"] == 1 and len(row["executions"]) == 1,
                   f"{c.task} was handed back (not left to expire) and ran again: {row}, {len(rerun)} re-run(s)")
        if rerun:
            case.notes.append(f"{c.task} handed back, re-run {rerun[0].start - run.t_fault:.1f} s after SIGTERM")
    late = [c.task for c in history.calls if c.pid in doomed and c.start > run.t_fault]
    case.check(len(late) <= cluster.settings.worker.slots, f"the draining pod kept taking work: {late}")
    case.assert_ok()


def test_07_manager_sigkill_restart(make_cluster, case):
    # Given a job of 200 short tasks, on pods with auth on (the matrix must hold with it: the new
    # manager reads the same tokens, and the client's token goes on working)
    cluster = make_cluster(auth=True)
    run = case.start(cluster)
    run.submit(run.healthy(N))
    run.wait_archived(0.3)

    # When the manager pod is SIGKILLed mid-job and a new manager pod is started
    manager = cluster.pod("manager")
    manager.doomed = True
    run.fault()
    os.kill(manager.pid, signal.SIGKILL)
    manager.proc.wait(10)
    cluster.add("manager", "manager")
    run.healed()
    cluster.wait_api()

    # Then the new manager finishes the job: nothing lost, nothing doubled
    case.finish()
    case.check(not cluster.pod("manager").exited(), "the new manager runs")
    case.assert_ok()


def _crash_a_slot(cluster, killed: str):
    """Arm the slot running the other long task (on whichever pod) to raise when that task finishes."""
    for pod in cluster.workers():
        answer = pod.hook("crash-worker", prefix="long-", exclude=[killed], timeout_s=0.5)
        if answer["ok"]:
            return pod, answer
    return None


def test_10_actor_crashes_inside_pods(make_cluster, case):
    # Given a job of two 8 s tasks and 200 short ones on pods started under the fault hook
    cluster = make_cluster(hooked=True)
    run = case.start(cluster)
    run.submit([run.task(f"long-{i}", "work", 8.0) for i in range(2)])
    run.submit(run.healthy(N))
    run.wait_archived(0.3)
    victim, _, calls = wait_until(lambda: _busy_worker(cluster, run, "python", prefix="long-"), timeout=30,
                                  interval=0.02, message="a worker pod running a long task")
    killed = next(c for c in calls if c.task.startswith("long-"))

    # When, at once: the python runner child running one long task is SIGKILLed; the worker slot actor
    # running the other raises when it ends (after its executor returned, before the outcome is recorded);
    # and the manager's ResultAnalyzer raises on its next batch (after analysis, before the archive commit)
    run.fault()
    os.kill(killed.pid, signal.SIGKILL)
    armed, crashed = wait_until(lambda: _crash_a_slot(cluster, killed.task), timeout=10,
                                message="a slot running the other long task armed to crash")
    analyzer = cluster.pod("manager").hook("crash-analyzer")
    assert analyzer["ok"], analyzer
    run.healed()
    report = Path(crashed["report"])
    crash = wait_until(lambda: report.exists() and json.loads(report.read_text()), timeout=30,
                       message=f"{armed.name}'s armed slot crashed")
    case.notes.append(f"SIGKILL to the runner child running {killed.task} on {victim.name}; {armed.name} slot "
                      f"{crashed['slot']} raised as {crashed['task']} returned; the analyzer raised")

    # Then each supervisor restarts what crashed, the pods live on, and the job completes
    history = case.finish()
    case.check(bool(cluster.log.grep(f"[{armed.name}]", "restarting child worker-")), f"{armed.name}'s slot restarted")
    case.check(bool(cluster.log.grep("[manager]", "restarting child analyzer")), "the analyzer was restarted")
    case.check(not cluster.unexpected_exits(), "every pod still runs")
    executions = history.rows[killed.task]["executions"]
    case.check(len(executions) == 2 and "python child died" in (executions[0].get("error") or ""),
               f"{killed.task}: its killed attempt is recorded, then it was retried: {executions}")
    execs = history.rows[crashed["task"]]["executions"]
    case.check(len(execs) == 2 and execs[0]["status"] == "lost" and execs[0]["exec"] == crash["exec"],
               f"{crashed['task']}: the crashed slot's lease expired and the task ran again: {execs}")
    # and the crashed slot's runner child does not outlive the actor that owned it
    case.expect_dead([crash["runner_pid"]], 5, "the crashed slot's python runner child")
    case.assert_ok()
