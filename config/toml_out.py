"""Write Settings back as TOML: `config show`, and the file `taskherd up` hands to its pods."""

from __future__ import annotations

import json
from typing import Any

from taskherd.config.settings import Settings


def dumps(settings: Settings, unset_as_comments: bool = False) -> str:
    """TOML that `load` reads back as `settings`; a key with no value is left out, or shown as a
    comment (`config show`)."""
    lines: list[str] = []
    for section, values in settings.model_dump().items():
        lines.append(f"[{section}]")
        for key, v in values.items():
            if v is not None:
                lines.append(f"{key} = {_value(v)}")
            elif unset_as_comments:
                lines.append(f"# {key} is not set")
        lines.append("")
    return "\n".join(lines)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table: an [auth] token
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items() if x is not None) + " }"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    return repr(v)
