"""The retry policy: whether a finished attempt is tried again, and after how long.

The decision is made here, by the worker that ran the attempt, and carried into Redis as a delay:
`finish.lua` moves the task to `retry` with its due time (or to `analyzing` when the outcome is
final), the TimeoutWatcher promotes it to `pending` once due (`promote.lua`), and an expired lease
is requeued without a delay (`requeue.lua`: the worker is gone, not the task's fault). Due times live
in Redis, never in NSQ's memory-only deferred messages, so a retry survives any restart. A dead
letter revived by hand (`task retry`) re-enters through the Intake with fresh attempts.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from taskherd.config.settings import RetrySettings
from taskherd.runners.outcome import Outcome

FINAL = -1
"""The delay that means: no retry, the outcome is final."""


def retry_delay_ms(policy: RetrySettings, outcome: Outcome, attempts: int, max_attempts: int,
                   spec: Mapping[str, Any] | None) -> int:
    """FINAL when the outcome is final; else the backoff before the next attempt (exponential, jittered).

    `attempts` counts this one. An execution we killed (its lease was lost, or it was cancelled,
    which finish.lua records) is retried at once: not the task's fault.
    """
    if outcome.ok or attempts >= max_attempts:
        return FINAL
    if outcome.status == "killed":
        return 0
    if not retryable(outcome, spec):
        return FINAL
    base = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (attempts - 1))
    return int(base * random.uniform(0.5, 1.0) * 1000)


def retryable(outcome: Outcome, spec: Mapping[str, Any] | None) -> bool:
    """A time-out always is; otherwise the runner's view (an exception, a non-zero exit, a 5xx),
    narrowed by the spec's `retry_on` (exception type names, exit codes, HTTP statuses)."""
    retry_on = (spec or {}).get("retry_on")
    if outcome.status == "timeout":
        return True
    if retry_on is None:
        return outcome.retryable
    return outcome.error_type in retry_on or outcome.exit_code in retry_on
