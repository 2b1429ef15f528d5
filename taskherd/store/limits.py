"""LimitStore: a task type's rate and concurrency limits in Redis, global across every pod.

Why apart from the task's own scripts: a limit is shared by every job's tasks of a type, while a
task's transitions touch only its job's keys (one Redis Cluster slot, `{j:JOB}`). So the limit lives
under the type's own hash tag (`{t:TYPE}`) and a start is safe in two steps: `take` a seat and a
token, then lease the task; a lease that fails gives the seat back (`give`). A worker that dies
between the two leaves a seat that lapses with the lease TTL, since seats are scored by expiry and
renewed (`hold`) only by the LeaseKeeper that holds them; a token taken for a failed lease is not
returned (the rate can only come out lower).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from taskherd.specs import TypeLimits
from taskherd.store import keys
from taskherd.store.connection import Client
from taskherd.store.errors import store_errors


@dataclass(frozen=True, slots=True)
class Wait:
    """Over a limit: try again after `ms` (`why`: 'rate' or 'concurrency')."""

    ms: int
    why: str


@store_errors("redis")
class LimitStore:
    """Thread-safe (redis-py's pool). Every method raises StoreError when Redis fails."""

    def __init__(self, client: Client) -> None:
        self._redis = client
        self._scripts = {name: client.register_script(
            resources.files("taskherd.store").joinpath(f"lua/{name}.lua").read_text())
            for name in ("take", "give", "seats")}

    def take(self, task_type: str, limits: TypeLimits, exec_id: str, ttl_ms: int) -> Wait | None:
        """A token and a seat for `exec_id`, or how long to wait (nothing taken then)."""
        args: list[Any] = ["" if limits.rate_per_s is None else repr(float(limits.rate_per_s)), limits.burst,
                           "" if limits.max_concurrency is None else limits.max_concurrency, exec_id, ttl_ms]
        r = self._scripts["take"](keys=[keys.rate_bucket(task_type), keys.seats(task_type)], args=args)
        return None if int(r[0]) == 1 else Wait(int(r[1]), r[2].decode() if isinstance(r[2], bytes) else str(r[2]))

    def give(self, task_type: str, exec_id: str) -> bool:
        return bool(self._scripts["give"](keys=[keys.seats(task_type)], args=[exec_id]))

    def hold(self, seats: dict[str, str], ttl_ms: int) -> None:
        """Renew seats (exec id -> task type), one script per type, in one round trip."""
        by_type: dict[str, list[str]] = {}
        for exec_id, task_type in seats.items():
            by_type.setdefault(task_type, []).append(exec_id)
        if not by_type:
            return
        pipe = self._redis.pipeline(transaction=False)
        for task_type, ids in by_type.items():
            self._scripts["seats"](keys=[keys.seats(task_type)], args=[ttl_ms, *ids], client=pipe)
        pipe.execute()

    def running(self, task_type: str) -> int:
        """Seats held now (lapsed ones not yet purged are not counted)."""
        return int(self._redis.zcount(keys.seats(task_type), f"({self._now_ms()}", "+inf"))

    def _now_ms(self) -> int:
        sec, usec = self._redis.time()
        return int(sec) * 1000 + int(usec) // 1000
