"""The states a task moves through, named once for every Python module (the Lua transitions spell
the same values; tests/unit/test_states.py fails if a script uses a state this enum lacks).

    submit -> pending -lease-> running -> analyzing -analyze-> succeeded | failed | cancelled
      |          ^  ^              | timeout, node lost, retryable failure
      |          |  +--- retry <---+  (attempts left; the due time lives in Redis)
      +-> scheduled  (delay_s / run_at: pending once due; the due time lives in Redis)

A `StrEnum`, so a state compares equal to the text Redis and MySQL store.
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    PENDING = "pending"
    """Waiting for a worker slot to lease it."""
    RUNNING = "running"
    """Leased: one execution holds it under a lease that expires unless renewed."""
    RETRY = "retry"
    """Failed with attempts left; pending again when its backoff is due."""
    SCHEDULED = "scheduled"
    """Submitted with `delay_s` or `run_at`: never leased before that moment; pending once it is due."""
    ANALYZING = "analyzing"
    """Its outcome is recorded and waits for the analyzer (which archives it)."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


LIVE_STATES: tuple[TaskState, ...] = (TaskState.PENDING, TaskState.RUNNING, TaskState.RETRY, TaskState.ANALYZING,
                                      TaskState.SCHEDULED)
"""States of a task still in Redis (each has a sorted set per job)."""
FINAL_STATES: tuple[TaskState, ...] = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)
"""States of an archived task (a row in MySQL; the job counts them)."""
WAITING_STATES: tuple[TaskState, ...] = (TaskState.PENDING, TaskState.RETRY, TaskState.SCHEDULED)
"""Live states in which no execution runs: a cancel ends them at once."""
DEAD_STATES: tuple[TaskState, ...] = (TaskState.FAILED, TaskState.CANCELLED)
"""Final states a retry may revive (the dead letters)."""
RESULT_STATES: tuple[TaskState, ...] = (TaskState.ANALYZING, *FINAL_STATES)
"""States of a task whose result is recorded: the analyzer's turn, or final (a per-task wait ends there)."""
