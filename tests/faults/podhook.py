"""`python -m tests.faults.podhook --config C run --role R`: a pod with a fault-injection hook.

The pod is `taskherd.cli.main`, unchanged; this wrapper only installs a SIGUSR1 handler first. On the
signal, a thread (never the handler itself) reads `command.json` from $TASKHERD_FAULTS_HOOK_DIR and
makes one live actor of this pod raise inside its own thread on its next step, as a bug would:

- `crash-worker`: a worker slot that holds a lease raises as soon as its executor call returns, before
  the outcome is recorded: the lease is held and the result is never written.
- `crash-analyzer`: the ResultAnalyzer raises in `_archive` on its next batch, after analysis and
  before the MySQL commit: its deliveries stay unacknowledged.

Only the chosen actor object is patched (an instance attribute, looked up after the patch), so its
restarted incarnation is the pod's own code again. The answer goes to `reply-SEQ.json`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pykka

HOOK_DIR_ENV = "TASKHERD_FAULTS_HOOK_DIR"


class InjectedCrash(RuntimeError):
    """The exception the hook makes an actor raise."""


def _actor(ref: pykka.ActorRef) -> Any:
    return ref._actor_weakref()


def _live(class_name: str) -> list[Any]:
    return [a for r in pykka.ActorRegistry.get_by_class_name(class_name) if r.is_alive() and (a := _actor(r))]


def _raise_once(what: str) -> Any:
    def crash(*_: Any, **__: Any) -> None:
        raise InjectedCrash(f"fault suite: injected crash in {what}")
    return crash


def _crash_at_finish(worker: Any, exec_id: str, report: Path) -> Any:
    """Stands in for a Worker's `_finish`, which it looks up to record outcomes: for the armed
    execution (among them) it writes `report` and raises in the worker's thread, before the outcome is recorded
    (the slot records the outcome it holds as its next task runs, so an earlier one may come first)."""
    def crash(finishing: list[Any], *args: Any, **kwargs: Any) -> Any:
        if all(lease.exec_id != exec_id for lease, _, _ in finishing):
            return type(worker)._finish(worker, finishing, *args, **kwargs)
        report.write_text(json.dumps({"exec": exec_id, "runner_pid": worker.runner.python_pid}))
        raise InjectedCrash("fault suite: injected crash in a worker slot, its executor call just returned")
    return crash


def crash_worker(command: dict[str, Any]) -> dict[str, Any]:
    """Arm a busy slot (its task id starting with `prefix` and not in `exclude`) to crash when its
    executor call returns; `crashed.json` names the execution it crashed on."""
    prefix, exclude = command.get("prefix", ""), set(command.get("exclude", ()))
    deadline = time.monotonic() + float(command.get("timeout_s", 10))
    while time.monotonic() < deadline:
        for keeper in _live("LeaseKeeper"):
            for index, lease in keeper.held().items():
                worker = next((w for w in _live("Worker") if w.index == index), None)
                if worker is None or not lease.task_id.startswith(prefix) or lease.task_id in exclude:
                    continue
                report = Path(command["dir"]) / "crashed.json"
                worker._finish = _crash_at_finish(worker, lease.exec_id, report)
                return {"ok": True, "slot": index, "task": lease.task_id, "report": str(report)}
        time.sleep(0.01)
    return {"ok": False, "why": f"no slot held a lease of a task starting with {prefix!r}"}


def crash_analyzer(command: dict[str, Any]) -> dict[str, Any]:
    analyzers = _live("ResultAnalyzer")
    if not analyzers:
        return {"ok": False, "why": "no live ResultAnalyzer"}
    analyzers[0]._archive = _raise_once("the result analyzer")
    return {"ok": True}


ACTIONS = {"crash-worker": crash_worker, "crash-analyzer": crash_analyzer}


def _serve(hook_dir: Path) -> None:
    command = {**json.loads((hook_dir / "command.json").read_text()), "dir": str(hook_dir)}
    try:
        reply = ACTIONS[command["do"]](command)
    except Exception as exc:
        reply = {"ok": False, "why": f"{type(exc).__name__}: {exc}"}
    tmp = hook_dir / f".reply-{command['seq']}.json"
    tmp.write_text(json.dumps(reply))
    tmp.rename(hook_dir / f"reply-{command['seq']}.json")


def install(hook_dir: Path) -> None:
    def on_signal(*_: Any) -> None:
        threading.Thread(target=_serve, args=(hook_dir,), name="faults-hook", daemon=True).start()

    signal.signal(signal.SIGUSR1, on_signal)


if __name__ == "__main__":
    install(Path(os.environ[HOOK_DIR_ENV]))
    os.environ.pop(HOOK_DIR_ENV)  # the pod's own children are not hooked
    from taskherd.cli import main

    sys.exit(main())
