"""The workloads against taskherd: a real local cluster (`taskherd.deploy.local.cluster.Cluster`) of
nsqd, nsqlookupd, redis-server and MariaDB, one manager pod and W worker pods, all started here.

Figures and how each is taken (timestamps are Redis's clock, in ms, on this same machine):
- submit rate: N tasks through the batched API (`Client.submit`, 1000 per POST) / wall time;
- drain rate: N queued with the worker pods stopped, then they start; N / (first lease: the earliest
  execution `started` in the archive -> the job's `finished_ms`, set by the archive step of its last task);
- latency: one task at a time: submit -> result recorded (the task's `finished_ms`), submit -> archived
  (the job's `finished_ms`, the job being done again after each task), submit -> the client holds the
  result (`Client.run`: the submit and the per-task wait in one request, POST /tasks/run, what a
  peer's `delay()` + blocking get measures), and submit -> the client sees the job done (its long-poll answers);
- fan-out: submit of the root -> the job's `finished_ms`;
- scale of state: Redis `used_memory` over the baseline, per live task (all queued while the worker
  pods are stopped, then sampled while they run it), after the job is archived and after teardown;
- recovery: a worker pod SIGKILLed (with its runner children) during a 5 s task; the pod is restarted
  by the cluster as `taskherd up` does; time from the kill until the task starts again.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path
from typing import IO, Any

from bench.common import BenchError, kill_tree, log, percentile, port_free, record_pid, summary, tree_pids, wait_for
from bench.funcs import tree_size
from taskherd.client import Client, ClientError
from taskherd.config import Settings, from_dict
from taskherd.deploy.local.cluster import Cluster, Pod
from taskherd.store import keys
from taskherd.store.archive import Archive
from taskherd.store.state_store import StateStore

PORT_SHIFT = 3000
"""Every port 3000 above taskherd's defaults, clear of `taskherd up` and of the test blocks."""


def bench_settings(slots: int, shift: int = PORT_SHIFT) -> Settings:
    """taskherd's defaults except the ports, the database name and the slots per worker pod."""
    return from_dict({
        "nsq": {"nsqd_tcp_address": f"127.0.0.1:{14150 + shift}",
                "nsqd_http_addresses": [f"127.0.0.1:{14151 + shift}"],
                "lookupd_tcp_address": f"127.0.0.1:{14160 + shift}",
                "lookupd_http_addresses": [f"127.0.0.1:{14161 + shift}"]},
        "redis": {"port": 16379 + shift},
        "mysql": {"port": 13306 + shift, "database": "taskherd_bench"},
        "api": {"port": 18080 + shift},
        "worker": {"slots": slots, "http_port": 18090 + shift},
    }, source="<bench>")


def memory_info(r: Any) -> dict[str, int]:
    """The parts of Redis's used_memory that explain a difference (clients, AOF buffer, Lua, data)."""
    info = r.info("memory")
    return {k: int(info.get(k, 0)) for k in ("used_memory", "used_memory_dataset", "used_memory_overhead",
                                             "mem_clients_normal", "mem_aof_buffer", "used_memory_scripts",
                                             "used_memory_vm_eval")}


def busy_ports(settings: Settings) -> list[int]:
    ports = [int(a.rsplit(":", 1)[1]) for a in (settings.nsq.nsqd_tcp_address, settings.nsq.nsqd_http_addresses[0],
                                                  settings.nsq.lookupd_tcp_address,
                                                  settings.nsq.lookupd_http_addresses[0])]
    ports += [settings.redis.port, settings.mysql.port, settings.api.port]
    return [p for p in ports if not port_free(p)]


class Taskherd:
    """The cluster plus the clients the workloads use. A context manager: everything stops on exit."""

    def __init__(self, workers: int, slots: int, data_dir: Path, out: IO[str], fsync: str = "always") -> None:
        self.workers, self.slots, self.fsync = workers, slots, fsync
        self.settings = bench_settings(slots)
        self.data_dir, self.out = data_dir, out
        self.cluster: Cluster | None = None
        self.tag = uuid.uuid4().hex[:6]

    def __enter__(self) -> Taskherd:
        busy = busy_ports(self.settings)
        if busy:
            raise BenchError(f"taskherd: ports {busy} are in use (another bench run?)")
        t0 = time.monotonic()
        self.cluster = Cluster(self.settings, None, workers=self.workers, data_dir=str(self.data_dir), out=self.out)
        self.cluster.__enter__()
        self._record_pids()
        log(f"taskherd: cluster up in {time.monotonic() - t0:.1f} s (1 manager + {self.workers} worker pods "
            f"x {self.slots} slots, API {self.cluster.api_url})")
        self.client = Client(self.cluster.api_url, timeout=120)
        self.archive = Archive(self.settings.mysql)
        self.store = StateStore(self.settings.redis)
        if self.fsync != "always":  # the cluster starts with taskherd's own (REDIS_DURABILITY); set at run time
            self.store.redis.config_set("appendfsync", self.fsync)
            log(f"taskherd: Redis appendfsync {self.store.redis.config_get('appendfsync')['appendfsync']}")
        self.client.add_executor("noop", {"kind": "python", "target": "bench.funcs:noop"}, replace=True)
        self.client.add_executor("sleep", {"kind": "python", "target": "bench.funcs:sleep"}, replace=True)
        # limits that never bind: the take script runs before every lease, the seat is renewed and given back
        self.client.add_executor("noop_limited", {"kind": "python", "target": "bench.funcs:noop",
                                                  "rate_limit_per_s": 1_000_000, "rate_burst": 1_000_000,
                                                  "max_concurrency": 1_000_000}, replace=True)
        self.client.add_executor("mark", {"kind": "python", "target": "bench.funcs:mark_sleep", "timeout_s": 60},
                                 replace=True)
        self.client.add_executor("tree", {"kind": "python", "target": "bench.funcs:noop"}, replace=True)
        self.client.add_analyzer("tree", {"kind": "python", "target": "bench.funcs:tree"}, replace=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for closer in (getattr(self, "client", None), getattr(self, "archive", None)):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    pass
        if self.cluster is not None:
            t0 = time.monotonic()
            self.cluster.__exit__(None, None, None)
            log(f"taskherd: cluster stopped in {time.monotonic() - t0:.1f} s")
            self.cluster = None

    def _record_pids(self) -> None:
        assert self.cluster is not None
        for name in ("nsqlookupd", "nsqd", "redis", "mariadb"):
            pid = self.cluster.services.pid(name)
            if pid:
                record_pid(pid, f"taskherd service {name}")
        for pod in self.cluster.pods:
            if pod.pid:
                record_pid(pod.pid, f"taskherd pod {pod.name}")

    # --- helpers ---------------------------------------------------------------------------------
    def used_memory(self) -> int:
        return int(self.store.redis.info("memory")["used_memory"])

    def wait_done(self, job: str, timeout: float) -> dict[str, Any]:
        return wait_for(lambda: (s := self.client.job(job)) and s.get("done") and s, timeout,
                        f"taskherd job {job} done", interval=0.05, ignore=(ClientError,))

    def job_keys(self, job: str) -> int:
        return sum(1 for _ in self.store.redis.scan_iter(match=keys.job_pattern(job), count=1000))

    def sql(self, query: str, args: tuple) -> list[dict[str, Any]]:
        def read(cur: Any) -> list[dict[str, Any]]:
            cur.execute(query, args)
            return list(cur.fetchall())
        return self.archive._execute(read)

    def check_job(self, job: str, n: int, status: dict[str, Any]) -> dict[str, Any]:
        """Every task ran exactly once and was archived once: MySQL rows, executions and attempts per
        task, the job's counters (each archive step counts once) and no fenced (superseded) result."""
        row = self.sql("SELECT COUNT(*) AS n, SUM(JSON_LENGTH(executions) <> 1) AS multi, "
                       "SUM(attempts <> 1) AS reattempted, SUM(state <> 'succeeded') AS not_ok, "
                       "MIN(CAST(JSON_EXTRACT(executions, '$[0].started') AS UNSIGNED)) AS first_ms "
                       "FROM tasks WHERE job = %s", (job,))[0]
        counts = self.archive.counts(job)
        sample = [self.client.task(f"{job}-{i}") for i in sorted({0, n // 3, n // 2, n - 1})] if n else []
        checks = {
            "archived_rows": int(row["n"]), "expected": n,
            "tasks_with_executions_not_1": int(row["multi"] or 0),
            "tasks_with_attempts_not_1": int(row["reattempted"] or 0),
            "not_succeeded": int(row["not_ok"] or 0),
            "job_counters": {"total": status["total"], "succeeded": status["counts"]["succeeded"]},
            "archive_counts": counts, "fenced": status.get("fenced", 0),
            "sample_executions": [len(t["executions"]) for t in sample],
        }
        checks["ok"] = (checks["archived_rows"] == n and checks["tasks_with_executions_not_1"] == 0
                        and checks["tasks_with_attempts_not_1"] == 0 and checks["not_succeeded"] == 0
                        and status["total"] == n and status["counts"]["succeeded"] == n
                        and counts.get("succeeded") == n and not checks["fenced"]
                        and all(x == 1 for x in checks["sample_executions"]))
        return checks | {"first_lease_ms": int(row["first_ms"] or 0)}

    def teardown(self, job: str) -> dict[str, Any]:
        try:
            left = self.client.teardown(job)["leftovers"]
        except ClientError as exc:
            left = [f"teardown failed: {exc}"]
        return {"leftovers": left, "job_keys_after": self.job_keys(job)}

    # --- workloads -------------------------------------------------------------------------------
    def warm_up(self, n: int = 200) -> None:
        job = f"warm-{self.tag}"
        self.client.submit([{"id": f"{job}-{i}", "type": "noop", "job": job} for i in range(n)])
        self.wait_done(job, 120)
        self.teardown(job)

    def throughput(self, kind: str, n: int, reps: int, priorities: bool = False) -> dict[str, Any]:
        """`noop`: returns at once; `sleep`: 10 ms each; `noop_limited`: a no-op whose type has limits that
        never bind. `priorities`: task i has priority i mod 10 (every priority's topic in use)."""
        submit, drain, retained, after_teardown, checks = [], [], [], [], []
        payload = {"ms": 10} if kind == "sleep" else {}
        for rep in range(reps):
            job = f"{kind}{'-prio' if priorities else ''}-{rep}-{self.tag}"
            tasks = [{"id": f"{job}-{i}", "type": kind, "job": job, "payload": payload,
                      **({"priority": i % 10} if priorities else {})} for i in range(n)]
            mem0 = self.used_memory()
            pods = self._stop_workers()  # the queue fills first: the drain is not bounded by the submission
            t0 = time.time()
            self.client.submit(tasks)
            t1 = time.time()
            self._start_workers(pods)
            status = self.wait_done(job, max(120.0, n / 20.0))
            check = self.check_job(job, n, status)
            submit.append(n / (t1 - t0))
            drain.append(n / ((status["finished_ms"] - check.pop("first_lease_ms")) / 1000.0))
            retained.append((self.used_memory() - mem0) / n)
            td = self.teardown(job)
            after_teardown.append(self.used_memory() - mem0)
            checks.append(check | td)
            log(f"taskherd {kind} rep {rep + 1}: submit {submit[-1]:.0f}/s, drain {drain[-1]:.0f}/s, "
                f"checks {'ok' if check['ok'] else 'FAILED ' + str(check)}")
        return {"tasks": n,
                "submit_rate": summary(submit, "tasks/s", "higher"),
                "drain_rate": summary(drain, "tasks/s", "higher", "first lease -> last archive"),
                "retained_bytes_per_task": summary(retained, "bytes", "lower",
                                                   "Redis used_memory growth per task once the job is archived"),
                "after_teardown_bytes": summary(after_teardown, "bytes", "lower"),
                "checks": {"ok": all(c["ok"] and not c["leftovers"] and not c["job_keys_after"] for c in checks),
                           "reps": checks}}

    def latency(self, n: int, reps: int) -> dict[str, Any]:
        figures: dict[str, list[float]] = {k: [] for k in ("result_p50", "result_p99", "archived_p50",
                                                           "archived_p99", "held_p50", "held_p99", "seen_p50", "seen_p99")}
        checks = []
        for rep in range(reps):
            job = f"lat-{rep}-{self.tag}"
            for i in range(5):  # untimed: the first submit of a job creates its keys
                self.client.submit({"id": f"{job}-w{i}", "type": "noop", "job": job})
                self.wait_done(job, 30)
            archived, held, seen = [], [], []
            starts: dict[str, float] = {}
            for i in range(n):
                tid = f"{job}-{i}"
                t0 = time.time()
                # submit and wait in one request (POST /tasks/run): answers when the result is recorded.
                # No id given, as the peers' clients make theirs: the server makes one (and the archive
                # need not be asked about it); the payload marks the task for the rows below.
                self.client.run({"type": "noop", "job": job, "payload": {"i": tid}}, timeout=30)
                held.append((time.time() - t0) * 1000)
                status = self.client.job(job, wait_s=30)  # a long-poll: answers the moment the job is done
                if not status["done"]:
                    raise BenchError(f"taskherd latency: task {tid} not archived within 30 s")
                seen.append((time.time() - t0) * 1000)
                archived.append(status["finished_ms"] - t0 * 1000)
                starts[tid] = t0
            rows = self.sql("SELECT payload, finished_ms FROM tasks WHERE job = %s", (job,))
            marked = [(json.loads(r["payload"]).get("i"), r["finished_ms"]) for r in rows]
            result = [ms - starts[i] * 1000 for i, ms in marked if i in starts]
            for name, values in (("result", result), ("archived", archived), ("held", held), ("seen", seen)):
                figures[f"{name}_p50"].append(percentile(values, 50))
                figures[f"{name}_p99"].append(percentile(values, 99))
            status = self.client.job(job)
            counts = self.archive.counts(job)
            summary_row = self.archive.job(job)
            td = self.teardown(job)
            checks.append({"archived": counts.get("succeeded"), "expected": n + 5, "job_total": status["total"],
                           "mysql_job_summary_total": summary_row["total"] if summary_row else None,
                           "job_total_after_teardown": self.client.job(job).get("total")} | td)
            log(f"taskherd latency rep {rep + 1}: result p50 {figures['result_p50'][-1]:.1f} / p99 "
                f"{figures['result_p99'][-1]:.1f} ms, archived p50 {figures['archived_p50'][-1]:.1f} / p99 "
                f"{figures['archived_p99'][-1]:.1f} ms")
        notes = {"result": "submit -> result recorded in Redis (the task's finished_ms; 1 ms resolution)",
                 "archived": "submit -> archived in MySQL and counted out of the job (the job's finished_ms)",
                 "held": "submit -> the client holds the result (Client.run, no id given: POST /tasks/run answers)",
                 "seen": "submit -> the client sees the job done (its long-poll GET /jobs/J?wait_s= answers)"}
        out = {k: summary(v, "ms", "lower", notes[k.split("_")[0]]) for k, v in figures.items()}
        out["checks"] = {"ok": all(c["archived"] == c["expected"] and not c["leftovers"] for c in checks),
                         "reps": checks}
        return out

    def fanout(self, fan: int, depth: int, reps: int) -> dict[str, Any]:
        total = tree_size(fan, depth)
        times, checks = [], []
        for rep in range(reps):
            job = f"fan-{rep}-{self.tag}"
            t0 = time.time()
            self.client.submit({"id": f"{job}-root", "type": "tree", "job": job,
                                "payload": {"d": 0, "fan": fan, "max": depth}})
            status = self.wait_done(job, max(180.0, total / 20.0))
            times.append(status["finished_ms"] / 1000.0 - t0)
            counts = self.archive.counts(job)
            multi = self.sql("SELECT SUM(JSON_LENGTH(executions) <> 1) AS multi FROM tasks WHERE job = %s",
                             (job,))[0]["multi"]
            check = {"total": status["total"], "expected": total, "succeeded": status["counts"]["succeeded"],
                     "archive_counts": counts, "tasks_with_executions_not_1": int(multi or 0)}
            check["ok"] = (status["total"] == total and counts.get("succeeded") == total
                           and counts.get("records") == total and not check["tasks_with_executions_not_1"])
            checks.append(check | self.teardown(job))
            log(f"taskherd fan-out rep {rep + 1}: {total} tasks done in {times[-1]:.2f} s "
                f"({'ok' if check['ok'] else 'FAILED ' + str(check)})")
        return {"tasks": total,
                "time_to_done": summary(times, "s", "lower", "first submit -> job done (taskherd's own completion)"),
                "rate": summary([total / t for t in times], "tasks/s", "higher"),
                "checks": {"ok": all(c["ok"] and not c["leftovers"] for c in checks), "reps": checks}}

    def _worker_pods(self) -> list[Pod]:
        assert self.cluster is not None
        return [p for p in self.cluster.pods if p.role == "worker"]

    def _stop_workers(self) -> list[Pod]:
        """Stop the worker pods (out of the cluster's keep-alive list first, so it does not restart them)."""
        assert self.cluster is not None
        pods = self._worker_pods()
        for pod in pods:
            self.cluster.pods.remove(pod)
        for pod in pods:
            pod.stop(30)
        self._wait_nodes(1, 30)
        return pods

    def _start_workers(self, pods: list[Pod]) -> None:
        assert self.cluster is not None
        for pod in pods:
            fresh = Pod(pod.name, "worker", self.cluster.config, self.out, pod.http_port)  # its own probe port
            fresh.start()
            record_pid(fresh.pid, f"taskherd pod {fresh.name}")
            self.cluster.pods.append(fresh)
        self._wait_nodes(1 + len(pods))

    def _wait_nodes(self, count: int, timeout: float = 60.0) -> None:
        wait_for(lambda: len(self.client.nodes()) == count, timeout, f"{count} taskherd node(s) registered",
                 interval=0.2, ignore=(ClientError,))

    def recovery(self, reps: int, cap_s: float, task_s: float) -> dict[str, Any]:
        assert self.cluster is not None
        times: list[float | None] = []
        notes = []
        for rep in range(reps):
            self._wait_nodes(1 + self.workers)
            job, key = f"rec-{rep}-{self.tag}", f"bench:runs:{uuid.uuid4().hex}"
            tid = f"{job}-0"
            self.client.submit({"id": tid, "type": "mark", "job": job,
                                "payload": {"redis_port": self.settings.redis.port, "key": key, "s": task_s}})
            r = self.store.redis
            first = wait_for(lambda: r.lindex(key, 0), 30, "taskherd: the 5 s task started")
            pid = int(first.split()[0])
            victim = next((p for p in self._worker_pods() if p.pid and pid in tree_pids(p.pid)), None)
            if victim is None:
                raise BenchError(f"taskherd recovery: pid {pid} running the task is in no worker pod")
            restarts = victim.restarts
            t_kill = time.time()
            # The pod, then its runner children, as a node loss would: killed children first, the pod
            # could see its executor die, record a retryable failure and have it retried (1.55 s in
            # one run) instead of losing the task with its lease.
            kill_tree(victim.pid, signal.SIGKILL, parent_first=True)
            deadline = time.monotonic() + cap_s
            again = None
            while time.monotonic() < deadline:
                if r.llen(key) >= 2:
                    again = float(r.lindex(key, 1).split()[1]) - t_kill
                    break
                time.sleep(0.05)
            times.append(again)
            wait_for(lambda: victim.restarts > restarts and victim.pid, 30, "the killed pod restarted")
            record_pid(victim.pid, f"taskherd pod {victim.name} (restarted)")
            status = self.wait_done(job, 60 + task_s)
            task = self.client.task(tid)
            r.delete(key)
            note = {"killed_pod": victim.name, "task_pid": pid, "attempts": task["attempts"],
                    "executions_recorded": len(task["executions"]), "state": task["state"],
                    "fenced": status.get("fenced", 0)} | self.teardown(job)
            notes.append(note)
            log(f"taskherd recovery rep {rep + 1}: " + (f"ran again after {again:.2f} s" if again is not None else
                                                        f"not run again within {cap_s:.0f} s") + f" {note}")
        return {"time_to_rerun": summary(times, "s", "lower", f"SIGKILL of the worker pod -> the task starts again; "
                                         f"capped at {cap_s:.0f} s"),
                "cap_s": cap_s, "checks": {"ok": all(n["state"] == "succeeded" for n in notes), "reps": notes}}

    def scale(self, n: int, timeout_s: float, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """Worker pods stopped -> submit n -> memory with all n queued -> pods back -> samples while it
        runs -> archived -> teardown. One repetition (a 200,000-task drain is the longest part of a run)."""
        assert self.cluster is not None
        r = self.store.redis
        base, base_keys, base_info = self.used_memory(), r.dbsize(), memory_info(r)  # pods running, idle
        pods = self._stop_workers()
        job = f"scale-{self.tag}"
        t0 = time.time()
        for i in range(0, n, 10_000):
            self.client.submit([{"id": f"{job}-{j}", "type": "noop", "job": job} for j in range(i, min(n, i + 10_000))])
        submit_s = time.time() - t0
        queued = self.used_memory()
        status = self.client.job(job)
        per_queued = (queued - base) / max(1, status["open"])
        log(f"taskherd scale: {status['open']} queued, {per_queued:.0f} bytes per live task "
            f"(submitted in {submit_s:.1f} s, {n / submit_s:.0f}/s)")
        out = partial if partial is not None else {}
        out.update({"tasks": n, "baseline_bytes": base,
                    "bytes_per_live_task": summary([per_queued], "bytes", "lower",
                                                   f"{n} tasks queued, worker pods stopped")})
        self._start_workers(pods)
        samples: list[float] = []
        t_run = time.monotonic()
        deadline = t_run + timeout_s
        while True:
            status = self.client.job(job)
            if status["done"]:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"taskherd scale: {status['open']} of {n} tasks still open after {timeout_s:.0f} s")
            if status["open"] >= n // 10:
                samples.append((self.used_memory() - base) / status["open"])
                out["bytes_per_live_task_running"] = summary(samples, "bytes", "lower",
                                                             "sampled every 2 s while the worker pods ran the job")
                out["open_while_running"] = {k: int(v) for k, v in status["counts"].items() if k in
                                             ("pending", "running", "retry", "analyzing", "succeeded")}
            time.sleep(2.0)
        run_s = status["finished_ms"] / 1000.0 - (t0 + submit_s)
        check = self.check_job(job, n, status)
        check.pop("first_lease_ms")
        archived = self.used_memory() - base
        archived_info = memory_info(r)
        td = self.teardown(job)
        time.sleep(1.0)
        after = self.used_memory() - base
        keys_after = r.dbsize() - base_keys
        after_info = memory_info(r)
        log(f"taskherd scale: archived -> {archived:+d} bytes over baseline; teardown -> {after:+d} bytes, "
            f"{td['job_keys_after']} job keys, dbsize {keys_after:+d}")
        return out | {
                "after_archive_bytes": summary([archived], "bytes", "lower", "over the baseline"),
                "after_teardown_bytes": summary([after], "bytes", "lower", "over the baseline (target 0)"),
                "job_keys_after_teardown": td["job_keys_after"], "dbsize_change": keys_after,
                "after_archive_dataset_bytes": summary(
                    [archived_info["used_memory_dataset"] - base_info["used_memory_dataset"]], "bytes", "lower",
                    "used_memory_dataset (used_memory less client buffers, Lua, keyspace overhead) over the baseline"),
                "after_teardown_dataset_bytes": summary(
                    [after_info["used_memory_dataset"] - base_info["used_memory_dataset"]], "bytes", "lower",
                    "used_memory_dataset over the baseline"),
                "memory_detail": {"baseline": base_info, "after_archive": archived_info,
                                  "after_teardown": after_info},
                "drain_rate_of_the_job": summary([n / run_s], "tasks/s", "higher",
                                                 "informative: the peers' recovery runs meanwhile"),
                "checks": {"ok": check["ok"] and not td["leftovers"] and not td["job_keys_after"],
                           "reps": [check | td]}}
