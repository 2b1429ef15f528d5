"""Executors the dashboard's browser tests register (imported by the pods' runner children)."""

from __future__ import annotations

import time
from pathlib import Path


def steady(payload: dict) -> dict:
    """A task that takes a moment, so a job of them runs long enough to be watched."""
    time.sleep(float(payload.get("sleep_s", 0.2)))
    return {"n": payload.get("n")}


def fails_until(payload: dict) -> dict:
    """Fails while the file `go` does not exist: a dead letter that a retry then brings home."""
    if not Path(payload["go"]).exists():
        raise RuntimeError(f"{payload['go']} is not there yet")
    return {"went": True}


def two_kids(given: dict) -> dict:
    """Analyzer: a root gets two children (leaves: none)."""
    if given["task"]["payload"].get("leaf"):
        return {"children": [], "record": {"leaf": True}}
    return {"children": [{"id": f"{given['task']['id']}-{n}", "payload": {"leaf": True}} for n in (1, 2)],
            "record": {"leaf": False}}
