"""Executors and analyzers of the fan-in tests (imported by the pods' runner children).

Payload knobs: `fan` (children per root), `grand` (grandchildren per child), `fail_children` (which
children's executors raise), `sleep_s` (an executor's run), `marker` (a file: the root's analyzer
raises once, the first time, having created it), `log` (a file each join execution appends a line
to, so the test counts executions, not rows).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def work(payload: dict) -> dict:
    """Executor of every type but the join's: sleeps if asked, fails if asked."""
    time.sleep(float(payload.get("sleep_s", 0)))
    if payload.get("fail"):
        raise ValueError(f"child {payload.get('i')} fails on purpose")
    return {"i": payload.get("i"), "pid": os.getpid()}


def gather(payload: dict) -> dict:
    """Executor of the join task: logs its execution and returns what it was given."""
    if payload.get("log"):
        with open(payload["log"], "a") as f:
            f.write(f"{time.time()}\n")
    time.sleep(float(payload.get("sleep_s", 0)))
    return {"tag": payload.get("tag"), "children": payload["children"]}


def root(data: dict) -> dict:
    """Analyzer of the root: `fan` children (each told how many grandchildren to spawn) and a join."""
    p = data["task"]["payload"]
    marker = p.get("marker")
    if marker and not Path(marker).exists():
        Path(marker).write_text("failed once")
        raise RuntimeError("the root's analyzer fails on its first call")
    children = [{"type": "mid", "payload": {"i": i, "grand": p.get("grand", 0), "sleep_s": p.get("child_sleep_s", 0),
                                            "fail": i in p.get("fail_children", [])}, "max_attempts": 1}
                for i in range(p.get("fan", 3))]
    join = {"type": "gather", "payload": {"tag": p.get("tag", "t"), "log": p.get("log"),
                                          "sleep_s": p.get("join_sleep_s", 0)}}
    return {"children": children, "join": join, "record": {"root": True}}


def mid(data: dict) -> dict:
    """Analyzer of a child: spawns its grandchildren (no join of its own: they inherit its parent's)."""
    p = data["task"]["payload"]
    grand = [{"type": "leaf", "payload": {"i": p["i"] * 100 + k, "sleep_s": p.get("sleep_s", 0)}}
             for k in range(p.get("grand", 0))]
    return {"children": grand, "record": {"mid": p["i"], "grand": len(grand)}}


def bad_join(data: dict) -> dict:
    """Analyzer returning a malformed join (its payload is a list)."""
    return {"children": [{"type": "mid", "payload": {"i": 0}}], "join": {"type": "gather", "payload": [1]}}
