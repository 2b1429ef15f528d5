"""Executor and analyzer specs: the one place that parses, validates, normalizes and makes them
runnable, for the API, the Manager, the Intake, the worker and the analyzer alike.

A spec arrives as JSON from a user (registration) or from Redis (a worker reads it with its lease),
so it is checked here and every problem is reported at once, each naming its field. Its call target
becomes a `RunnerSpec`; a `RunnerSpec` that exists is valid, so the runners never re-check it. The
other fields (time-out, attempts, `retry_on`, description) are defaults and policy for its tasks.

Names users give (task types, jobs) are checked here too (`check_name`), since a spec is keyed by one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from taskherd.errors import ExecutorError, InvalidInput

Kind = Literal["python", "exe", "http"]
KINDS: tuple[str, ...] = ("python", "exe", "http")

_IDENT = r"[A-Za-z_]\w*"
_PYTHON_TARGET = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*")
_FIELDS = {"kind", "target", "env", "cwd", "headers"}
RUNNER_FIELDS = frozenset(_FIELDS)
"""The fields of a stored spec that say how to call it (the rest are defaults and policy)."""
SPEC_FIELDS = {"executor": RUNNER_FIELDS | {"id", "timeout_s", "max_attempts", "retry_on", "description"},
               "analyzer": RUNNER_FIELDS | {"id", "timeout_s", "description"}}
SPEC_KINDS = tuple(SPEC_FIELDS)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
_FIELDS_BY_KIND = {"python": set(), "exe": {"env", "cwd"}, "http": {"headers"}}


class InvalidSpec(ExecutorError):
    """A spec could not be used; `problems` holds one line per field, `data` the input as given."""

    def __init__(self, problems: list[str], data: Any, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        super().__init__("\n".join(prefix + p for p in problems))
        self.problems = problems
        self.data = data


@dataclass(frozen=True, slots=True)
class RunnerSpec:
    """One executor or analyzer call target; hashable, so workers can cache by it."""

    kind: Kind
    """`python`, `exe` or `http`."""
    target: str | tuple[str, ...]
    """`"package.module:function"` (python), an argv (exe, a list is kept as a tuple) or a URL (http)."""
    env: tuple[tuple[str, str], ...] = ()
    """exe only: variables added to the worker's environment (a dict is kept as sorted pairs)."""
    cwd: str | None = None
    """exe only: working directory; None keeps the worker's."""
    headers: tuple[tuple[str, str], ...] = ()
    """http only: extra request headers (a dict is kept as sorted pairs)."""

    def __post_init__(self) -> None:
        # Accept the natural JSON shapes (list, dict) but store hashable ones.
        if isinstance(self.target, list):
            object.__setattr__(self, "target", tuple(self.target))
        for name in ("env", "headers"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, tuple(sorted(value.items())))
        self.validate()

    def validate(self, where: str = "") -> RunnerSpec:
        """Raise `InvalidSpec` naming every bad field; return self so it chains."""
        problems = _kind_problems(self.kind)
        if not problems:
            problems = _target_problems(self.kind, self.target) + _option_problems(self)
        if problems:
            raise InvalidSpec(problems, {name: getattr(self, name) for name in self.__slots__}, where)
        return self

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> RunnerSpec:
        """The boundary constructor for JSON input; unknown fields are errors (typos must not pass)."""
        if not isinstance(data, Mapping):
            raise InvalidSpec([f"expected an object with kind and target, got {_show(data)}"], data, where)
        problems = _shape_problems(data)
        if problems:
            raise InvalidSpec(problems, data, where)
        try:
            return cls(**dict(data))
        except InvalidSpec as exc:
            raise InvalidSpec(exc.problems, data, where) from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form that `from_dict` reads back; empty options are left out."""
        out: dict[str, Any] = {"kind": self.kind}
        out["target"] = list(self.target) if isinstance(self.target, tuple) else self.target
        if self.env:
            out["env"] = dict(self.env)
        if self.cwd is not None:
            out["cwd"] = self.cwd
        if self.headers:
            out["headers"] = dict(self.headers)
        return out


def _shape_problems(data: Mapping[str, Any]) -> list[str]:
    problems = [f"{name}: unknown field (known: {', '.join(sorted(_FIELDS))})" for name in data if name not in _FIELDS]
    problems += [f"{name}: required" for name in ("kind", "target") if name not in data]
    for name in ("env", "headers"):
        if name in data and not _is_str_map(data[name]):
            problems.append(f"{name}: expected an object of strings, got {_show(data[name])}")
    return problems


def _kind_problems(kind: Any) -> list[str]:
    if kind in KINDS:
        return []
    return [f"kind: must be one of {', '.join(KINDS)}, got {_show(kind)}"]


def _target_problems(kind: str, target: Any) -> list[str]:
    if kind == "python" and not (isinstance(target, str) and _PYTHON_TARGET.fullmatch(target)):
        return [f'target: expected "module:function" (e.g. "mypkg.tasks:resize"), got {_show(target)}']
    if kind == "exe" and not _is_argv(target):
        example = '["./tool", "--json"]'
        return [f"target: expected a non-empty list of strings (an argv, e.g. {example}), got {_show(target)}"]
    if kind == "http" and not _is_http_url(target):
        return [f'target: expected an http:// or https:// URL with a host, got {_show(target)}']
    return []


def _option_problems(spec: RunnerSpec) -> list[str]:
    allowed = _FIELDS_BY_KIND.get(spec.kind, set())
    present = {"env": bool(spec.env), "cwd": spec.cwd is not None, "headers": bool(spec.headers)}
    problems = [f"{name}: not used by kind {spec.kind}" for name, on in present.items() if on and name not in allowed]
    if spec.cwd is not None and not (isinstance(spec.cwd, str) and spec.cwd):
        problems.append(f"cwd: expected a non-empty path string, got {_show(spec.cwd)}")
    for name in ("env", "headers"):
        if not _is_str_pairs(getattr(spec, name)):
            problems.append(f"{name}: expected an object of strings, got {_show(getattr(spec, name))}")
    return problems


def _is_argv(target: Any) -> bool:
    return isinstance(target, tuple) and len(target) > 0 and all(isinstance(a, str) for a in target) and target[0] != ""


def _is_http_url(target: Any) -> bool:
    if not isinstance(target, str):
        return False
    try:
        parts = urlsplit(target)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_str_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _is_str_pairs(value: Any) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(p, tuple) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in value
    )


def _show(value: Any) -> str:
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_name(where: str, value: Any) -> str:
    """A task type or job name; raises InvalidInput naming `where`."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidInput(where, "expected 1-128 characters of letters, digits, '_', '.', ':' or '-', "
                                  f"starting with a letter or digit; got {value!r}")
    return value


def normalize_spec(kind: str, task_type: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec as it is stored: validated (raises InvalidSpec naming each bad field, or InvalidInput
    for the task type), with its id defaulted to the task type and empty options left out."""
    check_name("task_type", task_type)
    unknown = sorted(set(spec) - SPEC_FIELDS[kind])
    if unknown:
        raise InvalidSpec([f"{name}: unknown field" for name in unknown], dict(spec))
    runner_spec(spec)
    return {"id": task_type, **{k: v for k, v in spec.items() if v is not None}}


def runner_spec(spec: Mapping[str, Any]) -> RunnerSpec:
    """The part of a stored spec that says how to call it; raises InvalidSpec."""
    return RunnerSpec.from_dict({k: v for k, v in spec.items() if k in RUNNER_FIELDS})


def spec_from_text(raw: str | None) -> dict[str, Any] | None:
    """A spec as stored; one that is not a JSON object reads as missing (the task then fails, clearly)."""
    try:
        spec = json.loads(raw) if raw else None
    except ValueError:
        return None
    return spec if isinstance(spec, dict) else None


Runnable = RunnerSpec | InvalidSpec | None
"""What runs a task type: None when no spec is registered, the error when the stored spec is unusable."""


def runnable(spec: Mapping[str, Any] | None) -> Runnable:
    """What runs a stored spec, or why it cannot run (never raises)."""
    if spec is None:
        return None
    try:
        return runner_spec(spec)
    except InvalidSpec as exc:
        return exc
