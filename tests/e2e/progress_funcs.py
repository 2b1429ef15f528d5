"""Executors that report progress, for tests/e2e/test_progress.py (imported by the pods' runner children)."""

from __future__ import annotations

import os
import time

import taskherd


def report_then_wait(payload: dict) -> dict:
    """Report a quarter, then run until the file `payload["go"]` exists (at most 60 s)."""
    taskherd.progress(0.25, "a quarter")
    deadline = time.monotonic() + 60
    while not os.path.exists(payload["go"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"went": os.path.exists(payload["go"])}


def tight_loop(payload: dict) -> dict:
    """`payload["n"]` progress calls back to back."""
    n = payload["n"]
    for i in range(n):
        taskherd.progress(i / n, f"step {i}")
    return {"calls": n}
