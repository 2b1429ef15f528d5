"""Executors of the priority and limit tests (imported by the pods' runner children): each call
appends `START END TAG` (wall-clock seconds) to the file its payload names, under an exclusive
flock, so calls in every pod write whole lines and the test computes starts and overlaps."""

from __future__ import annotations

import fcntl
import time


def span(payload: dict) -> dict:
    start = time.time()
    time.sleep(float(payload.get("sleep_s", 0.0)))
    end = time.time()
    with open(payload["log"], "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{start:.6f} {end:.6f} {payload.get('tag', '')}\n")
        fcntl.flock(f, fcntl.LOCK_UN)
    return {"start": start}


def spans(path: str) -> list[tuple[float, float, str]]:
    """The calls recorded in `path`: (start, end, tag), by start."""
    out = []
    for line in open(path).read().splitlines():
        start, end, *tag = line.split(" ")
        out.append((float(start), float(end), tag[0] if tag else ""))
    return sorted(out)


def max_overlap(calls: list[tuple[float, float, str]]) -> int:
    """The most calls running at one moment (an end at the moment of a start does not overlap it)."""
    events = sorted([(s, 1) for s, _, _ in calls] + [(e, -1) for _, e, _ in calls], key=lambda x: (x[0], x[1]))
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def max_starts_in_window(calls: list[tuple[float, float, str]], window_s: float = 1.0) -> int:
    starts = [s for s, _, _ in calls]
    most, lo = 0, 0
    for hi, t in enumerate(starts):
        while t - starts[lo] >= window_s:
            lo += 1
        most = max(most, hi - lo + 1)
    return most
