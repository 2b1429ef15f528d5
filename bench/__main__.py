"""`python -m bench [--quick] [--only WORKLOAD[,WORKLOAD]] [--reps 3] [--systems taskherd,celery,dramatiq,rq]`

Runs issue 6's workloads against a taskherd cluster started here and against Celery, Dramatiq and RQ
(in the bench-only venv bench/.peers-venv, each against a redis-server of its own), with the same
number of worker processes; prints a table and writes bench/results/<timestamp>.json and
bench/results/latest.json (+ latest.md). See bench/README.md for the method.

Order of a run: taskherd's no-op, latency, 10 ms and fan-out workloads; then the peers' recovery
trials start in the background (they mostly wait for a capped 60 s each) while taskherd's scale-of-state
and recovery workloads run; then the cluster stops and the peers run their other workloads one at a
time on an otherwise quiet machine. Every process started is stopped at the end, on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS,
    ROOT,
    BenchError,
    RedisServer,
    command_output,
    dump_json,
    log,
    reap_leftovers,
    record_pid,
    stop_proc,
)

WORKLOADS = ("noop", "latency", "sleep10", "fanout", "scale", "recovery")
PRIO_LIMITS = ("noop_prio", "noop_limits")
# Each peer runs in taskherd's layout ("equal") and in its own recommended one for this machine's cores
# ("best", one worker: Celery prefork -c cores; Dramatiq --processes cores with its default 8 threads; RQ one
# worker per core), both on AOF everysec (taskherd's own Redis: always); then its best layout without
# persistence, as its users usually run it. taskherd runs its best layout twice: on its own Redis
# (always) and on the peers' persistence (everysec, "taskherd best everysec"), as issue 18 asks.
LAYOUTS = (("", "equal", True), (" best", "best", True), (" best no-AOF", "best", False))
NO_AOF_WORKLOADS = ("noop", "latency")
"""taskherd only, with `--prio-limits` (or named in --only): the no-op drain again with the tasks at
mixed priorities (0-9 in turn: every priority's topic in use), and of a type whose rate and concurrency
limits are so high they never bind (the limit script runs for every start): their cost against noop."""
PEERS = ("celery", "dramatiq", "rq")
PEER_PORTS = {"celery": 19380, "dramatiq": 19381, "rq": 19382}

FULL = {"noop": 20_000, "latency": 500, "sleep": 2_000, "fan": 10, "depth": 4, "scale": 200_000,
        "peer_scale": 10_000, "cap": 60.0, "task_s": 5.0, "max_rep_s": 30.0, "scale_timeout": 2400.0}
QUICK = {"noop": 1_500, "latency": 50, "sleep": 400, "fan": 10, "depth": 2, "scale": 2_000,
         "peer_scale": 500, "cap": 10.0, "task_s": 5.0, "max_rep_s": 6.0, "scale_timeout": 300.0}

BEST_SLOTS = 4
"""taskherd at its best for the no-op drain and the latency ("taskherd best", beside the equal layout):
one worker pod per core, 4 slots each. Measured 2026-12-06 on 2 cores, no-op drain, 2 runs each (tasks/s):
2 x 4 1,587-1,753; 4 x 4 1,604-1,637; 1 x 8 1,411-1,668; 2 x 8 1,506-1,628; 2 x 2 1,229-1,375; 4 x 1
1,178-1,362; 3 x 1 1,113-1,232; then 3 interleaved pairs, 2 x 4 ahead in each (1,390 / 1,187 / 1,659
against 1,351 / 963 / 1,565). More slots keep more tasks in flight, and Redis fsyncs their writes
together. Not in the full run of 2026-12-07 00:45 (1,231 against 1,336; it ran first, its first
repetition the slowest). The 10 ms tasks keep the equal layout (4 x 1: 89-92 % of ideal; 2 x 4: 80 %,
its slots sharing a GIL)."""
WORKER_PODS, SLOTS_PER_POD = 4, 1
"""Every system gets the same layout: 4 worker processes (taskherd pods; Celery workers, Dramatiq
workers, each with one pool process) running one task at a time each. One slot per taskherd pod, as
each peer pool process is single-threaded: slots of one pod share its GIL (measured with 2 pods x 2
slots on the 10 ms workload: 84-88 % of ideal against 90-91 % with 4 x 1; `--workers 2 --slots 2`)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small N, 1 repetition, 10 s recovery cap (a smoke run)")
    ap.add_argument("--only", default="", help=f"comma-separated workloads among {', '.join(WORKLOADS)}")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 3; 1 with --quick)")
    ap.add_argument("--systems", default="taskherd," + ",".join(PEERS))
    ap.add_argument("--workers", type=int, default=WORKER_PODS, help="taskherd worker pods")
    ap.add_argument("--slots", type=int, default=SLOTS_PER_POD, help="slots per taskherd worker pod")
    ap.add_argument("--scale-n", type=int, default=None,
                    help="tasks of taskherd's scale-of-state job (default 200,000; 2,000 with --quick)")
    ap.add_argument("--keep", action="store_true", help="keep the services' data dir after the run")
    ap.add_argument("--prio-limits", action="store_true",
                    help=f"taskherd: also {' and '.join(PRIO_LIMITS)}, the no-op drain at mixed priorities and "
                         "with limits that never bind, to set against noop")
    args = ap.parse_args(argv)

    cfg = dict(QUICK if args.quick else FULL)
    if args.scale_n:
        cfg["scale"] = args.scale_n
    reps = args.reps or (1 if args.quick else 3)
    workloads = [w for w in (args.only.split(",") if args.only else WORKLOADS) if w]
    workloads += [w for w in PRIO_LIMITS if args.prio_limits and w not in workloads]
    unknown = set(workloads) - set(WORKLOADS) - set(PRIO_LIMITS)
    systems = [s for s in args.systems.split(",") if s]
    if unknown or set(systems) - {"taskherd", *PEERS}:
        ap.error(f"unknown workload(s) {sorted(unknown)} or system(s) in {systems}")
    total_slots = args.workers * args.slots

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started with SIGINT ignored (a background job)
    RESULTS.mkdir(parents=True, exist_ok=True)
    left = reap_leftovers()
    if left:
        log(f"ended processes an earlier run left behind: {', '.join(left)}")

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(tempfile.gettempdir()) / f"taskherd-bench-{stamp}"
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict[str, Any] = {
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick, "reps": reps, "workloads": workloads, "systems": systems,
        "machine": machine(), "versions": {}, "configuration": {}, "results": {}, "errors": {},
        "logs": str(logs), "load": {"start": os.getloadavg()},
    }
    log(f"bench: {'quick' if args.quick else 'full-size'} run, {reps} repetition(s), workloads {','.join(workloads)}, "
        f"systems {','.join(systems)}; taskherd: 1 manager + {args.workers} worker pods x {args.slots} slots = "
        f"{total_slots} slots; each peer: {total_slots} worker processes; load average {os.getloadavg()}")
    log(f"bench: logs in {logs}")

    peers = [p for p in systems if p in PEERS]
    redises: dict[str, RedisServer] = {}
    recovery_drivers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        peer_python = None
        if peers:
            from bench import peers_env
            peer_python = peers_env.ensure()
            report["versions"]["peers"] = peers_env.versions()
            for p in peers:
                redises[p] = RedisServer(PEER_PORTS[p], run_dir / f"redis-{p}").start()
        report["versions"] |= versions()
        report["configuration"] = configuration(cfg, reps, args.workers, args.slots, peers)

        def launch_peer_recovery() -> None:
            if "recovery" not in workloads:
                return
            for p in peers:
                out = run_dir / f"{p}-recovery.json"
                recovery_drivers[p] = (driver(peer_python, p, ["recovery"], cfg, reps, total_slots, args.workers,
                                              out, logs, "recovery"), out)
            log(f"bench: peers' recovery trials started in the background ({', '.join(peers)})")

        if "taskherd" in systems:
            best = (os.cpu_count() or 2, BEST_SLOTS)
            layouts = [("taskherd", (args.workers, args.slots), workloads, "always")]
            if (args.workers, args.slots) == (WORKER_PODS, SLOTS_PER_POD) != best:
                # first: the equal layout's run starts the peers' recovery trials in the background
                its_best = [w for w in workloads if w in NO_AOF_WORKLOADS]
                layouts[:0] = [("taskherd best", best, its_best, "always"),
                               ("taskherd best everysec", best, its_best, "everysec")]
            for name, (workers, slots), todo, fsync in layouts:
                if not todo:
                    continue
                try:
                    run_taskherd(name, workers, slots, todo, cfg, reps, run_dir, logs, report, launch_peer_recovery,
                                 fsync)
                except Exception as exc:
                    report["errors"][name] = f"{type(exc).__name__}: {exc}"
                    log(f"bench: {name} failed ({type(exc).__name__}: {exc}); see {logs / 'taskherd-cluster.log'}")
            report["configuration"]["taskherd_layout"] = "; ".join(
                f"{name}: {w} worker pods x {s} slot(s), Redis appendfsync {f}" for name, (w, s), todo, f in layouts
                if todo)
        if not recovery_drivers:
            launch_peer_recovery()

        for p, (proc, out) in recovery_drivers.items():
            budget = reps * (cfg["cap"] + cfg["task_s"] + 60) + 120
            report["results"].setdefault(p, {}).update(collect(p, proc, out, budget, report, "recovery"))
        recovery_drivers.clear()

        rest = [w for w in workloads if w != "recovery"]
        for p in peers:
            for key, layout, aof in LAYOUTS:
                todo = (rest if not key else [w for w in rest if w != "scale"]) if aof \
                    else [w for w in rest if w in NO_AOF_WORKLOADS]
                if not todo:
                    continue
                name = p + key
                if not aof and redises[p].appendfsync:  # what the peers' users usually run: no persistence
                    redises[p].stop()
                    redises[p] = RedisServer(PEER_PORTS[p], run_dir / f"redis-{p}-noaof", appendfsync=None).start()
                out = run_dir / f"{p}{key.replace(' ', '-')}.json"
                log(f"bench: {name}: {', '.join(todo)}")
                label = "workloads" + key.replace(" ", "-")
                proc = driver(peer_python, p, todo, cfg, reps, total_slots, args.workers, out, logs, label, layout)
                budget = 600 + reps * len(todo) * (cfg["max_rep_s"] * 2 + 60)
                report["results"].setdefault(name, {}).update(collect(p, proc, out, budget, report, label))
                report["configuration"].setdefault("peer_layouts", {})[name] = _layout_text(out)
    except KeyboardInterrupt as exc:
        report["errors"]["interrupted"] = str(exc) or "Ctrl-C"
        log("bench: interrupted; stopping everything")
    except BenchError as exc:
        report["errors"]["bench"] = str(exc)
        log(f"bench: {exc}")
    finally:
        for proc, _ in recovery_drivers.values():
            stop_proc(proc, 20)
        for server in redises.values():
            server.stop()
        if not args.keep:
            for sub in run_dir.iterdir():
                if sub.is_dir() and sub.name != "logs":
                    shutil.rmtree(sub, ignore_errors=True)
        (RESULTS / "processes.tmp").unlink(missing_ok=True)

    report["load"]["end"] = os.getloadavg()
    report["duration_s"] = round(time.time() - started, 1)
    from bench.report import markdown_table, text_table, update_readme
    table = text_table(report)
    print(table)
    md = markdown_table(report)
    path = RESULTS / f"{stamp}.json"
    dump_json(path, report)
    complete = (not args.quick and not args.only and set(systems) == {"taskherd", *PEERS}
                and not report["errors"])
    if complete:  # latest.* is the last full-size run of every workload on every system without an error
        dump_json(RESULTS / "latest.json", report)
        (RESULTS / "latest.md").write_text(md)
    log(f"bench: done in {report['duration_s']:.0f} s; results in {path}"
        + (f" and {RESULTS / 'latest.json'}" if complete else ""))
    if complete:
        update_readme(md)
    return 1 if report["errors"] else 0


def run_taskherd(system: str, workers: int, slots: int, workloads: list[str], cfg: dict[str, Any], reps: int,
                 run_dir: Path, logs: Path, report: dict[str, Any], launch_peer_recovery: Any,
                 fsync: str = "always") -> dict[str, Any]:
    """`workloads` on a taskherd cluster of `workers` pods x `slots`, its Redis fsyncing as `fsync` says
    (taskherd's own: always; everysec: the peers' persistence); figures under `system` in the report."""
    from bench.taskherd_runs import Taskherd

    results: dict[str, Any] = report["results"].setdefault(system, {})  # partial figures survive an error
    with (logs / "taskherd-cluster.log").open("a") as out, \
            Taskherd(workers, slots, run_dir / system.replace(" ", "-"), out, fsync) as th:
        report["configuration"]["taskherd_settings"] = th.settings.model_dump()
        th.warm_up()

        def attempt(name: str, fn: Any) -> None:
            if name not in workloads:
                return
            log(f"bench: {system}: {name} (load average {os.getloadavg()[0]:.2f})")
            results[name] = {}
            try:
                results[name] = fn(results[name])
                results[name]["load_average"] = os.getloadavg()
            except BenchError as exc:
                log(f"bench: {system} {name}: {exc}")
                report["errors"][f"{system}.{name}"] = str(exc)

        attempt("noop", lambda _: th.throughput("noop", cfg["noop"], reps))
        attempt("noop_prio", lambda _: th.throughput("noop", cfg["noop"], reps, priorities=True))
        attempt("noop_limits", lambda _: th.throughput("noop_limited", cfg["noop"], reps))
        attempt("latency", lambda _: th.latency(cfg["latency"], reps))
        attempt("sleep10", lambda _: _sleep10(th, cfg, reps, workers * slots))
        attempt("fanout", lambda _: th.fanout(cfg["fan"], cfg["depth"], reps))
        if "recovery" in workloads:
            launch_peer_recovery()
        attempt("scale", lambda partial: th.scale(cfg["scale"], cfg["scale_timeout"], partial))
        attempt("recovery", lambda _: th.recovery(reps, cfg["cap"], cfg["task_s"]))
        restarts = {p.name: p.restarts for p in th.cluster.pods} if th.cluster else {}
        report["configuration"].setdefault("taskherd_pod_restarts", {})[system] = restarts
    return results


def _sleep10(th: Any, cfg: dict[str, Any], reps: int, slots: int) -> dict[str, Any]:
    from bench.common import summary

    res = th.throughput("sleep", cfg["sleep"], reps)
    ideal = slots * 100.0
    res["ideal_rate"] = ideal
    res["of_ideal"] = summary([r / ideal for r in res["drain_rate"]["values"]], "fraction", "higher")
    return res


def _layout_text(out: Path) -> str:
    try:
        return str(json.loads(out.read_text()).get("layout_text", ""))
    except (OSError, ValueError):
        return ""


def driver(python: Path | None, system: str, workloads: list[str], cfg: dict[str, Any], reps: int, slots: int,
           pods: int, out: Path, logs: Path, label: str, layout: str = "equal") -> subprocess.Popen[bytes]:
    if python is None:
        raise BenchError("the peers' venv is missing")
    argv = [str(python), "-m", "bench.peers.driver", "--system", system, "--redis-port", str(PEER_PORTS[system]),
            "--slots", str(slots), "--pods", str(pods), "--layout", layout, "--workloads", ",".join(workloads),
            "--reps", str(reps),
            "--n-noop", str(cfg["noop"]), "--n-latency", str(cfg["latency"]), "--n-sleep", str(cfg["sleep"]),
            "--fan", str(cfg["fan"]), "--depth", str(cfg["depth"]), "--n-scale", str(cfg["peer_scale"]),
            "--recovery-cap", str(cfg["cap"]), "--task-s", str(cfg["task_s"]), "--max-rep-s", str(cfg["max_rep_s"]),
            "--logdir", str(logs), "--out", str(out)]
    errlog = (logs / f"{system}-{label}-driver.log").open("ab")
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=errlog, stderr=subprocess.STDOUT,
                            start_new_session=True)
    errlog.close()
    record_pid(proc.pid, f"{system} driver")
    return proc


def collect(system: str, proc: subprocess.Popen[bytes], out: Path, budget_s: float,
            report: dict[str, Any], label: str) -> dict[str, Any]:
    """Wait for a driver (bounded), relay its progress lines, and return its workloads' results."""
    deadline = time.monotonic() + budget_s
    logfile = Path(report["logs"]) / f"{system}-{label}-driver.log"
    seen = 0
    while proc.poll() is None and time.monotonic() < deadline:
        seen = _relay(logfile, seen)
        time.sleep(0.5)
    _relay(logfile, seen)
    if proc.poll() is None:
        log(f"bench: {system}: driver still running after {budget_s:.0f} s; stopping it")
        report["errors"][f"{system}.timeout"] = f"driver stopped after {budget_s:.0f} s"
        stop_proc(proc, 30)
    if not out.exists():
        report["errors"][system] = f"driver exited {proc.returncode} without results; see {logfile}"
        return {}
    data = json.loads(out.read_text())
    for w, e in data.get("errors", {}).items():
        report["errors"][f"{system}.{w}"] = e
    return data.get("workloads", {})


def _relay(path: Path, seen: int) -> int:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return seen
    lines = text.splitlines()
    for line in lines[seen:]:
        if line[:2].isdigit() and line[2:3] == ":":  # the driver's own progress lines (timestamped)
            print(line, file=sys.stderr, flush=True)
    return len(lines)


def machine() -> dict[str, Any]:
    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    return {"cpu_model": model, "cores_logical": psutil.cpu_count(), "cores_physical": psutil.cpu_count(logical=False),
            "ram_gb": round(psutil.virtual_memory().total / 2 ** 30, 1), "os": platform.platform(),
            "hostname": platform.node()}


def versions() -> dict[str, Any]:
    import importlib.metadata

    from taskherd.deploy.local import binaries

    def find(name: str) -> str:
        try:
            return binaries.find(name)
        except Exception:
            return name

    git = command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"python": sys.version.split()[0], "taskherd": importlib.metadata.version("taskherd"),
            "taskherd_git": git + (" (with uncommitted changes)" if dirty else ""),
            "redis-server": command_output([find("redis-server"), "--version"]),
            "mariadb": command_output([find("mariadbd"), "--version"]),
            "nsqd": command_output([find("nsqd"), "--version"])}


def configuration(cfg: dict[str, Any], reps: int, workers: int, slots: int, peers: list[str]) -> dict[str, Any]:
    total = workers * slots
    return {
        "taskherd": f"1 manager pod + {workers} worker pods x {slots} slots = {total} slots; default settings "
                    "except ports (+3000) and database name; Redis AOF appendfsync always, "
                    "nsqd with its default in-memory queues",
        "celery": f"{workers} workers x -c {slots} (prefork), acks_late=True, worker_prefetch_multiplier=1, "
                  "Redis broker and result backend, defaults otherwise (visibility_timeout 1 h)",
        "dramatiq": f"{workers} workers x --processes {slots} --threads 1, RedisBroker + Results(RedisBackend), "
                    "defaults otherwise (heartbeat timeout 60 s)",
        "rq": f"{total} `rq worker` processes (a forked work horse per job, RQ's default Worker), results in Redis",
        "peer_redis": "one redis-server 7 per peer, its own port, --appendonly yes --appendfsync everysec --save ''; "
                      "for the '<peer> best no-AOF' runs --appendonly no",
        "taskherd_layout": f"{workers} worker pods x {slots} slot(s)",
        "total_slots": total, "peers": peers, "reps": reps, "sizes": cfg,
    }


if __name__ == "__main__":
    sys.exit(main())
