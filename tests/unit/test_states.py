"""TaskState is the one spelling of a task's states: the Lua transitions may use no other."""

from __future__ import annotations

import re
from importlib import resources

from taskherd.states import FINAL_STATES, LIVE_STATES, TaskState

# A state literal in a script: written to the `state` field by an HSET, or compared with what was read.
HSET = re.compile(r"redis\.call\('HSET',(.*?)\)", re.DOTALL)
WRITTEN = re.compile(r"'state',\s*'(\w+)'")
COMPARED = re.compile(r"(?:\bstate|\bst\[1\]|'state'\))\s*[~=]=\s*'(\w+)'")


def _state_literals() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for script in resources.files("taskherd.store").joinpath("lua").iterdir():
        if script.name.endswith(".lua"):
            text = script.read_text()
            found[script.name] = _literals(text)
    return found


def _literals(text: str) -> set[str]:
    written = {state for args in HSET.findall(text) for state in WRITTEN.findall(args)}
    return written | set(COMPARED.findall(text))


def test_every_state_literal_in_the_lua_scripts_is_a_task_state() -> None:
    literals = _state_literals()
    unknown = {name: sorted(s - set(TaskState)) for name, s in literals.items() if s - set(TaskState)}
    assert unknown == {}
    # The patterns must actually see the scripts' states, or the check above proves nothing.
    seen = set().union(*literals.values())
    assert {"pending", "running", "retry", "analyzing", "scheduled"} <= seen


def test_the_patterns_would_catch_a_misspelt_state() -> None:
    bad = "redis.call('HSET', KEYS[1], 'state', 'runing')\nif st[1] ~= 'pendng' then return 0 end"
    assert _literals(bad) == {"runing", "pendng"}


def test_live_and_final_states_partition_the_enum() -> None:
    assert set(LIVE_STATES) | set(FINAL_STATES) == set(TaskState)
    assert not set(LIVE_STATES) & set(FINAL_STATES)
    assert all(s.final for s in FINAL_STATES) and not any(s.final for s in LIVE_STATES)
