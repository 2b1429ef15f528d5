"""The manager side on 8 hosts (infra, m1 and m2 each with an nsqd and a manager pod, w1, w2, and r1..r3
holding the Redis Cluster): the active manager killed, the active manager cut off, an nsqd lost with
tasks in it, the Redis master serving a job killed.

Pods read the ConfigMap's TOML (its timings are the defaults: the watcher sweeps every second and its
lease lasts 3 sweeps, 3 s; republish_after_s 10; Redis socket time-out 5 s), with only the soak's
analyzer module admitted. Every case checks its job with the checker (lost 0, doubled 0, one `ok`
execution, no two executions at once) and, from Redis MONITOR, that no manager requeued or promoted
while the other held the watcher lease.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskherd.store import keys
from tests.helpers import wait_until
from tests.hosts import PORTS, Cluster, Host, redis_nodes
from tests.hosts.net import HostsError
from tests.multihost import nemesis
from tests.multihost.checker import Job, check, log_events

WATCHER_INTERVAL_S = 1.0
LEASE_TTL_S = 3 * WATCHER_INTERVAL_S
"""The watcher lease's TTL: three sweeps (actors/timeout_watcher.py)."""
REDIS_TIMEOUT_S = 5.0
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def cluster(root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("hosts"), managers=2, workers=2, overrides=nemesis.OVERRIDES,
                 redis_cluster=nemesis.REDIS_CLUSTER) as c:
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


class _Producer:
    """Tasks of `job` submitted one by one across a window, each until a definite answer (submit is
    idempotent, so an id whose fate is unknown is sent again), as a client of the API would."""

    def __init__(self, managers: nemesis.Managers, job: Job, prefix: str, every_s: float = 0.2) -> None:
        self.managers, self.job, self.prefix, self.every_s = managers, job, prefix, every_s
        self.stop = threading.Event()
        self.accepted: list[str] = []
        self.accepted_at: list[float] = []
        self.refused = 0
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def __enter__(self) -> _Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        n = 0
        while not self.stop.wait(self.every_s):
            n += 1
            task_id = f"{self.prefix}-{n:03d}"
            task = {"id": task_id, "type": "soak", "job": self.job.name,
                    "payload": {"id": task_id, "dir": str(self.job.dir), "sleep_s": 0.3, "fail_once": False}}
            while True:
                try:
                    answer = self.managers.call("submit", task)
                except nemesis.ERRORS:
                    self.refused += 1  # the master of the job's slot is gone until its replica is promoted
                    # a producer's back-off, not a wait for a state: it retries until accepted even past
                    # the case's stop, as a refused submit may have created the task (else "unexpected")
                    time.sleep(0.2)
                    continue
                assert answer["status"] in ("created", "exists"), answer
                self.accepted.append(task_id)
                self.accepted_at.append(time.time())
                break


@pytest.mark.skipif(not nemesis.REDIS_CLUSTER, reason="needs the Redis Cluster (TASKHERD_HOSTS_REDIS=single)")
def test_redis_master_killed_its_replica_takes_over_and_the_job_runs_on(
        cluster: Cluster, managers: nemesis.Managers, watch: nemesis.WatcherLog, figures: dict,
        tmp_path: Path) -> None:
    """The master serving a job's slot SIGKILLed mid-job, with submits into the job going on across the
    failover. Pods WAIT for one replica before answering a submit (`wait_replicas = 1`), so no
    acknowledged task is lost with the master; what it had not passed on of the rest (a lease, a
    renewal, a result) is as if lost with a worker: the lease lapses, the task runs again, fenced."""
    job = submit(managers, cluster, f"rkill-{int(time.time())}", 80, tmp_path, sleep_s=(0.5, 1.5), fail_every=5)
    key = keys.job_meta(job.name)
    wait_until(lambda: _ended(job) >= 10, timeout=60, message="10 tasks run")
    master = cluster.redis_master_of(key)
    replica = next(n for n in redis_nodes.nodes(master.address) if n.master_id == master.id)

    with _Producer(managers, job, f"{job.name}-late") as producer:
        wait_until(lambda: len(producer.accepted) >= 3, timeout=30, message="late submits accepted")
        t_kill = time.time()
        cluster.kill_redis_node(master.port)
        promoted = wait_until(lambda: (n := cluster.redis_master_of(key)).port != master.port and n, timeout=60,
                              ignore=(HostsError,), message=f"a replica of {master.address} promoted")
        t_promoted = time.time()
        ran_on = wait_until(lambda: min((c.start for c in job.calls() if c.start > t_promoted), default=None),
                            timeout=60, message="a task of the job begun after the promotion")
        accepted_at_promotion = len(producer.accepted)
        wait_until(lambda: len(producer.accepted) >= accepted_at_promotion + 3, timeout=60,
                   message="submits accepted again")
    t_restart = time.time()
    cluster.start_redis_node(master.port)  # rejoins as the replica of the one promoted in its place
    t_rejoined = time.time()
    rejoined = next(n for n in redis_nodes.nodes(promoted.address) if n.port == master.port)
    job.expected += producer.accepted
    status = managers.wait(job.name, timeout=180)
    t_done = time.time()

    verdict = check(job, status)
    # An overlap here is a lease (or its renewal) the killed master acknowledged and never passed on:
    # the task's first run began before the promotion, the second after the kill.
    explained = [o for o in verdict.overlaps if _ran_across(job, o, t_kill, t_promoted)]
    rows, _, _ = job.archive()
    runs = Counter(str(e.get("status")) for r in rows.values() for e in r["executions"])
    figures.update(tasks=len(job.expected), late_submits=len(producer.accepted), submits_refused=producer.refused,
                   lost=len(verdict.lost), doubled=len(verdict.doubled), overlaps=len(verdict.overlaps),
                   overlaps_unexplained=len(verdict.overlaps) - len(explained), executions=verdict.executions,
                   runs_by_status=dict(sorted(runs.items())), fenced=verdict.fenced,
                   killed=f"{master.address} (slot of {key})", promoted=promoted.address,
                   node_timeout_ms=redis_nodes.NODE_TIMEOUT_MS, promoted_s=round(t_promoted - t_kill, 2),
                   ran_on_s=round(ran_on - t_kill, 2),
                   submits_back_s=round(min(t for t in producer.accepted_at if t > t_kill) - t_kill, 2),
                   rejoin_s=round(t_rejoined - t_restart, 1),
                   out_of_turn=len(watch.acting_out_of_turn()), done_after_kill_s=round(t_done - t_kill, 1))
    assert promoted.id == replica.id, f"{promoted.address} promoted, not {master.address}'s replica {replica.address}"
    assert not rejoined.master and rejoined.master_id == promoted.id, f"{master.address} rejoined as {rejoined}"
    assert not verdict.problems(overlaps_allowed=True), verdict.problems()
    assert len(explained) == len(verdict.overlaps), verdict.overlaps
    assert not watch.acting_out_of_turn(), watch.acting_out_of_turn()


def _ran_across(job: Job, overlap: str, t_kill: float, t_promoted: float) -> bool:
    """Whether the overlap's task had a run begun before the promotion and still going at the kill."""
    task = overlap.split(":", 1)[0].split(" on ", 1)[0]
    return any(c.start < t_promoted and (c.end is None or c.end > t_kill) for c in job.calls() if c.task == task)
