"""The soak's analyzer, imported by the manager pods (their working directory is the repository).

`tree` turns a task of a job tree into its children: a payload with `depth` > 0 has `fanout` children,
ids `PARENT.0`, `PARENT.1`, ..., one level shallower; every task leaves one record. The ids are
deterministic, so `tree_ids` says the whole tree before it runs and a re-run analyzer adds nothing.
"""

from __future__ import annotations

from typing import Any


def tree(given: dict[str, Any]) -> dict[str, Any]:
    task, payload = given["task"], given["task"]["payload"]
    children = []
    if payload.get("depth", 0) > 0:
        for i in range(payload["fanout"]):
            child_id = f"{task['id']}.{i}"
            children.append({"id": child_id, "payload": {**payload, "id": child_id, "depth": payload["depth"] - 1}})
    return {"children": children, "record": {"task": task["id"], "host": given["result"].get("host", "?")}}


def tree_ids(root: str, depth: int, fanout: int) -> list[str]:
    """Every task id of the tree under `root`."""
    out, level = [root], [root]
    for _ in range(depth):
        level = [f"{p}.{i}" for p in level for i in range(fanout)]
        out += level
    return out
