"""Executors and analyzers the benchmark registers with taskherd.

They are imported by the worker pods' runner children (`bench.funcs:noop`), so the pods run with
cwd = the repository root. Kept free of any import but the standard library (and redis-py, which
taskherd's venv has) so the children start fast.
"""

from __future__ import annotations

import os
import time


def noop(payload: dict) -> dict:
    """Returns at once: measures the system, not the work."""
    return {}


def sleep(payload: dict) -> dict:
    """Sleeps `ms` milliseconds (the 10 ms workload)."""
    time.sleep(float(payload.get("ms", 10)) / 1000.0)
    return {}


def mark_sleep(payload: dict) -> dict:
    """Recovery workload: record (pid, start time) of this run in Redis, then sleep `s` seconds.

    The harness reads the runs list to find which process runs the task (to SIGKILL its pod) and when
    the task starts again.
    """
    import redis  # imported here: only this workload needs it

    r = redis.Redis(host="127.0.0.1", port=int(payload["redis_port"]), socket_timeout=5)
    r.rpush(payload["key"], f"{os.getpid()} {time.time():.6f}")
    r.close()
    time.sleep(float(payload.get("s", 5)))
    return {"slept_s": payload.get("s", 5)}


def tree(data: dict) -> dict:
    """Analyzer of the fan-out workload: a task at depth d < max_depth spawns `fan` children (ids are
    derived by taskherd from the parent id and position); every task leaves a small record."""
    p = data["task"]["payload"]
    depth, fan, top = int(p.get("d", 0)), int(p.get("fan", 10)), int(p.get("max", 4))
    children = [] if depth >= top else [{"payload": {"d": depth + 1, "fan": fan, "max": top, "i": i}}
                                        for i in range(fan)]
    return {"children": children, "record": {"d": depth}}


def tree_size(fan: int, max_depth: int) -> int:
    """Tasks in a full tree of the fan-out workload (root at depth 0)."""
    return sum(fan ** d for d in range(max_depth + 1))
