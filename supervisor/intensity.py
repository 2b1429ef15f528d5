"""Restart intensity: a crash loop must end in escalation, not spin forever in one process."""

from __future__ import annotations

from collections import deque


class RestartIntensity:
    """Sliding window of restart times; more than `max_restarts` within `max_seconds` is too many."""

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts: expected an integer >= 0, got {max_restarts!r}")
        if max_seconds <= 0:
            raise ValueError(f"max_seconds: expected a number > 0, got {max_seconds!r}")
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a restart at `now` (a monotonic time); False once the window holds too many."""
        while self._times and now - self._times[0] > self.max_seconds:
            self._times.popleft()
        self._times.append(now)
        return len(self._times) <= self.max_restarts
