"""taskherd: a distributed task system of supervised pykka actors over NSQ, Redis and MySQL.

The public face, imported lazily (the runner child imports this package and must start fast):

    taskherd.App         the decorator SDK (`taskherd/sdk.py`; also Task, TaskFailed)
    taskherd.progress    report a running executor's progress (`taskherd/runners/progress.py`)

The root package sits outside the layers contract: it only re-exports, by name, what the layers hold.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "App": "taskherd.sdk",
    "Task": "taskherd.sdk",
    "TaskFailed": "taskherd.sdk",
    "progress": "taskherd.runners.progress",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'taskherd' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
