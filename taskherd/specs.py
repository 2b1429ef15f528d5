"""Executor and analyzer specs: the one place that parses, validates, normalizes and makes them
runnable, for the API, the Manager, the Intake, the worker and the analyzer alike.

A spec arrives as JSON from a user (registration) or from Redis (a worker reads it with its lease),
so it is checked here and every problem is reported at once, each naming its field. Its call target
becomes a `RunnerSpec`; a `RunnerSpec` that exists is valid, so the runners never re-check it. The
other fields (time-out, attempts, `retry_on`, description) are defaults and policy for its tasks.

Names users give (task types, jobs) are checked here too (`check_name`), since a spec is keyed by one.
What `[security]` admits is decided here too (`admission`): by the Manager when a spec is registered,
and by the worker when it leases a task, so a spec stored before a list was narrowed never runs.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from taskherd.config.settings import SecuritySettings
from taskherd.errors import ExecutorError, InvalidInput

Kind = Literal["python", "exe", "http"]
KINDS: tuple[str, ...] = ("python", "exe", "http")

# The patterns below are the API's OpenAPI patterns too, so they are written for both Python's `re`
# (matched with fullmatch) and ECMA-262 (JSON Schema): ASCII classes only, no \w, \s or \Z.
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
PYTHON_TARGET_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")
"""A python target, "package.module:function" (ASCII identifiers)."""
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_H16 = "[0-9A-Fa-f]{1,4}"
_IPV4 = r"((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV6 = "|".join((f"({_H16}:){{7}}{_H16}", f"({_H16}:){{1,7}}:", f"({_H16}:){{1,6}}:{_H16}",
                  f"({_H16}:){{1,5}}(:{_H16}){{1,2}}", f"({_H16}:){{1,4}}(:{_H16}){{1,3}}",
                  f"({_H16}:){{1,3}}(:{_H16}){{1,4}}", f"({_H16}:){{1,2}}(:{_H16}){{1,5}}",
                  f"{_H16}:(:{_H16}){{1,6}}", f":((:{_H16}){{1,7}}|:)", f"({_H16}:){{6}}{_IPV4}",
                  f"::(ffff(:0{{1,4}})?:)?{_IPV4}", f"({_H16}:){{1,4}}:{_IPV4}"))
_SUB = "A-Za-z0-9._~%!$&'()*+,;="
HTTP_URL_RE = re.compile(rf"^[Hh][Tt][Tt][Pp][Ss]?://([{_SUB}:-]*@)?([{_SUB}-]+|\[({_IPV6})\])(:{_PORT}?)?"
                         r"([/?#][!-~]*)?$")
"""An http target: http:// or https://, an optional user@, a host (a name or a bracketed IPv6 address),
an optional port (≤ 65535) and the rest in printable ASCII (percent-encode anything else)."""
_FIELDS = {"kind", "target", "env", "cwd", "headers"}
RUNNER_FIELDS = frozenset(_FIELDS)
"""The fields of a stored spec that say how to call it (the rest are defaults and policy)."""
LIMIT_FIELDS = frozenset({"rate_limit_per_s", "rate_burst", "max_concurrency"})
"""An executor spec's limits on its type, global across the herd (see `TypeLimits`)."""
SPEC_FIELDS = {"executor": RUNNER_FIELDS | LIMIT_FIELDS | {"id", "timeout_s", "max_attempts", "retry_on",
                                                           "description", "priority"},
               "analyzer": RUNNER_FIELDS | {"id", "timeout_s", "description"}}
SPEC_KINDS = tuple(SPEC_FIELDS)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
"""Task-type and job names (matched with fullmatch: a trailing newline is no part of a name)."""
_FIELDS_BY_KIND = {"python": set(), "exe": {"env", "cwd"}, "http": {"headers"}}


class InvalidSpec(ExecutorError):
    """A spec could not be used; `problems` holds one line per field, `data` the input as given."""

    def __init__(self, problems: list[str], data: Any, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        super().__init__("\n".join(prefix + p for p in problems))
        self.problems = problems
        self.data = data


class NotRunnable(InvalidSpec):
    """A valid spec whose target cannot run on this host (`check_runnable`): the host's state, not the
    spec's shape, so the API answers 409 (install it, or register with check=false)."""


class NotAllowed(InvalidSpec):
    """A valid spec whose target `[security]` does not admit (403 at registration; at lease time its
    task fails with this error and no executor starts)."""


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
    if kind == "python" and not (isinstance(target, str) and PYTHON_TARGET_RE.fullmatch(target)):
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
    if not isinstance(target, str) or not HTTP_URL_RE.fullmatch(target):
        return False
    try:
        parts = urlsplit(target)
    except ValueError:
        return False
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
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
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
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
    if kind == "executor":
        _check_policy(spec)
    return {"id": task_type, **{k: v for k, v in spec.items() if v is not None}}


PRIORITIES = range(10)
DEFAULT_PRIORITY = 5
"""A task's priority: 0-9, higher first; a type's executor spec may set its default (`priority`)."""


def _check_policy(spec: Mapping[str, Any]) -> None:
    problems = []
    rate = spec.get("rate_limit_per_s")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1e6):
        problems.append(f"rate_limit_per_s: expected a number of starts per second > 0 and ≤ 1000000, got {rate!r}")
    for name in ("rate_burst", "max_concurrency"):
        value = spec.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000):
            problems.append(f"{name}: expected an integer ≥ 1 and ≤ 1000000, got {value!r}")
    if spec.get("rate_burst") is not None and rate is None:
        problems.append("rate_burst: only with rate_limit_per_s")
    priority = spec.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int) or priority not in PRIORITIES):
        problems.append(f"priority: expected an integer from 0 to 9 (higher runs first), got {priority!r}")
    if problems:
        raise InvalidSpec(problems, dict(spec))


@dataclass(frozen=True, slots=True)
class TypeLimits:
    """A task type's limits, from its executor spec: enforced by the worker before a lease
    (`taskherd.store.limits`), so a task over a limit stays pending, not an attempt."""

    rate_per_s: float | None
    """Starts per second over the herd (a token bucket, refilled continuously); None: no rate limit."""
    burst: int
    """Starts allowed at once after a quiet spell (the bucket's size): `rate_burst`, default max(1, rate)."""
    max_concurrency: int | None
    """Executions of the type running at once in the herd; None: no such limit."""


def limits_of(spec: Mapping[str, Any] | None) -> TypeLimits | None:
    """The limits an executor spec sets, or None (the common case: no limit, no extra round trip)."""
    if not spec:
        return None
    rate, most = spec.get("rate_limit_per_s"), spec.get("max_concurrency")
    if rate is None and most is None:
        return None
    burst = spec.get("rate_burst") or max(1, int(rate or 1))
    return TypeLimits(float(rate) if rate is not None else None, int(burst), int(most) if most is not None else None)


def runner_spec(spec: Mapping[str, Any]) -> RunnerSpec:
    """The part of a stored spec that says how to call it; raises InvalidSpec."""
    return RunnerSpec.from_dict({k: v for k, v in spec.items() if k in RUNNER_FIELDS})


CHECK_ESCAPE = "check=false"
"""How a registration skips `check_runnable` (the API's query parameter)."""


def check_runnable(spec: Mapping[str, Any], import_path: Sequence[str] = ()) -> None:
    """Raise InvalidSpec naming `target` when a valid spec's target cannot run on this host: an exe
    whose argv[0] is not an executable file (looked up on PATH when it has no slash), a python module
    that is not found on `import_path` (where the worker's python child looks first: its working
    directory) nor on this process's. Nothing is imported or run. An http URL is checked by `from_dict`."""
    runner = runner_spec(spec)
    problem = None
    if runner.kind == "exe" and isinstance(runner.target, tuple):
        problem = _exe_problem(runner.target[0], runner.cwd, dict(runner.env).get("PATH"))
    elif runner.kind == "python" and isinstance(runner.target, str):
        problem = _module_problem(runner.target.partition(":")[0], import_path)
    if problem:
        raise NotRunnable([f"target: {problem} (if it exists only where the workers run, register with "
                           f"{CHECK_ESCAPE})"], dict(spec))


def _exe_problem(program: str, cwd: str | None, path: str | None) -> str | None:
    if "/" not in program:
        found = shutil.which(program, path=path or os.environ.get("PATH", os.defpath))
        return None if found else f"{program!r} is not found on PATH on this host"
    full = os.path.join(cwd or os.getcwd(), program)
    if not os.path.isfile(full):
        return f"{program!r} does not exist on this host" + (f" (relative to {cwd or os.getcwd()})"
                                                            if not os.path.isabs(program) else "")
    if not os.access(full, os.X_OK):
        return f"{program!r} is not executable (no x permission)"
    return None


def _module_problem(module: str, import_path: Sequence[str]) -> str | None:
    parts = module.split(".")
    found = _find_top(parts[0], import_path)
    for depth in range(2, len(parts) + 1):
        name = ".".join(parts[:depth])
        if name in sys.modules:  # `os.path`: a module its parent put there
            found = sys.modules[name].__spec__
        elif found is None or found.submodule_search_locations is None:
            found = None
            break
        else:
            found = _find_sub(name, list(found.submodule_search_locations))
    if found is not None:
        return None
    where = ", ".join(import_path)
    return f"module {module!r} is not found on this host's import path" + (f" (searched {where} first)" if where else "")


def _find_top(name: str, import_path: Sequence[str]) -> importlib.machinery.ModuleSpec | None:
    """Where `import name` would look: `import_path`, then this process's finders (sys.path, editable
    installs, built-ins); finding a top-level module imports nothing."""
    found = importlib.machinery.PathFinder.find_spec(name, list(import_path)) if import_path else None
    if found is None:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
    return found


def _find_sub(fullname: str, path: list[str]) -> importlib.machinery.ModuleSpec | None:
    """A submodule's spec from the meta path finders (an editable install maps its own), or from its
    package's folders (the standard finder needs a namespace package's parent imported): nothing is imported."""
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            found = find(fullname, path)
        except Exception:  # noqa: BLE001 - a third-party finder may assume the parent is imported
            continue
        if found is not None:
            return found  # type: ignore[no-any-return]
    return _find_in_folders(fullname, path)


def _find_in_folders(fullname: str, path: list[str]) -> importlib.machinery.ModuleSpec | None:
    name = fullname.rpartition(".")[2]
    for folder in path:
        for suffix in importlib.machinery.all_suffixes():
            if os.path.isfile(os.path.join(folder, name + suffix)):
                return importlib.machinery.ModuleSpec(fullname, None, origin=os.path.join(folder, name + suffix))
    portions = [os.path.join(folder, name) for folder in path if os.path.isdir(os.path.join(folder, name))]
    if not portions:
        return None
    found = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
    found.submodule_search_locations = portions
    return found


def spec_from_text(raw: str | None) -> dict[str, Any] | None:
    """A spec as stored; one that is not a JSON object reads as missing (the task then fails, clearly)."""
    try:
        spec = json.loads(raw) if raw else None
    except ValueError:
        return None
    return spec if isinstance(spec, dict) else None


Runnable = RunnerSpec | InvalidSpec | None
"""What runs a task type: None when no spec is registered, the error when the stored spec is unusable."""


def runnable(spec: Mapping[str, Any] | None, security: SecuritySettings | None = None,
             auth_on: bool = False) -> Runnable:
    """What runs a stored spec, or why it cannot run (never raises); with `security`, a target it does
    not admit is a NotAllowed."""
    if spec is None:
        return None
    try:
        runner = runner_spec(spec)
        if security is not None:
            check_admitted(spec, security, auth_on)
    except InvalidSpec as exc:
        return exc
    return runner


def check_admitted(spec: Mapping[str, Any], security: SecuritySettings, auth_on: bool) -> None:
    """Raise NotAllowed, naming `target` and the list, when `[security]` does not admit the spec's target."""
    why = admission(runner_spec(spec), security, auth_on)
    if why:
        raise NotAllowed([f"target: {why}"], dict(spec))


def admission(runner: RunnerSpec, security: SecuritySettings, auth_on: bool) -> str | None:
    """Why `[security]` refuses this target, or None when it admits it. An empty list admits every
    target of its kind while auth is off, and none while auth is on (secure by default)."""
    allow: tuple[str, ...] = getattr(security, f"{runner.kind}_allow")
    key = f"[security].{runner.kind}_allow"
    if not allow:
        return None if not auth_on else f"{runner.kind} targets are refused: {key} is empty while auth is on " \
                                        f"(an operator lists what may run there)"
    shown = f"{key} = {list(allow)}"
    if runner.kind == "exe" and isinstance(runner.target, tuple):
        program = resolve_program(runner.target[0], runner.cwd, dict(runner.env).get("PATH"))
        if program is None:
            return f"{runner.target[0]!r} is not found on PATH here, so it cannot be matched against {shown}; " \
                   f"give its absolute path"
        return None if any(_glob(g).fullmatch(program) for g in allow) else f"{program!r} is not admitted by {shown}"
    if runner.kind == "http" and isinstance(runner.target, str):
        url = canonical_url(runner.target)
        return None if any(_url_has_prefix(url, p) for p in allow) else f"{url!r} is not admitted by {shown}"
    module = str(runner.target).partition(":")[0]
    return None if any(_module_has_prefix(module, p) for p in allow) else f"module {module!r} is not admitted by {shown}"


def resolve_program(program: str, cwd: str | None, path: str | None) -> str | None:
    """argv[0] as the exe runner finds it: on PATH (the spec's own, else this process's) when it has no
    slash, else against `cwd`; normalized (`..` removed), symlinks left as they are. None: not found."""
    if "/" not in program:
        found = shutil.which(program, path=path or os.environ.get("PATH", os.defpath))
        return os.path.abspath(found) if found else None
    return os.path.normpath(os.path.join(cwd or os.getcwd(), program))


def _glob(pattern: str) -> re.Pattern[str]:
    """`*` and `?` within one path segment, `**` across segments; everything else literal."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append({"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])))
        i += 1
    return re.compile("".join(out))


def canonical_url(url: str) -> str:
    """The URL as matched against `http_allow`: scheme and host lower-cased, any user:password@ and
    fragment dropped (the request goes to the host, whatever precedes an @)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port is not None else ""
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{host}{port}{parts.path}{query}"


def _url_has_prefix(url: str, prefix: str) -> bool:
    if not url.startswith(prefix):
        return False
    rest = url[len(prefix):]
    return prefix[-1] in "/:?#=&" or not rest or rest[0] in "/?#"


def _module_has_prefix(module: str, prefix: str) -> bool:
    return module.startswith(prefix) if prefix.endswith(".") else module == prefix or module.startswith(prefix + ".")
