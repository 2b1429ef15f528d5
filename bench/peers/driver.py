"""Runs the benchmark workloads against one peer (Celery, Dramatiq or RQ) and prints JSON.

    bench/.peers-venv/bin/python -m bench.peers.driver --system celery --redis-port 19380 \
        --workloads scale,noop,latency,sleep10,fanout --reps 3 --out FILE.json

Runs in the bench-only venv with cwd = the repository root. It starts the peer's worker processes
itself (in its own process group, each recorded in bench/results/processes.tmp), against a
redis-server the harness started, and stops them however it ends (SIGTERM from the harness included).
Figures follow the harness's definitions (bench/README.md):
- drain rate: N / (first task start -> the driver sees the last result stored), results polled in
  submission order, 50 ms at most between polls of the oldest missing result;
- latency: one task at a time, submit -> the client holds the result (each peer's own blocking get);
- fan-out: no job completion in any peer: emulated (every task counts itself with INCR; done when the
  counter reaches the tree size, known in advance);
- scale: used_memory per queued task (no worker running), then the queue purged with the peer's own call;
- recovery: SIGKILL of the whole worker process (and its children) running a 5 s task, the worker
  restarted at once, then the time until the task starts again, capped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench.common import (
    ROOT,
    BenchError,
    kill_tree,
    log,
    percentile,
    pid_of_tree_containing,
    record_pid,
    stop_proc,
    summary,
    wait_for,
)

VENV_BIN = Path(sys.executable).parent
POLL_S = 0.05


class Peer:
    """One peer system: its worker processes and its client calls."""

    name = ""

    def __init__(self, url: str, slots: int, pods: int, logdir: Path, threads: int = 1) -> None:
        self.url, self.slots, self.pods, self.logdir = url, slots, pods, logdir
        self.threads = threads  # Dramatiq's threads per process (1 in the equal layout)
        self.r = redis.Redis.from_url(url)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.probe: float | None = None
        self._logs: dict[str, Path] = {}

    # --- workers ---------------------------------------------------------------------------------
    def worker_argv(self, index: int) -> list[str]:
        raise NotImplementedError

    def processes_per_pod(self) -> int:
        return self.slots // self.pods

    def start_worker(self, name: str, index: int) -> None:
        path = self.logdir / f"{self.name}-{name}.log"
        self._logs[name] = path
        out = path.open("ab")
        env = {**os.environ, "BENCH_REDIS_URL": self.url, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(self.worker_argv(index), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
        out.close()
        record_pid(proc.pid, f"{self.name} worker {name}")
        self.workers[name] = proc

    def start_workers(self) -> None:
        for i in range(self.pods):
            self.start_worker(f"w{i + 1}", i + 1)
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        raise NotImplementedError

    def _log_lines(self, name: str, needle: str) -> int:
        try:
            return self._logs[name].read_text(errors="replace").count(needle)
        except OSError:
            return 0

    def _check_alive(self) -> None:
        for name, proc in self.workers.items():
            if proc.poll() is not None:
                raise BenchError(f"{self.name} worker {name} exited ({proc.returncode}); see {self._logs[name]}")

    def stop_workers(self) -> None:
        for proc in self.workers.values():
            stop_proc(proc, 15)
        self.workers.clear()

    # --- client ----------------------------------------------------------------------------------
    def submit_noop(self, n: int) -> list[Any]:
        raise NotImplementedError

    def submit_sleep(self, n: int, ms: float) -> list[Any]:
        raise NotImplementedError

    def poll(self, handles: list[Any]) -> list[float | None]:
        """For each handle: the task's start time (its result) once its result is stored, else None."""
        raise NotImplementedError

    def one_roundtrip(self, timeout: float) -> None:
        """Submit one no-op and block until the client holds its result."""
        raise NotImplementedError

    def submit_tree(self, fan: int, top: int, counter: str) -> None:
        raise NotImplementedError

    def submit_mark(self, key: str, seconds: float) -> None:
        raise NotImplementedError

    def purge(self) -> None:
        raise NotImplementedError

    def used_memory(self) -> int:
        return int(self.r.info("memory")["used_memory"])


class CeleryPeer(Peer):
    name = "celery"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        os.environ["BENCH_REDIS_URL"] = self.url
        from bench.peers import celery_app
        self.m = celery_app

    def worker_argv(self, index: int) -> list[str]:
        return [str(VENV_BIN / "celery"), "-A", "bench.peers.celery_app", "worker", "-c", str(self.processes_per_pod()),
                "-n", f"w{index}@%h", "--prefetch-multiplier", "1"]

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            self._check_alive()
            return len(self.m.app.control.ping(timeout=1.0) or []) >= len(self.workers)
        wait_for(ready, timeout, "celery workers answering ping")

    def submit_noop(self, n: int) -> list[Any]:
        return [self.m.noop.apply_async().id for _ in range(n)]

    def submit_sleep(self, n: int, ms: float) -> list[Any]:
        return [self.m.sleep.apply_async((ms,)).id for _ in range(n)]

    def poll(self, handles: list[Any]) -> list[float | None]:
        pipe = self.r.pipeline(transaction=False)
        for h in handles:
            pipe.get(f"celery-task-meta-{h}")
        out: list[float | None] = []
        for raw in pipe.execute():
            if raw is None:
                out.append(None)
                continue
            meta = json.loads(raw)
            out.append(float(meta["result"]) if meta.get("status") == "SUCCESS" else float("nan"))
        return out

    def one_roundtrip(self, timeout: float) -> None:
        self.m.noop.apply_async().get(timeout=timeout)

    def submit_tree(self, fan: int, top: int, counter: str) -> None:
        self.m.tree.delay(0, fan, top, counter)

    def submit_mark(self, key: str, seconds: float) -> None:
        self.m.mark_sleep.delay(key, seconds)

    def purge(self) -> None:
        self.m.app.control.purge()


class DramatiqPeer(Peer):
    name = "dramatiq"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        os.environ["BENCH_REDIS_URL"] = self.url
        from bench.peers import dramatiq_actors
        self.m = dramatiq_actors

    def worker_argv(self, index: int) -> list[str]:
        return [str(VENV_BIN / "dramatiq"), "bench.peers.dramatiq_actors", "--processes", str(self.processes_per_pod()),
                "--threads", str(self.threads)]

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            self._check_alive()
            return all(self._log_lines(n, "Worker process is ready for action.") >= self.processes_per_pod()
                       for n in self.workers)
        wait_for(ready, timeout, "dramatiq worker processes ready")

    def submit_noop(self, n: int) -> list[Any]:
        return [self.m.noop.send() for _ in range(n)]

    def submit_sleep(self, n: int, ms: float) -> list[Any]:
        return [self.m.sleep.send(ms) for _ in range(n)]

    def poll(self, handles: list[Any]) -> list[float | None]:
        pipe = self.r.pipeline(transaction=False)
        for msg in handles:
            pipe.lindex(self.m.backend.build_message_key(msg), 0)
        out: list[float | None] = []
        for raw in pipe.execute():
            if raw is None:
                out.append(None)
                continue
            value = json.loads(raw)
            out.append(float(value) if isinstance(value, (int, float)) else float("nan"))
        return out

    def one_roundtrip(self, timeout: float) -> None:
        self.m.noop.send().get_result(block=True, timeout=int(timeout * 1000))

    def submit_tree(self, fan: int, top: int, counter: str) -> None:
        self.m.tree.send(0, fan, top, counter)

    def submit_mark(self, key: str, seconds: float) -> None:
        self.m.mark_sleep.send(key, seconds)

    def purge(self) -> None:
        self.m.broker.flush_all()


class RqPeer(Peer):
    name = "rq"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        os.environ["BENCH_REDIS_URL"] = self.url
        from rq import Queue

        from bench.peers import rq_funcs
        self.Queue = Queue
        self.m = rq_funcs
        self.q = Queue("default", connection=self.r)

    def processes_per_pod(self) -> int:
        return 1

    def start_workers(self) -> None:
        # RQ's worker runs one job at a time: one `rq worker` process per slot.
        for i in range(self.slots):
            self.start_worker(f"w{i + 1}", i + 1)
        self.wait_ready()

    def worker_argv(self, index: int) -> list[str]:
        return [str(VENV_BIN / "rq"), "worker", "-u", self.url, "--name", f"bench-w{index}-{uuid.uuid4().hex[:6]}",
                "default"]

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            self._check_alive()
            return all(self._log_lines(n, "Listening on") >= 1 for n in self.workers)
        wait_for(ready, timeout, "rq workers listening")

    def _enqueue(self, fn: Any, args: tuple, n: int) -> list[Any]:
        ids: list[str] = []
        for i in range(0, n, 1000):
            jobs = self.q.enqueue_many([self.Queue.prepare_data(fn, args) for _ in range(min(1000, n - i))])
            ids += [j.id for j in jobs]
        return ids

    def submit_noop(self, n: int) -> list[Any]:
        return self._enqueue(self.m.noop, (), n)

    def submit_sleep(self, n: int, ms: float) -> list[Any]:
        return self._enqueue(self.m.sleep, (ms,), n)

    def poll(self, handles: list[Any]) -> list[float | None]:
        pipe = self.r.pipeline(transaction=False)
        for h in handles:
            pipe.hmget(f"rq:job:{h}", "status", "started_at")
        out: list[float | None] = []
        for status, started in pipe.execute():
            status = (status or b"").decode()
            if status == "finished":
                out.append(datetime.strptime(started.decode(), "%Y-%m-%dT%H:%M:%S.%fZ")
                           .replace(tzinfo=UTC).timestamp())
            elif status in ("failed", "stopped", "canceled"):
                out.append(float("nan"))
            else:
                out.append(None)
        return out

    def one_roundtrip(self, timeout: float) -> None:
        job = self.q.enqueue(self.m.noop)
        if job.latest_result(timeout=int(max(1, timeout))) is None:
            raise BenchError("rq: no result in time")

    def submit_tree(self, fan: int, top: int, counter: str) -> None:
        self.q.enqueue(self.m.tree, 0, fan, top, counter)

    def submit_mark(self, key: str, seconds: float) -> None:
        self.q.enqueue(self.m.mark_sleep, key, seconds)

    def purge(self) -> None:
        self.q.empty()


PEERS = {"celery": CeleryPeer, "dramatiq": DramatiqPeer, "rq": RqPeer}


# --- workloads -----------------------------------------------------------------------------------
def wait_all(peer: Peer, handles: list[Any], timeout: float) -> tuple[float, float, int]:
    """Until every handle has its result: (when the driver saw the last one, the first start, failures).
    Results are polled oldest first, a chunk at a time; a chunk found complete moves on at once."""
    deadline = time.monotonic() + timeout
    pending = deque(handles)
    first_start, failed = float("inf"), 0
    while pending:
        chunk = [pending.popleft() for _ in range(min(200, len(pending)))]
        starts = peer.poll(chunk)
        missing = [h for h, s in zip(chunk, starts) if s is None]
        for s in starts:
            if s is not None:
                if s != s:  # nan: the task failed
                    failed += 1
                else:
                    first_start = min(first_start, s)
        if missing:
            pending.extendleft(reversed(missing))
            if time.monotonic() > deadline:
                raise BenchError(f"{peer.name}: {len(pending)} of {len(handles)} results missing after {timeout:.0f} s")
            time.sleep(POLL_S)
    return time.time(), first_start, failed


def probe_rate(peer: Peer, n: int = 300) -> float:
    """Untimed warm-up that also estimates the drain rate (tasks/s), to size runs to the time budget."""
    if peer.probe is None:
        handles = peer.submit_noop(n)
        done_at, first_start, _ = wait_all(peer, handles, timeout=max(120.0, n / 5.0))
        peer.probe = n / max(1e-3, done_at - first_start)
        log(f"{peer.name}: warm-up of {n} no-op tasks, ~{peer.probe:.0f}/s")
    return peer.probe


def sized(peer: Peer, n: int, per_task_s: float, max_rep_s: float) -> int:
    """n, or fewer so that one repetition fits `max_rep_s` at the warm-up's rate (slow peers only)."""
    rate = 1.0 / max(1.0 / probe_rate(peer), per_task_s)
    if n / rate <= max_rep_s:
        return n
    return max(300, int(rate * max_rep_s) // 100 * 100)


def throughput(peer: Peer, n: int, reps: int, sleep_ms: float | None, max_rep_s: float) -> dict[str, Any]:
    submit_rates, drain_rates, retained, failures = [], [], [], []
    requested = n
    probe_rate(peer, min(300, max(100, n // 5)))
    n = sized(peer, n, 0.0 if sleep_ms is None else sleep_ms / 1000.0 / peer.slots, max_rep_s)
    if n != requested:
        log(f"{peer.name}: {n} tasks per repetition instead of {requested} (time budget {max_rep_s:.0f} s)")
    for rep in range(reps):
        mem0 = peer.used_memory()
        peer.stop_workers()  # the queue fills first: the drain is not bounded by one-by-one submission
        t0 = time.time()
        handles = peer.submit_noop(n) if sleep_ms is None else peer.submit_sleep(n, sleep_ms)
        t1 = time.time()
        peer.start_workers()
        done_at, first_start, failed = wait_all(peer, handles, timeout=max(120.0, n / 20.0))
        submit_rates.append(n / (t1 - t0))
        drain_rates.append(n / (done_at - first_start))
        retained.append((peer.used_memory() - mem0) / n)
        failures.append(failed)
        log(f"{peer.name} {'noop' if sleep_ms is None else f'sleep {sleep_ms:g} ms'} rep {rep + 1}: "
            f"submit {submit_rates[-1]:.0f}/s, drain {drain_rates[-1]:.0f}/s, failed {failed}")
    out = {"tasks": n, "tasks_requested": requested,
           "submit_rate": summary(submit_rates, "tasks/s", "higher"),
           "drain_rate": summary(drain_rates, "tasks/s", "higher", "first start -> last result seen by the driver"),
           "retained_bytes_per_task": summary(retained, "bytes", "lower",
                                              "Redis used_memory growth per task after the run (results kept until their TTL)"),
           "checks": {"failed": failures, "ok": all(f == 0 for f in failures)}}
    return out


def latency(peer: Peer, n: int, reps: int) -> dict[str, Any]:
    p50s, p99s = [], []
    for _ in range(10):  # untimed: connections and result listeners set up
        peer.one_roundtrip(timeout=30)
    for rep in range(reps):
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            peer.one_roundtrip(timeout=30)
            lat.append((time.perf_counter() - t0) * 1000)
        p50s.append(percentile(lat, 50))
        p99s.append(percentile(lat, 99))
        log(f"{peer.name} latency rep {rep + 1}: p50 {p50s[-1]:.1f} ms, p99 {p99s[-1]:.1f} ms")
    return {"result_p50": summary(p50s, "ms", "lower", "submit -> result held by the client"),
            "result_p99": summary(p99s, "ms", "lower", "submit -> result held by the client")}


def fanout(peer: Peer, fan: int, depth: int, reps: int, max_rep_s: float) -> dict[str, Any]:
    requested = depth
    while depth > 2 and sum(fan ** d for d in range(depth + 1)) / probe_rate(peer) > max_rep_s:
        depth -= 1
    total = sum(fan ** d for d in range(depth + 1))
    if depth != requested:
        log(f"{peer.name}: fan-out tree of depth {depth} ({total} tasks) instead of {requested} (time budget)")
    times = []
    for rep in range(reps):
        counter = f"bench:tree:{uuid.uuid4().hex}"
        t0 = time.time()
        peer.submit_tree(fan, depth, counter)
        wait_for(lambda: int(peer.r.get(counter) or 0) >= total, max(120.0, total / 20.0),
                 f"{peer.name} fan-out: {total} tasks counted", interval=POLL_S)
        times.append(time.time() - t0)
        log(f"{peer.name} fan-out rep {rep + 1}: {total} tasks in {times[-1]:.2f} s")
    return {"tasks": total, "depth": depth, "depth_requested": requested,
            "time_to_done": summary(times, "s", "lower", "emulated: no job completion; tasks count themselves "
                                    "with INCR and the driver waits for the tree size it knows in advance"),
            "rate": summary([total / t for t in times], "tasks/s", "higher")}


def scale(peer: Peer, n: int) -> dict[str, Any]:
    """Workers must not be running: tasks stay queued."""
    peer.purge()
    base = peer.used_memory()
    peer.submit_noop(n)
    queued = peer.used_memory()
    peer.purge()
    after = peer.used_memory()
    per = (queued - base) / n
    log(f"{peer.name} scale: {per:.0f} bytes per queued task ({n} queued), purge leaves {after - base:+d} bytes")
    return {"tasks": n, "baseline_bytes": base, "queued_bytes": queued, "after_purge_bytes": after,
            "bytes_per_live_task": summary([per], "bytes", "lower", f"{n} tasks queued, no worker running")}


def recovery(peer: Peer, reps: int, cap_s: float, task_s: float) -> dict[str, Any]:
    times: list[float | None] = []
    notes = []
    for rep in range(reps):
        key = f"bench:runs:{uuid.uuid4().hex}"
        peer.submit_mark(key, task_s)
        first = wait_for(lambda: peer.r.lindex(key, 0), 30, f"{peer.name}: the 5 s task started")
        pid = int(first.split()[0])
        roots = {name: proc.pid for name, proc in peer.workers.items()}
        victim = pid_of_tree_containing(pid, roots)
        if victim is None:
            raise BenchError(f"{peer.name}: pid {pid} running the task belongs to no worker we started")
        t_kill = time.time()
        kill_tree(roots[victim], signal.SIGKILL)
        peer.workers[victim].wait(10)
        index = int(victim.lstrip("w"))
        peer.start_worker(victim, index)  # restarted at once, as Kubernetes (or taskherd's `up`) would
        deadline = time.monotonic() + cap_s
        again = None
        while time.monotonic() < deadline:
            if peer.r.llen(key) >= 2:
                again = float(peer.r.lindex(key, 1).split()[1]) - t_kill
                break
            time.sleep(0.1)
        times.append(again)
        log(f"{peer.name} recovery rep {rep + 1}: " + (f"ran again after {again:.1f} s" if again is not None
                                                       else f"not run again within {cap_s:.0f} s"))
        notes.append(f"worker {victim} (pid tree of {roots[victim]}) killed; task pid {pid}")
    out = {"time_to_rerun": summary(times, "s", "lower", f"capped at {cap_s:.0f} s (null: not re-run within the cap)"),
           "cap_s": cap_s, "notes": notes}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", choices=sorted(PEERS), required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--pods", type=int, default=2)
    ap.add_argument("--layout", choices=("equal", "best"), default="equal",
                    help="equal: taskherd's SLOTS processes x 1 in PODS workers; best: the peer's own recommended "
                         "layout for this machine's cores (one worker; Celery prefork -c cores, Dramatiq "
                         "--processes cores --threads THREADS, RQ one worker per core)")
    ap.add_argument("--threads", type=int, default=8, help="Dramatiq's threads per process in the best layout "
                                                          "(8: its default)")
    ap.add_argument("--workloads", default="scale,noop,latency,sleep10,fanout")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-noop", type=int, default=20_000)
    ap.add_argument("--n-latency", type=int, default=500)
    ap.add_argument("--n-sleep", type=int, default=2_000)
    ap.add_argument("--fan", type=int, default=10)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--n-scale", type=int, default=20_000)
    ap.add_argument("--recovery-cap", type=float, default=60.0)
    ap.add_argument("--task-s", type=float, default=5.0)
    ap.add_argument("--max-rep-s", type=float, default=90.0,
                    help="a slower peer gets fewer tasks per repetition so one fits this budget")
    ap.add_argument("--logdir", default=str(Path(tempfile.gettempdir()) / "taskherd-bench-driver"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    best_threads = args.threads if args.system == "dramatiq" else 1  # only Dramatiq runs threads
    slots, pods, threads = (args.slots, args.pods, 1) if args.layout == "equal" else (cores, 1, best_threads)
    peer = PEERS[args.system](f"redis://127.0.0.1:{args.redis_port}/0", slots, pods, logdir, threads)
    layout = (f"{slots} worker processes x {threads} thread(s)" if args.system == "dramatiq"
              else f"{slots} worker processes x 1")
    results: dict[str, Any] = {"system": args.system, "layout": args.layout, "layout_text": layout,
                               "workloads": {}, "errors": {}}
    workloads = [w for w in args.workloads.split(",") if w]
    try:
        if "scale" in workloads:
            results["workloads"]["scale"] = scale(peer, args.n_scale)
        rest = [w for w in workloads if w != "scale"]
        if rest:
            peer.start_workers()
        for w in rest:
            log(f"{peer.name}: {w}")
            try:
                if w == "noop":
                    results["workloads"][w] = throughput(peer, args.n_noop, args.reps, None, args.max_rep_s)
                elif w == "sleep10":
                    res = throughput(peer, args.n_sleep, args.reps, 10.0, args.max_rep_s)
                    ideal = slots * threads * 100.0
                    res["ideal_rate"] = ideal
                    res["of_ideal"] = summary([r / ideal for r in res["drain_rate"]["values"]], "fraction", "higher")
                    results["workloads"][w] = res
                elif w == "latency":
                    results["workloads"][w] = latency(peer, args.n_latency, args.reps)
                elif w == "fanout":
                    results["workloads"][w] = fanout(peer, args.fan, args.depth, args.reps, args.max_rep_s)
                elif w == "recovery":
                    results["workloads"][w] = recovery(peer, args.reps, args.recovery_cap, args.task_s)
                else:
                    raise BenchError(f"unknown workload {w!r}")
            except BenchError as exc:
                log(f"{peer.name} {w}: {exc}")
                results["errors"][w] = str(exc)
                peer.purge()
    except KeyboardInterrupt as exc:
        results["errors"]["interrupted"] = str(exc)
    finally:
        peer.stop_workers()
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
