"""Logging set-up for a pod: one line per event, text or JSON, with the role in every line."""

from __future__ import annotations

import json
import logging
import sys

from taskherd.config.settings import LogSettings


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(settings: LogSettings, role: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if settings.format == "json" else
                         logging.Formatter(f"%(asctime)s %(levelname)-7s {role} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    for noisy in ("nsq", "tornado", "httpx", "uvicorn"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
