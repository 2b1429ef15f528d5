"""The manager side on 5 hosts (infra, m1 and m2 each with an nsqd and a manager pod, w1, w2): the
active manager killed, the active manager cut off, an nsqd lost with tasks in it.

Pods read the ConfigMap's TOML (its timings are the defaults: the watcher sweeps every second and its
lease lasts 3 sweeps, 3 s; republish_after_s 10; Redis socket time-out 5 s), with only the soak's
analyzer module admitted. Every case checks its job with the checker (lost 0, doubled 0, one `ok`
execution, no two executions at once) and, from Redis MONITOR, that no manager requeued or promoted
while the other held the watcher lease.
"""

from __future__ import annotations

import random
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.hosts import PORTS, Cluster, Host
from tests.multihost import nemesis
from tests.multihost.checker import Job, check, log_events

WATCHER_INTERVAL_S = 1.0
LEASE_TTL_S = 3 * WATCHER_INTERVAL_S
"""The watcher lease's TTL: three sweeps (actors/timeout_watcher.py)."""
REDIS_TIMEOUT_S = 5.0
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def cluster(root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("hosts"), managers=2, workers=2, overrides=nemesis.OVERRIDES) as c:
        nemesis.restore(c)
        yield c


@pytest.fixture
def managers(cluster: Cluster) -> Iterator[nemesis.Managers]:
    """Both managers' APIs; after the test every host is healed and every pod and service runs again."""
    nemesis.restore(cluster)
    m = nemesis.Managers(cluster)
    nemesis.register(m)
    yield m
    m.close()
    nemesis.restore(cluster)


@pytest.fixture
def watch(cluster: Cluster) -> Iterator[nemesis.WatcherLog]:
    w = nemesis.WatcherLog(cluster).start()
    yield w
    w.stop()


def submit(managers: nemesis.Managers, cluster: Cluster, name: str, n: int, dir: Path, *,
           sleep_s: tuple[float, float], fail_every: int = 0) -> Job:
    """A job of `n` soak tasks (every `fail_every`-th fails its first attempt), as the checker's Job."""
    dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(name)
    tasks = [{"id": f"{name}-{i:03d}", "type": "soak", "job": name,
              "payload": {"id": f"{name}-{i:03d}", "dir": str(dir), "sleep_s": round(rng.uniform(*sleep_s), 2),
                          "fail_once": bool(fail_every) and i % fail_every == 0}} for i in range(n)]
    managers.call("submit", tasks)
    job = Job(cluster, name, n, sleep_s[1], dir)
    job.expected, job.submitted_at = [t["id"] for t in tasks], time.time()
    return job


def other(cluster: Cluster, host: Host) -> Host:
    return next(h for h in cluster.managers if h is not host)


def took_lease(cluster: Cluster, host: Host, after: float) -> float | None:
    """When `host`'s manager logged taking the watcher lease after `after`."""
    return next((e["ts"] for e in log_events(cluster.pods[host.name].log, "now the active TimeoutWatcher")
                 if e["ts"] > after), None)


def _ended(job: Job) -> int:
    return sum(c.end is not None for c in job.calls())


def test_active_manager_killed_the_other_takes_the_watcher_lease_within_its_ttl(
        cluster: Cluster, managers: nemesis.Managers, watch: nemesis.WatcherLog, figures: dict,
        tmp_path: Path) -> None:
    r = nemesis.redis_of(cluster)
    active = nemesis.active_manager(cluster, r)
    assert active is not None
    heir = other(cluster, active)
    job = submit(managers, cluster, f"mkill-{int(time.time())}", 60, tmp_path, sleep_s=(0.5, 1.5), fail_every=5)
    wait_until(lambda: _ended(job) >= 10, timeout=60, message="10 tasks run")

    t_kill = time.time()
    cluster.pods[active.name].kill()
    t_take = wait_until(lambda: took_lease(cluster, heir, t_kill), timeout=LEASE_TTL_S + 10,
                        message=f"{heir.name} taking the watcher lease")
    holder = str(r.get(nemesis.WATCHER_LEASE))
    status = managers.wait(job.name, timeout=120)
    t_done = time.time()

    verdict = check(job, status)
    acted = watch.by(heir.ip, t_take)
    figures.update(tasks=job.n, lost=len(verdict.lost), doubled=len(verdict.doubled), overlaps=len(verdict.overlaps),
                   executions=verdict.executions, failover_s=round(t_take - t_kill, 2), lease_ttl_s=LEASE_TTL_S,
                   heir_requeues=sum(c[2] == "requeue" for c in acted),
                   heir_promotions=sum(c[2] == "promote" for c in acted),
                   out_of_turn=len(watch.acting_out_of_turn()), done_after_kill_s=round(t_done - t_kill, 1))
    assert holder.endswith(f"-{cluster.pods[heir.name].pid}"), holder
    assert t_take - t_kill <= LEASE_TTL_S + WATCHER_INTERVAL_S + 0.5, "takeover slower than the lease allows"
    assert not verdict.problems(), verdict.problems()
    assert not watch.acting_out_of_turn(), watch.acting_out_of_turn()


def test_active_manager_cut_off_stops_acting_before_the_other_takes_over(
        cluster: Cluster, managers: nemesis.Managers, watch: nemesis.WatcherLog, figures: dict,
        tmp_path: Path) -> None:
    r = nemesis.redis_of(cluster)
    active = nemesis.active_manager(cluster, r)
    assert active is not None
    heir = other(cluster, active)
    managers.clients.sort(key=lambda c: c.base_url != cluster.api_url(heir))  # submit through the heir
    job = submit(managers, cluster, f"mcut-{int(time.time())}", 60, tmp_path, sleep_s=(0.5, 1.5), fail_every=3)
    wait_until(lambda: _ended(job) >= 10, timeout=60, message="10 tasks run")

    t_cut = time.time()
    active.cut()
    t_take = wait_until(lambda: took_lease(cluster, heir, t_cut), timeout=LEASE_TTL_S + 10,
                        message=f"{heir.name} taking the watcher lease")
    # Cut for longer than the lease and the cut-off pod's Redis time-out, so any command it had in
    # flight either failed or, retransmitted on the heal, reaches Redis after the takeover.
    wait_until(lambda: time.time() > t_cut + REDIS_TIMEOUT_S + LEASE_TTL_S, timeout=20, message="the cut lasting")
    t_heal = time.time()
    active.heal()
    status = managers.wait(job.name, timeout=120)
    t_done = time.time()

    verdict = check(job, status)
    cut_calls = watch.by(active.ip, t_take)
    skipped = [e for e in log_events(cluster.pods[active.name].log, "sweep skipped") if e["ts"] > t_cut]
    acted = watch.by(heir.ip, t_take)
    last_before = max((c[0] for c in watch.calls if c[1] == active.ip and c[0] <= t_take), default=None)
    figures.update(tasks=job.n, lost=len(verdict.lost), doubled=len(verdict.doubled), overlaps=len(verdict.overlaps),
                   executions=verdict.executions, failover_s=round(t_take - t_cut, 2),
                   cut_s=round(t_heal - t_cut, 1), cut_off_sweeps_skipped=len(skipped),
                   cut_off_last_action_s=round(last_before - t_cut, 2) if last_before else "-",
                   cut_off_actions_after_takeover=len(cut_calls),
                   heir_requeues=sum(c[2] == "requeue" for c in acted),
                   heir_promotions=sum(c[2] == "promote" for c in acted),
                   out_of_turn=len(watch.acting_out_of_turn()), done_after_cut_s=round(t_done - t_cut, 1))
    assert t_take - t_cut <= LEASE_TTL_S + WATCHER_INTERVAL_S + 0.5, "takeover slower than the lease allows"
    assert not cut_calls, f"the cut-off manager requeued or promoted after {heir.name} took the lease: {cut_calls}"
    assert acted, "the heir's watcher never promoted or requeued (a third of the tasks failed once)"
    assert not verdict.problems(), verdict.problems()
    assert not watch.acting_out_of_turn(), watch.acting_out_of_turn()


def _held(host: Host, topic: str = "taskherd.tasks") -> int:
    import json
    stats = json.loads(_DIRECT.open(f"http://{host.ip}:{PORTS['nsqd_http']}/stats?format=json&topic={topic}",
                                    timeout=2).read())
    return sum(int(t.get("depth", 0)) + sum(int(ch.get("depth", 0)) + int(ch.get("in_flight_count", 0))
                                            for ch in t.get("channels") or [])
               for t in stats.get("topics") or [] if t.get("topic_name") == topic)


def test_nsqd_lost_with_tasks_in_it_loses_none(cluster: Cluster, managers: nemesis.Managers,
                                               watch: nemesis.WatcherLog, figures: dict, tmp_path: Path) -> None:
    r = nemesis.redis_of(cluster)
    active = nemesis.active_manager(cluster, r)
    assert active is not None
    victim = other(cluster, active)  # submit through the passive manager: its nsqd holds the tasks
    managers.clients.sort(key=lambda c: c.base_url != cluster.api_url(victim))
    job = submit(managers, cluster, f"nsqd-{int(time.time())}", 160, tmp_path, sleep_s=(0.2, 0.6))
    wait_until(lambda: _ended(job) >= 10, timeout=60, message="10 tasks run")

    # The passive manager's publisher puts them on its own nsqd, unless that failed a moment ago (the
    # previous case cut its host off and healed it) and it published through the other: the nsqd that
    # holds the job's tasks is the one this case kills, wherever they went.
    held_by = {h.name: _held(h) for h in cluster.managers}
    victim = max(cluster.managers, key=lambda h: held_by[h.name])
    held = held_by[victim.name]
    t_kill = time.time()
    cluster.services[victim.name].kill_one("nsqd")
    status = managers.wait(job.name, timeout=120)
    t_done = time.time()

    verdict = check(job, status)
    republished = [e for e in log_events(cluster.pods[active.name].log, "republishing") if e["ts"] > t_kill]
    n_republished = sum(int(e["msg"].split()[1]) for e in republished)
    first = min((e["ts"] for e in republished), default=None)
    figures.update(tasks=job.n, held_at_kill=held, lost=len(verdict.lost), doubled=len(verdict.doubled),
                   overlaps=len(verdict.overlaps), executions=verdict.executions, republished=n_republished,
                   first_republish_s=round(first - t_kill, 1) if first else "-",
                   done_after_kill_s=round(t_done - t_kill, 1))
    assert held > 0, "the killed nsqd held none of the job's tasks: the case proves nothing"
    assert n_republished > 0, "the active watcher republished nothing"
    assert not verdict.problems(), verdict.problems()
    assert not watch.acting_out_of_turn(), watch.acting_out_of_turn()
