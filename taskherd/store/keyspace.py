"""Keyspace: whole-system reads of taskherd's keys, for a system teardown (`POST /system/teardown`).

A job's own teardown finds its keys from the job and never scans (`StateStore.teardown`); a teardown
of the whole system may scan taskherd's prefix, as it must prove that nothing of any job is left, even
of a job no set names any more.

What a system teardown keeps (`KEPT`), as none of it is task, job or lease state: executor and
analyzer specs and the specs version (configuration: a later start runs the same task types), the
live pods' registrations and a teardown's request to stop them (each expires with its pod), the
active TimeoutWatcher's singleton lease (the manager's, not a task's; it expires within seconds of
the manager's exit), the task-id index entries that are tombstones of tasks archived in the last 10 s or claims
never confirmed (`th:{i:*}`, each with a TTL), and the tombstones of a job's tasks archived in the
last 10 s (`th:gone:*`): task ids and digests that expire on their own; waiting them out
would add 10 s to every teardown, the
dashboard's per-second counters (`th:series:*`, statistics that expire on their own after
`series.RETENTION_S`). The count of open tasks is kept at 0 and is a leftover only when it is not.
"""

from __future__ import annotations

import re
from typing import cast

from taskherd.store import keys
from taskherd.store.connection import Client
from taskherd.store.errors import store_errors

KEPT_PREFIXES = (keys.executor(""), keys.analyzer(""), keys.node(""), keys.TOMBSTONES, keys.SERIES, keys.LIMITS)
_INDEX = keys.index("")[:-1]
"""Prefix of the task-id index: an entry with a TTL (a tombstone, an unconfirmed claim) is kept, one
without (a live task's) is a leftover."""
KEPT = frozenset((keys.SPECS_VERSION, keys.NODES, keys.STOP, keys.WATCHER_LEASE,
                  keys.SCHEDULES, keys.SCHEDULE_NEXT, keys.SCHEDULE_FIRED))
"""Kept too: the schedules (configuration, like the specs: a later start fires them on; DELETE them to stop)."""
MAX_LISTED = 1000
"""Leftovers listed at most (a teardown that leaves more says how many more)."""
_JOB_TAG = re.compile(re.escape(keys.PREFIX) + r":\{j:(.*?)\}:")


@store_errors("redis")
class Keyspace:
    """Thread-safe (redis-py's pool). Every method raises StoreError when Redis fails."""

    def __init__(self, client: Client) -> None:
        self._redis = client

    def jobs(self) -> list[str]:
        """Every job Redis holds anything of: the open ones, the done ones, and any whose keys remain."""
        found = set(cast(set[str], self._redis.smembers(keys.JOBS)))
        found |= set(cast(list[str], self._redis.zrange(keys.JOBS_DONE, 0, -1)))
        for name in self._redis.scan_iter(match=keys.PREFIX + ":{j:*", count=1000):
            tagged = _JOB_TAG.match(name)
            if tagged:
                found.add(tagged[1])
        return sorted(found)

    def leftovers(self) -> list[str]:
        """taskherd's keys that are task, job or lease state (all but `KEPT`), sorted, at most
        MAX_LISTED (then a last line says how many more)."""
        left = sorted(name for name in self._redis.scan_iter(match=keys.PREFIX + ":*", count=1000)
                      if name not in KEPT and not name.startswith(KEPT_PREFIXES)
                      and not (name.startswith(_INDEX) and self._redis.pttl(name) != -1))
        if keys.OPEN_TASKS in left and self._redis.get(keys.OPEN_TASKS) in ("0", None):
            left.remove(keys.OPEN_TASKS)
        if len(left) > MAX_LISTED:
            return left[:MAX_LISTED] + [f"... and {len(left) - MAX_LISTED} more"]
        return left
