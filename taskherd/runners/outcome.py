"""What one executor or analyzer call came to: the `Outcome`.

Runners never raise for a failure of the code they run: a worker must record every attempt, and an
exception would skip that. So every ending (a result, an exception, a bad reply, a time-out, a kill)
becomes an `Outcome`, and `retryable` carries the runner's judgement of whether trying again could
help. Callers may refine that (e.g. by `error_type`), but never need to parse `error`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["ok", "failed", "timeout", "killed"]

TAIL_BYTES = 4096
"""How much of a traceback, stderr or response body an outcome keeps: enough to diagnose, small for Redis."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one call."""

    status: Status
    """ok: see `result`; failed: see `error`; timeout: killed at the deadline; killed: `kill()` was called."""
    result: dict[str, Any] | None
    """The JSON object the executor returned; None unless ok."""
    error: str | None
    """One line for people; None when ok."""
    retryable: bool
    """Whether another attempt could succeed (time-outs, crashes, 5xx, exceptions); False when ok."""
    duration_s: float
    """Wall-clock seconds from the call to its outcome, kill included."""
    exit_code: int | None = None
    """exe: the exit code (negative: killed by that signal); python: the child's code if it died; else None."""
    error_type: str | None = None
    """python: the exception's qualified class name (`ValueError`, `mypkg.errors.Busy`); else None."""
    detail: str | None = None
    """The tail of the traceback (python), stderr (exe) or response body (http), at most TAIL_BYTES."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, for the results topic and the archive."""
        return asdict(self)


def succeeded(result: dict[str, Any], duration_s: float, **extra: Any) -> Outcome:
    return Outcome("ok", result, None, False, duration_s, **extra)


def failed(error: str, duration_s: float, *, retryable: bool, **extra: Any) -> Outcome:
    return Outcome("failed", None, error, retryable, duration_s, **extra)


def timed_out(timeout_s: float, duration_s: float, **extra: Any) -> Outcome:
    return Outcome("timeout", None, f"timed out after {timeout_s:g} s", True, duration_s, **extra)


def killed(duration_s: float, **extra: Any) -> Outcome:
    # Not retryable: a kill means the caller gave up on this execution (cancel, lost lease); the
    # caller, not the runner, decides whether the task runs again.
    return Outcome("killed", None, "killed", False, duration_s, **extra)


RESULT_SLACK = 65536
"""Bytes a runner reads past the result bound before it stops reading: room for a reply's envelope, a
trailing newline or pretty-printing. Whatever was read, the result's compact JSON is then held to the
bound itself."""

BOUND_SETTING = "[worker].max_result_bytes"


def oversize_error(size: int, limit: int, *, more_than: bool = False) -> str:
    """Why a result was refused, naming both sizes (`more_than`: reading stopped at `size`)."""
    return f"result of {'more than ' if more_than else ''}{size} bytes exceeds {BOUND_SETTING} = {limit}"


def oversize(size: int, limit: int, duration_s: float, *, more_than: bool = False, **extra: Any) -> Outcome:
    # Not retryable: the same code on the same payload returns the same result again.
    return failed(oversize_error(size, limit, more_than=more_than), duration_s, retryable=False, **extra)


def result_size(result: dict[str, Any]) -> int:
    """The size the bound is about: the result as compact JSON (ASCII, so characters are bytes)."""
    return len(json.dumps(result, separators=(",", ":")))


def bounded(result: dict[str, Any], limit: int, duration_s: float, **extra: Any) -> Outcome:
    """`result` as a success if its compact JSON fits `limit`, else the failure that names both sizes."""
    size = result_size(result)
    if size > limit:
        return oversize(size, limit, duration_s, **extra)
    return succeeded(result, duration_s, **extra)


def tail(data: bytes | str | None, limit: int = TAIL_BYTES) -> str | None:
    """The last `limit` bytes as text, or None when there is nothing to keep."""
    if not data:
        return None
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
    return raw[-limit:].decode("utf-8", "replace")


def head(data: bytes | None, limit: int = TAIL_BYTES) -> str | None:
    """The first `limit` bytes as text: where an HTTP error body says what went wrong."""
    if not data:
        return None
    return data[:limit].decode("utf-8", "replace")


def parse_object(raw: bytes, source: str) -> tuple[dict[str, Any] | None, str | None]:
    """Decode a JSON object; on failure say what was wrong with `source` (e.g. "stdout")."""
    if not raw.strip():
        return None, f"{source} is empty; expected a JSON object"
    try:
        value = json.loads(raw)
    except ValueError as exc:
        return None, f"{source} is not valid JSON ({exc}); starts with {raw[:60]!r}"
    if not isinstance(value, dict):
        return None, f"{source} is a JSON {json_type(value)}, expected a JSON object"
    return value, None


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, as a user who wrote the JSON would say it."""
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True)
class StoredPayload:
    """A payload as the intake stored it: a JSON object's strict text (`intake.canonical` refuses NaN and
    Infinity). Runners send it on as it is; a worker decoded it only to encode it again."""

    text: str


Payload = dict[str, Any] | StoredPayload
"""What a runner hands its executor: an object (tests, the CLI's local run) or its stored text."""


def encode_payload(payload: Payload) -> tuple[bytes, str | None]:
    """The payload as JSON bytes, or why it cannot be sent (it came from a user: say so, do not raise)."""
    if isinstance(payload, StoredPayload):
        return payload.text.encode(), None
    if not isinstance(payload, dict):
        return b"", f"payload: expected a dict (a JSON object), got {type(payload).__name__}"
    try:
        return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode(), None
    except (TypeError, ValueError, RecursionError) as exc:
        return b"", f"payload is not JSON-serializable: {exc}"


def since(started: float) -> float:
    """Seconds since a `time.monotonic()` reading."""
    return time.monotonic() - started
