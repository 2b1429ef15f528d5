"""The persistent child that runs python executors: `python -m taskherd.runners.child`.

Why a child at all: a hard time-out must be able to kill the user's code (and whatever it started)
without killing the worker. Why persistent: starting an interpreter per task costs more than most
tasks; one child serves many calls and caches imported functions.

Protocol: newline-delimited JSON (json.dumps never emits a raw newline), one reply per request, in
order, on private copies of fds 0 and 1 taken at start-up::

    request  {"id": 7, "target": "pkg.mod:func", "payload": {...}}
    reply    {"id": 7, "ok": true, "result": {...}}
    reply    {"id": 7, "ok": false, "stage": "resolve" | "call" | "result" | "protocol",
              "error": "...", "error_type": "pkg.mod.Error" | null, "traceback": "..." | null}

`stage` says where it failed: resolving the target, inside the call, in the returned value, or in
the request itself. The child exits when its stdin reaches EOF. Only the standard library (and
`outcome`, which needs no more) is imported here, so the child starts fast.

`--max-result-bytes N`: a result whose compact JSON is longer is not sent; the reply is a "result"
failure naming both sizes, so the worker never reads more than N bytes (plus the envelope) of it.
An error message is cut to TAIL_CHARS, so no reply but a result's can be long.

`--progress-fd N`: the write end of the worker's progress pipe; `taskherd.progress()` in user code
writes there (coalesced, tagged with the request id: `taskherd/runners/progress.py`).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO

from taskherd.runners import progress
from taskherd.runners.outcome import oversize_error

TAIL_CHARS = 4096
NO_BOUND = sys.maxsize


def main(argv: list[str] | None = None) -> int:
    max_result_bytes, progress_fd = _options(sys.argv[1:] if argv is None else argv)
    if progress_fd is not None:
        progress.install(progress_fd)
    _die_with_parent(os.getppid())
    requests, replies = _claim_protocol_fds()
    functions: dict[str, Callable[[dict[str, Any]], Any]] = {}
    for line in requests:
        replies.write(_serve(line, functions, max_result_bytes))
        replies.flush()
    return 0


def _options(argv: list[str]) -> tuple[int, int | None]:
    """(--max-result-bytes, --progress-fd), each optional."""
    options = dict(zip(argv[::2], argv[1::2]))
    if len(argv) % 2 or set(options) - {"--max-result-bytes", "--progress-fd"} or not all(
            v.isdigit() for v in options.values()):
        raise SystemExit(f"usage: python -m taskherd.runners.child [--max-result-bytes N] [--progress-fd N], got {argv}")
    fd = options.get("--progress-fd")
    return int(options.get("--max-result-bytes", NO_BOUND)), (int(fd) if fd is not None else None)


def _die_with_parent(parent: int, interval_s: float = 0.2) -> None:
    """If the worker dies without killing us (SIGKILL, OOM), kill our whole process group at once.

    Otherwise an orphaned executor would keep running while the task's lease expires and another
    worker runs it again: two executions at once. We are our group's leader (the worker starts us
    with a new session), so the group is us and whatever user code started.
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _claim_protocol_fds() -> tuple[BinaryIO, BinaryIO]:
    """Keep fds 0/1 for the protocol and point the originals elsewhere.

    User code that prints (even from C, or from a subprocess it starts) must not corrupt the reply
    stream, and user code that reads stdin must not eat requests: so fd 1 becomes a copy of stderr
    and fd 0 becomes /dev/null; the protocol talks on private, non-inheritable duplicates.
    """
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull, encoding="utf-8")
    sys.stdout = sys.stderr
    return requests, replies


def _serve(line: bytes, functions: dict[str, Callable[[dict[str, Any]], Any]], max_result_bytes: int) -> bytes:
    try:
        request = json.loads(line)
        request_id, target, payload = request["id"], request["target"], request["payload"]
    except (ValueError, KeyError, TypeError) as exc:
        return _encode(_failure(None, "protocol", f"unreadable request: {exc}", exc))
    reply = _call(request_id, target, payload, functions)
    if not reply["ok"]:
        return _encode(reply)
    try:
        result = _encode(reply["result"])[:-1]
    except (TypeError, ValueError, RecursionError) as exc:
        return _encode(_failure(request_id, "result", f"{target} returned a value that is not JSON: {exc}", None))
    if len(result) > max_result_bytes:
        return _encode(_failure(request_id, "result", oversize_error(len(result), max_result_bytes), None))
    head = json.dumps({"id": request_id, "ok": True}, separators=(",", ":"))
    return head[:-1].encode() + b',"result":' + result + b"}\n"  # splice: the result is encoded once


def _call(request_id: Any, target: str, payload: Any, functions: dict[str, Callable[..., Any]]) -> dict[str, Any]:
    try:
        function = functions.get(target) or _resolve(target)
    except Exception as exc:  # noqa: BLE001 - any import-time error is the user's, report it
        return _failure(request_id, "resolve", f'cannot load "{target}": {_describe(exc)}', exc)
    functions[target] = function
    progress.begin(request_id)
    try:
        result = function(payload)
    except BaseException as exc:  # noqa: BLE001 - sys.exit() in user code must not end the child
        return _failure(request_id, "call", f"{target} raised {_describe(exc)}", exc)
    finally:
        progress.end()
    if not isinstance(result, dict):
        kind = type(result).__name__
        return _failure(request_id, "result", f"{target} returned {kind}, expected a dict (a JSON object)", None)
    return {"id": request_id, "ok": True, "result": result}


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attr_path = target.partition(":")
    value: Any = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        if not hasattr(value, attr):
            raise AttributeError(f"{getattr(value, '__name__', value)!s} has no attribute {attr!r}")
        value = getattr(value, attr)
    if not callable(value):
        raise TypeError(f"{attr_path} is a {type(value).__name__}, not a function")
    return value


def _failure(request_id: Any, stage: str, error: str, exc: BaseException | None) -> dict[str, Any]:
    return {
        "id": request_id,
        "ok": False,
        "stage": stage,
        "error": error[:TAIL_CHARS],
        "error_type": _qualified_name(type(exc)) if exc is not None else None,
        "traceback": "".join(traceback.format_exception(exc))[-TAIL_CHARS:] if exc is not None else None,
    }


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _qualified_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, allow_nan=False, separators=(",", ":")).encode() + b"\n"


if __name__ == "__main__":
    sys.exit(main())
