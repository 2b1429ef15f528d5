"""Logging set-up for a pod: one line per event, text or JSON (`[log] format`).

A JSON line is one object: time, level, logger, message, this pod's `node` and `role`, and, on every
event about a task, its `task`, `job`, `exec` (execution id) and `type` where known, passed as
`extra=task_fields(...)` by the code that logs it. Text lines say the same in words.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from taskherd.config.settings import LogSettings

TASK_FIELDS = ("task", "job", "exec", "type")


def task_fields(job: str | None = None, task: str | None = None, exec_id: str | None = None,
                task_type: str | None = None) -> dict[str, Any]:
    """`extra=` for a log call about a task: the ids a JSON line carries as fields of their own."""
    fields = {"job": job, "task": task, "exec": exec_id, "type": task_type}
    return {"taskherd": {k: v for k, v in fields.items() if v}}


class _Json(logging.Formatter):
    def __init__(self, node: str, role: str) -> None:
        super().__init__()
        self.node, self.role = node, role

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
                               "msg": record.getMessage(), "node": self.node, "role": self.role}
        out.update(getattr(record, "taskherd", None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(settings: LogSettings, role: str, node: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json(node, role) if settings.format == "json" else
                         logging.Formatter(f"%(asctime)s %(levelname)-7s {role} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    for noisy in ("nsq", "tornado", "httpx", "uvicorn"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
