"""ScheduleStore: schedules in Redis, under a hash tag of their own (`keys.SCHEDULES` and beside it).

A schedule is a definition (canonical JSON, written by the API), a next fire time (a sorted set every
manager's Scheduler polls) and its last firing. Each change is one script: create or replace
(`schedule.lua`), delete (`unschedule.lua`), and the advance past a submitted tick (`fired.lua`), a
compare-and-set on the next fire time, so managers racing for one tick advance it once.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any, cast

from taskherd.store import keys
from taskherd.store.connection import Client
from taskherd.store.errors import store_errors


def digest(definition: str) -> str:
    """What `fired.lua` compares to tell that a schedule was not replaced since it was read."""
    return hashlib.sha1(definition.encode()).hexdigest()  # a fingerprint, as Redis's sha1hex


@store_errors("redis")
class ScheduleStore:
    """Thread-safe (redis-py's pool). Every method raises StoreError when Redis fails."""

    def __init__(self, client: Client) -> None:
        self._redis = client
        self._scripts = {name: client.register_script(
            resources.files("taskherd.store").joinpath(f"lua/{name}.lua").read_text())
            for name in ("schedule", "unschedule", "fired")}

    def put(self, name: str, definition: str, first_ms: int) -> str:
        """'created' | 'replaced' | 'unchanged' (the same definition: its next fire time stays)."""
        return str(self._scripts["schedule"](keys=[keys.SCHEDULES, keys.SCHEDULE_NEXT],
                                             args=[name, definition, first_ms]))

    def delete(self, name: str) -> bool:
        """Whether it existed."""
        return bool(self._scripts["unschedule"](keys=[keys.SCHEDULES, keys.SCHEDULE_NEXT, keys.SCHEDULE_FIRED],
                                                args=[name]))

    def advance(self, name: str, definition: str, next_ms: int, following_ms: int, record: dict[str, Any]) -> bool:
        """Move the next fire time from `next_ms` to `following_ms` and keep `record` as the last
        firing, only if `next_ms` is still the next fire time of this very `definition`."""
        return bool(self._scripts["fired"](keys=[keys.SCHEDULES, keys.SCHEDULE_NEXT, keys.SCHEDULE_FIRED],
                                           args=[name, digest(definition), next_ms, following_ms,
                                                 json.dumps(record, separators=(",", ":"))]))

    def due(self, now_ms: int, limit: int = 100) -> list[tuple[str, int]]:
        """(name, next fire time) of the schedules due by `now_ms`, earliest first."""
        rows = cast(list[tuple[str, float]], self._redis.zrangebyscore(
            keys.SCHEDULE_NEXT, "-inf", now_ms, start=0, num=limit, withscores=True))
        return [(name, int(score)) for name, score in rows]

    def definition(self, name: str) -> str | None:
        return cast(str | None, self._redis.hget(keys.SCHEDULES, name))

    def get(self, name: str) -> dict[str, Any] | None:
        """`{name, definition (JSON text), next_ms, fired (dict or None)}`, or None."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hget(keys.SCHEDULES, name)
        pipe.zscore(keys.SCHEDULE_NEXT, name)
        pipe.hget(keys.SCHEDULE_FIRED, name)
        definition, next_ms, fired = pipe.execute()
        return _row(name, definition, next_ms, fired)

    def all(self) -> list[dict[str, Any]]:
        """Every schedule as `get` gives it, by name."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(keys.SCHEDULES)
        pipe.zrange(keys.SCHEDULE_NEXT, 0, -1, withscores=True)
        pipe.hgetall(keys.SCHEDULE_FIRED)
        definitions, nexts, fired = pipe.execute()
        next_by_name = dict(nexts)
        rows = (_row(n, definitions[n], next_by_name.get(n), fired.get(n)) for n in sorted(definitions))
        return [r for r in rows if r is not None]


def _row(name: str, definition: str | None, next_ms: float | None, fired: str | None) -> dict[str, Any] | None:
    if definition is None:
        return None
    return {"name": name, "definition": definition, "next_ms": None if next_ms is None else int(next_ms),
            "fired": json.loads(fired) if fired else None}
