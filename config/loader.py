"""Read one TOML file into `Settings`, turning every problem into one line that names file and key.

The only boundary where untrusted configuration enters: past `load`, settings are typed and frozen.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from taskherd.config.settings import DROPPED, RENAMED, AuthSettings, Settings, TokenSettings
from taskherd.errors import ConfigError

log = logging.getLogger("taskherd.config")


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from `path` (defaults alone when None), with `overrides` merged over the file. Each
    deprecated key is logged as a warning (`check` returns them instead)."""
    settings, deprecated = check(path, overrides)
    for line in deprecated:
        log.warning("%s", line)
    return settings


def check(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> tuple[Settings, list[str]]:
    """(Settings, one line per deprecated key used); raises ConfigError listing every problem."""
    data: dict[str, Any] = {} if path is None else _read_toml(Path(path))
    for section, values in (overrides or {}).items():
        data.setdefault(section, {})
        if isinstance(data[section], dict):
            data[section] = {**data[section], **values}
    source = str(path) if path else "<defaults>"
    deprecated = _migrate(data, source)
    return from_dict(data, source), deprecated


def from_dict(data: dict[str, Any], source: str = "<dict>") -> Settings:
    try:
        return Settings.model_validate(_lists_to_tuples(data))
    except ValidationError as exc:
        raise ConfigError([f"{source}: {_key_path(e['loc'])}: {_describe(dict(e), _secret(e['loc']))}"
                           for e in exc.errors()]) from None


_TOKEN_LIST = TypeAdapter(tuple[TokenSettings, ...])


def tokens(auth: AuthSettings) -> tuple[TokenSettings, ...]:
    """Every API token: `[auth].tokens` and those of `[auth].tokens_file`, read now (a Secret mounted
    as a file); raises ConfigError naming the file and key of each problem, never a token's value."""
    if not auth.tokens_file:
        return auth.tokens
    path = Path(auth.tokens_file)
    data = _read_tokens_file(path)
    entries = data.get("tokens") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConfigError([f"{path}: tokens: expected a list of {{name, sha256, scopes}} (TOML: tokens = [...]; "
                           f"JSON: a list or {{\"tokens\": [...]}})"])
    if not entries:
        raise ConfigError([f"{path}: tokens: empty; [auth].tokens_file must hold at least one token"])
    try:
        found = _TOKEN_LIST.validate_python(_lists_to_tuples(entries))
    except ValidationError as exc:
        raise ConfigError([f"{path}: tokens.{'.'.join(str(p) for p in e['loc'])}: {_describe(dict(e), hidden=True)}"
                           for e in exc.errors()]) from None
    try:
        return AuthSettings(tokens=auth.tokens + found).tokens
    except ValidationError as exc:
        raise ConfigError([f"{path} with [auth].tokens: {_describe(dict(e), hidden=True)}" for e in exc.errors()]) from None


def _read_tokens_file(path: Path) -> object:
    if path.suffix == ".json":
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"{path}: [auth].tokens_file: {exc.strerror or exc}"]) from None
        except ValueError as exc:  # the message quotes no content, only where it broke
            raise ConfigError([f"{path}: not valid JSON at line {getattr(exc, 'lineno', '?')}"]) from None
    return _read_toml(path, hide=True)


def _secret(loc: tuple[object, ...]) -> bool:
    """Whether a bad value must not be echoed: a password, or anything of [auth] but the file's path."""
    parts = [str(p) for p in loc]
    return "password" in parts or (bool(parts) and parts[0] == "auth" and parts[-1] != "tokens_file")


def _migrate(data: dict[str, Any], source: str) -> list[str]:
    """Move renamed keys to their new place and drop retired ones (in `data`); say so for each. A key
    set under both names is an error: which one was meant cannot be guessed."""
    notes, clashes = [], []
    for (old_section, old), (new_section, new) in RENAMED.items():
        section = data.get(old_section)
        if not isinstance(section, dict) or old not in section:
            continue
        target = data.setdefault(new_section, {})
        if not isinstance(target, dict):
            continue  # the validator names the bad section
        if new in target:
            clashes.append(f"{source}: [{old_section}].{old}: deprecated and also set as [{new_section}].{new}; "
                           f"keep only [{new_section}].{new}")
            continue
        target[new] = section.pop(old)
        notes.append(f"{source}: [{old_section}].{old} is deprecated: use [{new_section}].{new}")
    for (section_name, key), why in DROPPED.items():
        section = data.get(section_name)
        if isinstance(section, dict) and key in section:
            del section[key]
            notes.append(f"{source}: [{section_name}].{key} is deprecated and ignored: {why}; remove it")
    if clashes:
        raise ConfigError(clashes)
    return notes


def _read_toml(path: Path, hide: bool = False) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        if hide:  # tomllib's message quotes no content, but say only where, to be sure
            where = re.search(r"\(at line \d+, column \d+\)", str(exc))
            raise ConfigError([f"{path}: not valid TOML {where.group(0) if where else ''}".rstrip()]) from None
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a TOML file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not valid TOML: not UTF-8 text"]) from None


def _lists_to_tuples(value: Any) -> Any:
    """TOML arrays arrive as lists; the frozen settings hold tuples (strict mode won't coerce)."""
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def _key_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if not parts:
        return "(top level)"
    if len(parts) == 1:
        return f"[{parts[0]}]" if parts[0] in Settings.model_fields else parts[0]
    return f"[{parts[0]}]." + ".".join(parts[1:])


def _describe(err: dict[str, Any], hidden: bool = False) -> str:
    """What is wrong; with `hidden` (a secret's place), without the value given."""
    kind, given = err["type"], err.get("input")
    if hidden:
        return _describe_hidden(kind, err)
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing"
    ctx = err.get("ctx") or {}
    bounds = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"out of range: expected a number {bounds[kind]} {limit}, got {given!r}"
    if kind == "string_pattern_mismatch":
        return f"expected a value matching {ctx.get('pattern')}, got {given!r}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"wrong type: expected {_expected(kind)}, got {type(given).__name__} {given!r}"
    return f"{err['msg']} (got {given!r})"


def _describe_hidden(kind: str, err: dict[str, Any]) -> str:
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing"
    if kind == "string_pattern_mismatch":
        return f"expected a value matching {(err.get('ctx') or {}).get('pattern')} (the value is not shown)"
    if kind.endswith("_type"):
        return f"wrong type: expected {_expected(kind)}, got {type(err.get('input')).__name__} (not shown)"
    return f"{err['msg']} (the value is not shown)"


def _expected(kind: str) -> str:
    for prefix, word in (("int", "an integer"), ("float", "a number"), ("string", "a string"),
                         ("bool", "true or false"), ("tuple", "an array"), ("model", "a table"),
                         ("dict", "a table")):
        if kind.startswith(prefix):
            return word
    return kind.replace("_type", "")
