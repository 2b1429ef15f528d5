"""Schedules: tasks submitted on a cron expression or every N seconds, once per tick, by every manager.

A schedule (`PUT /schedules/{name}`) is `{"cron": "30 2 * * *"}` or `{"every_s": N}`, a `timezone`
(IANA, default UTC; cron fields are read in it, so "30 2 * * *" is 02:30 in Berlin in winter and in
summer), `catch_up_s` and the `task` to submit: `{"type", "payload", "job"?, "priority"?}`.

Firing (`Schedules.fire_due`, run by every manager's Scheduler actor): a tick T of schedule S submits
one task with the id `sched-S-<T as 20261206T143000Z>` through the Intake, the same idempotent submit
users get, and then advances S's next fire time past T in one compare-and-set script (`fired.lua`).
Two managers racing for T both submit it (one creates, the other is answered 'exists') and one
advances; a manager that dies between its submit and the advance leaves T due, and whoever comes next
submits it again ('exists') and advances. So each tick fires exactly once, whoever fires it.

Ticks: `every_s` ticks at the multiples of N seconds since the Unix epoch (N = 60 fires at every whole
minute); a cron expression ticks as Debian's cron does in the schedule's timezone: a time the clocks
skip in spring fires at the moment after the gap, a time they repeat in autumn fires once (fields
with a `*` hour, like `*/30 * * * *`, fire in both repeated hours, as every real half hour passes).

Missed ticks (`catch_up_s`, default 60): a tick found overdue by at most `catch_up_s` fires late, each
one (a manager restarting, a failover, a slow sweep lose none); when the oldest overdue tick is older
than that, every manager was away: the ticks missed fire once, as the latest of them, and the schedule
goes on from the next tick (as a Kubernetes CronJob catches up). `catch_up_s: 0` always coalesces.

Where a task goes: into `task.job`, else into a job named after the schedule. With `fire_time_key`,
each task's payload also carries its tick's time under that key (RFC 3339, UTC), so a task fired late
or as a catch-up knows which tick it stands for.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cronsim import CronSim, CronSimError

from taskherd.errors import HerdFull, InvalidInput, InvalidTask
from taskherd.intake import Intake, Submission, canonical
from taskherd.specs import check_name
from taskherd.store.state_store import StateStore

log = logging.getLogger("taskherd.schedules")

DEFAULT_CATCH_UP_S = 60
MAX_CATCH_UP_S = 7 * 24 * 3600
MAX_EVERY_S = 366 * 24 * 3600
MAX_PRIORITY = 9
FIRES_PER_ROUND = 50
"""Ticks one schedule may fire in one round (ticks overdue within `catch_up_s`); more wait a round."""
TASK_FIELDS = ("type", "payload", "job", "priority")


def _either_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" for c in word)


_MONTHS = "|".join(_either_case(m) for m in "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())
_DAYS = "|".join(_either_case(d) for d in "SUN MON TUE WED THU FRI SAT".split())
_VALUES = (r"[0-5]?[0-9]", r"[01]?[0-9]|2[0-3]", r"0?[1-9]|[12][0-9]|3[01]", rf"0?[1-9]|1[0-2]|{_MONTHS}",
           rf"[0-7]|{_DAYS}")
"""What each of the five fields may hold: minute, hour, day of month, month, day of week."""
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
          "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


def _field(values: str) -> str:
    item = rf"(?:\*|(?:{values})(?:-(?:{values}))?)(?:/[1-9][0-9]?)?"
    return rf"{item}(?:,{item})*"


CRON_PATTERN = "^(?:" + " +".join(_field(v) for v in _VALUES) + "|" + "|".join(MACROS) + ")$"
"""A 5-field cron expression (numbers, JAN-DEC, SUN-SAT, `*`, ranges, `/` steps, lists) or a macro;
the API's OpenAPI pattern too, so written for both Python's `re` and ECMA-262. What it cannot say (a
range backwards, `0 0 31 2 *`: a day no listed month has) the cron parser refuses, naming the field."""
CRON_RE = re.compile(CRON_PATTERN)


@functools.cache
def timezones() -> frozenset[str]:
    """The IANA time zones this host knows (its tzdata), read once."""
    return frozenset(zoneinfo.available_timezones())


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    task: Mapping[str, Any]
    """`{"type", "payload", "job"?, "priority"?}`, as given (payload a JSON object)."""
    cron: str | None = None
    every_s: int | None = None
    timezone: str = "UTC"
    catch_up_s: int = DEFAULT_CATCH_UP_S
    fire_time_key: str | None = None
    _cron: str = field(default="", compare=False, repr=False)
    """The cron expression with a macro expanded."""

    @classmethod
    def from_input(cls, name: str, body: Mapping[str, Any]) -> Schedule:
        """Check a user's schedule; raises InvalidInput naming the field."""
        check_name("name", name)
        unknown = sorted(set(body) - {"cron", "every_s", "timezone", "catch_up_s", "task", "fire_time_key"})
        if unknown:
            raise InvalidInput(unknown[0], "unknown field")
        cron, every_s = body.get("cron"), body.get("every_s")
        if (cron is None) == (every_s is None):
            raise InvalidInput("cron", "give either cron (a 5-field cron expression) or every_s (seconds), not both"
                               if cron is not None else "give cron (a 5-field cron expression) or every_s (seconds)")
        if every_s is not None and (isinstance(every_s, bool) or not isinstance(every_s, int)
                                    or not 1 <= every_s <= MAX_EVERY_S):
            raise InvalidInput("every_s", f"expected a whole number of seconds ≥ 1 and ≤ {MAX_EVERY_S}, got {every_s!r}")
        timezone = body.get("timezone", "UTC")
        if not isinstance(timezone, str) or timezone not in timezones():
            raise InvalidInput("timezone", f"expected an IANA time zone such as 'Europe/Berlin' or 'UTC', got {timezone!r}")
        catch_up = body.get("catch_up_s", DEFAULT_CATCH_UP_S)
        if isinstance(catch_up, bool) or not isinstance(catch_up, int) or not 0 <= catch_up <= MAX_CATCH_UP_S:
            raise InvalidInput("catch_up_s", f"expected a whole number of seconds ≥ 0 and ≤ {MAX_CATCH_UP_S}, "
                                             f"got {catch_up!r}")
        key = body.get("fire_time_key")
        if key is not None:
            check_name("fire_time_key", key)
        schedule = cls(name, _task(body.get("task")), cron, every_s, timezone, catch_up, key)
        if cron is not None:
            schedule = dataclasses.replace(schedule, _cron=_cron(cron, timezone))
        return schedule

    @classmethod
    def from_definition(cls, name: str, text: str) -> Schedule:
        d = json.loads(text)
        schedule = cls(name, d["task"], d.get("cron"), d.get("every_s"), d["timezone"], d["catch_up_s"],
                       d.get("fire_time_key"))
        return dataclasses.replace(schedule, _cron=MACROS.get(d["cron"], d["cron"])) if d.get("cron") else schedule

    def definition(self) -> str:
        """Canonical JSON, as stored: the same schedule always has the same text."""
        d = {"cron": self.cron, "every_s": self.every_s, "timezone": self.timezone, "catch_up_s": self.catch_up_s,
             "task": dict(self.task), "fire_time_key": self.fire_time_key}
        return canonical({k: v for k, v in d.items() if v is not None})

    @property
    def job(self) -> str:
        return str(self.task.get("job") or self.name)

    def after(self, ms: int) -> int:
        """Its first tick strictly after `ms` (Unix ms)."""
        if self.every_s is not None:
            period = self.every_s * 1000
            return (ms // period + 1) * period
        start = dt.datetime.fromtimestamp(ms / 1000, zoneinfo.ZoneInfo(self.timezone))
        return round(next(CronSim(self._cron, start)).timestamp() * 1000)

    def latest(self, ms: int) -> int:
        """Its last tick at or before `ms`."""
        if self.every_s is not None:
            period = self.every_s * 1000
            return ms // period * period
        start = dt.datetime.fromtimestamp((ms + 1) / 1000, zoneinfo.ZoneInfo(self.timezone))
        return round(next(CronSim(self._cron, start, reverse=True)).timestamp() * 1000)

    def plan(self, next_ms: int, now_ms: int) -> tuple[int, int]:
        """(the tick to fire now, the one after it) for a schedule due at `next_ms` (≤ `now_ms`): that
        tick, when overdue by at most `catch_up_s`; else the latest tick by now, standing for all missed."""
        tick = next_ms if now_ms - next_ms <= self.catch_up_s * 1000 else max(next_ms, self.latest(now_ms))
        return tick, self.after(tick)

    def submission(self, tick_ms: int) -> Submission:
        payload = dict(self.task.get("payload") or {})
        if self.fire_time_key:
            payload[self.fire_time_key] = rfc3339(tick_ms)
        sub = Submission(type=self.task["type"], job=self.job, payload=payload, id=task_id(self.name, tick_ms))
        # The priority goes with the task where the Intake takes one (issue 16, item 2; checked, so this
        # module works on either side of that change).
        if "priority" in self.task and "priority" in {f.name for f in dataclasses.fields(Submission)}:
            extra: dict[str, Any] = {"priority": self.task["priority"]}
            sub = dataclasses.replace(sub, **extra)
        return sub


def _task(task: Any) -> dict[str, Any]:
    if not isinstance(task, Mapping):
        raise InvalidInput("task", f"expected an object with type and payload, got {type(task).__name__}")
    unknown = sorted(set(task) - set(TASK_FIELDS))
    if unknown:
        raise InvalidInput(f"task.{unknown[0]}", "unknown field")
    check_name("task.type", task.get("type"))
    if task.get("job") is not None:
        check_name("task.job", task["job"])
    payload = task.get("payload", {})
    if not isinstance(payload, Mapping):
        raise InvalidInput("task.payload", f"expected a JSON object, got {type(payload).__name__}")
    priority = task.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                 or not 0 <= priority <= MAX_PRIORITY):
        raise InvalidInput("task.priority", f"expected an integer 0-{MAX_PRIORITY}, got {priority!r}")
    return {k: v for k, v in {**task, "payload": dict(payload)}.items() if v is not None}


def _cron(text: Any, timezone: str) -> str:
    """The expression to compute with (a macro expanded); raises InvalidInput naming `cron`."""
    if not isinstance(text, str) or not CRON_RE.fullmatch(text):
        raise InvalidInput("cron", "expected 5 fields (minute hour day-of-month month day-of-week, e.g. "
                                   f"'30 2 * * *') or one of {', '.join(MACROS)}; got {text!r}")
    expr = MACROS.get(text, text)
    try:
        next(CronSim(expr, dt.datetime.now(zoneinfo.ZoneInfo(timezone))))
    except (CronSimError, StopIteration) as exc:
        raise InvalidInput("cron", f"{exc or 'never fires'} in {text!r} (a range backwards, or a day none of "
                                   "its months has?)") from None
    return expr


def task_id(name: str, tick_ms: int) -> str:
    """The id of the task a tick submits: `sched-NAME-20261206T143000Z`, the same on every manager."""
    return f"sched-{name}-{_utc(tick_ms):%Y%m%dT%H%M%SZ}"


def rfc3339(ms: int, timezone: str = "UTC") -> str:
    """`ms` in RFC 3339, in `timezone` (in UTC should this host's tzdata not know it)."""
    try:
        when = _utc(ms).astimezone(zoneinfo.ZoneInfo(timezone))
    except (ValueError, KeyError):
        timezone, when = "UTC", _utc(ms)
    return when.isoformat().replace("+00:00", "Z") if timezone == "UTC" else when.isoformat()


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


class Schedules:
    """Schedules over the store and the Intake: what the API, the dashboard and the Scheduler use.
    Thread-safe (the store and the Intake are)."""

    def __init__(self, store: StateStore, intake: Intake | None = None) -> None:
        self.store, self.intake = store, intake

    # --- the API's side ------------------------------------------------------------------------------
    def put(self, schedule: Schedule) -> str:
        """'created' | 'replaced' | 'unchanged'. A new or changed schedule fires first at its first
        tick after now; the same one again keeps its next fire time."""
        first = schedule.after(self.store.now_ms())
        return self.store.schedules.put(schedule.name, schedule.definition(), first)

    def delete(self, name: str) -> bool:
        return self.store.schedules.delete(name)

    def get(self, name: str) -> dict[str, Any] | None:
        row = self.store.schedules.get(name)
        return None if row is None else view(row)

    def all(self) -> list[dict[str, Any]]:
        """Every schedule with its next fire time and its last firing, by name (`view`)."""
        return [view(row) for row in self.store.schedules.all()]

    # --- the Scheduler's side ------------------------------------------------------------------------
    def fire_due(self) -> list[str]:
        """Fire every tick due now (see the module's doc); the ids of the tasks submitted. Raises
        StoreError or QueueError when a service fails (what was not advanced fires next round)."""
        assert self.intake is not None, "firing needs the Intake"
        now = self.store.now_ms()
        fired: list[str] = []
        for name, next_ms in self.store.schedules.due(now):
            fired += self._fire(name, next_ms, now)
        return fired

    def _fire(self, name: str, next_ms: int, now: int) -> list[str]:
        fired: list[str] = []
        for _ in range(FIRES_PER_ROUND):
            text = self.store.schedules.definition(name)
            if text is None:
                break
            try:
                schedule = Schedule.from_definition(name, text)
                tick, following = schedule.plan(next_ms, now)
            except (ValueError, KeyError, CronSimError) as exc:  # this host's tzdata or cronsim differs
                log.error("schedule %s cannot be fired by this manager: %s: %s", name, type(exc).__name__, exc)
                break
            record = self._submit(schedule, tick)
            if record is None:  # the herd is full: the tick waits (and coalesces past catch_up_s)
                break
            if tick != next_ms:
                record["missed_from"] = next_ms
                log.warning("schedule %s: ticks from %s missed (no manager was firing); fired once for %s", name,
                            rfc3339(next_ms), rfc3339(tick))
            if not self.store.schedules.advance(name, text, next_ms, following, record):
                break  # another manager advanced it, or it was replaced or deleted meanwhile
            if record.get("status") in ("created", "exists"):
                fired.append(record["task"])
            if following > now:
                break
            next_ms = following
        return fired

    def _submit(self, schedule: Schedule, tick: int) -> dict[str, Any] | None:
        """The record of one tick's firing, or None when it must wait (the herd is full)."""
        assert self.intake is not None
        sub = schedule.submission(tick)
        record: dict[str, Any] = {"at": tick, "task": sub.id}
        try:
            record["status"] = self.intake.submit([sub], where="task", bounded=True)[0].status
        except HerdFull as exc:
            log.warning("schedule %s: tick %s waits: %s", schedule.name, rfc3339(tick), exc)
            return None
        except InvalidTask as exc:  # the executor went, or its spec now refuses the task: skip the tick, say why
            record.update(status="error", error=str(exc))
            log.warning("schedule %s: tick %s not submitted: %s", schedule.name, rfc3339(tick), exc)
        if record["status"] == "conflict":
            record["error"] = f"task {sub.id} exists with another payload (the schedule was replaced?)"
        log.debug("schedule %s: tick %s -> %s %s", schedule.name, rfc3339(tick), sub.id, record["status"])
        return record


def view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A schedule as the API shows it: its definition, `next_fire_ms`/`next_fire_at` (RFC 3339 in its
    timezone) and its last firing: `last_fired_ms`/`last_fired_at`, `last_task_id`, `last_status`
    (created, exists, error...) and `last_error`."""
    d = json.loads(row["definition"])
    tz, fired = d["timezone"], row.get("fired") or {}
    out: dict[str, Any] = {"name": row["name"], **d}
    out["next_fire_ms"] = row.get("next_ms")
    out["next_fire_at"] = rfc3339(row["next_ms"], tz) if row.get("next_ms") is not None else None
    out["last_fired_ms"] = fired.get("at")
    out["last_fired_at"] = rfc3339(fired["at"], tz) if fired.get("at") is not None else None
    out["last_task_id"] = fired.get("task")
    out["last_status"] = fired.get("status")
    out["last_error"] = fired.get("error")
    return out
