"""What travels on NSQ: a reference to a task (`TaskRef`), encoded as a small JSON object.

NSQ is the doorbell, never the store: only the reference travels, the task lives in Redis, so a
stale or repeated message is harmless (the transition it triggers checks the task's state first).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TaskRef:
    """Body of a message on either topic: which task to lease (tasks) or to analyze (results).

    Only the reference travels; the task itself lives in Redis, so a stale or repeated message is
    harmless: the transition it triggers checks the task's state first.
    """

    job: str
    task_id: str
    type: str = ""
    """A hint so the reader fetches the executor (tasks) or analyzer (results) spec in the same round trip."""
    priority: int = 5
    """Which tasks topic it goes on (`topics.task_topic`); not in the body: the topic says it."""

    def encode(self) -> bytes:
        body = {"j": self.job, "t": self.task_id, **({"y": self.type} if self.type else {})}
        return json.dumps(body, separators=(",", ":")).encode()


def decode(body: bytes, max_bytes: int) -> TaskRef:
    """The TaskRef in a message body; raises ValueError naming what is wrong with it."""
    if len(body) > max_bytes:
        raise ValueError(f"message of {len(body)} bytes exceeds {max_bytes}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not usable JSON: nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("j"), str) or not isinstance(data.get("t"), str):
        raise ValueError('expected {"j": job, "t": task id} with string values')
    hint = data.get("y")
    return TaskRef(data["j"], data["t"], hint if isinstance(hint, str) else "")
