"""Executors and analyzers the end-to-end tests register (imported by the pods' runner children)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def echo(payload: dict) -> dict:
    return {"echo": payload, "pid": os.getpid()}


def version_a(payload: dict) -> dict:
    return {"version": "a"}


def version_b(payload: dict) -> dict:
    return {"version": "b"}


def boom(payload: dict) -> dict:
    raise ValueError(f"boom on {payload.get('n')}")


def sleepy(payload: dict) -> dict:
    time.sleep(float(payload.get("sleep_s", 0.05)))
    return {"slept": payload.get("sleep_s")}


def tree(data: dict) -> dict:
    """Analyzer: a task of depth d < max spawns `fan` children without ids (deterministic ids)."""
    p = data["task"]["payload"]
    depth, fan, top = p.get("depth", 0), p.get("fan", 2), p.get("max_depth", 2)
    children = [] if depth >= top else [
        {"payload": {"depth": depth + 1, "fan": fan, "max_depth": top, "i": i}} for i in range(fan)]
    return {"children": children, "record": {"depth": depth, "from": data["task"]["id"]}}


def twice(data: dict) -> dict:
    """Analyzer: names the same child twice; the second must be a no-op."""
    if data["task"]["payload"].get("leaf"):
        return {"record": {"leaf": True}}
    child = {"id": "the-child", "payload": {"leaf": True}}
    return {"children": [child, child], "record": {"leaf": False}}


def bad_analyzer(data: dict) -> dict:
    raise RuntimeError("analyzer exploded")


def marker_sleep(payload: dict) -> dict:
    """Sleeps with a marker in its process title argv-visible via an env-free way: writes its pid."""
    import pathlib

    pathlib.Path(payload["pidfile"]).write_text(str(os.getpid()))
    time.sleep(float(payload.get("sleep_s", 30)))
    return {"slept": True}


def fails_first_analysis(data: dict) -> dict:
    """An analyzer that raises the first time it sees a task (a marker file per task), then records it."""
    marker = Path(data["task"]["payload"]["dir"]) / data["task"]["id"]
    if not marker.exists():
        marker.write_text("analyzed once")
        raise RuntimeError("analyzer failed the first time")
    return {"record": {"analyzed": data["task"]["id"]}}
