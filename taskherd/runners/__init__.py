"""Run one executor or analyzer call (python, exe or http) with a hard time-out.

    spec = taskherd.specs.RunnerSpec.from_dict({"kind": "python", "target": "mypkg.tasks:resize"})
    with Runner() as runner:
        outcome = runner.run(spec, {"path": "a.png"}, timeout_s=30)

Names are imported lazily: `python -m taskherd.runners.child` imports this package, and the child
should start without paying for httpx and psutil, which only the parent uses.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Outcome": "outcome",
    "StoredPayload": "outcome",
    "Runner": "runner",
    "Started": "runner",
    "PythonRunner": "python_runner",
    "ExeRunner": "exe_runner",
    "HttpRunner": "http_runner",
    "kill_tree": "process_tree",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'taskherd.runners' has no attribute {name!r}")
    value = getattr(import_module(f"taskherd.runners.{module}"), name)
    globals()[name] = value
    return value
