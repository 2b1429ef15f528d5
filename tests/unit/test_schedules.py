"""Schedules' ticks on a fixed clock: cron in a time zone across both DST changes, every_s on the
epoch's multiples, the catch-up policy, the deterministic task ids, and each field's one-line 422."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest

from taskherd.errors import InvalidInput
from taskherd.schedules import CRON_RE, Schedule, rfc3339, task_id

BERLIN = ZoneInfo("Europe/Berlin")
TASK = {"type": "report", "payload": {"x": 1}}


def ms(*args: int, tz: dt.tzinfo = BERLIN) -> int:
    return round(dt.datetime(*args, tzinfo=tz).timestamp() * 1000)


def berlin(ms_: int) -> str:
    return dt.datetime.fromtimestamp(ms_ / 1000, BERLIN).isoformat()


def ticks(schedule: Schedule, start: int, n: int) -> list[str]:
    out, at = [], start
    for _ in range(n):
        at = schedule.after(at)
        out.append(berlin(at))
    return out


def test_a_daily_cron_in_berlin_keeps_its_local_time_across_the_spring_and_autumn_changes() -> None:
    # Given 02:30 every day in Europe/Berlin
    s = Schedule.from_input("nightly", {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "task": TASK})
    # Then on 29 March 2026 (02:00 -> 03:00, 02:30 does not exist) it fires at 03:00 CEST, the moment after the gap,
    assert ticks(s, ms(2026, 3, 27, 12), 3) == ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00",
                                                "2026-03-30T02:30:00+02:00"]
    # and on 25 October 2026 (03:00 -> 02:00, 02:30 twice) once, at the first 02:30
    assert ticks(s, ms(2026, 10, 23, 12), 3) == ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00",
                                                 "2026-10-26T02:30:00+01:00"]


def test_a_half_hourly_cron_fires_in_both_repeated_hours_of_the_autumn_change() -> None:
    s = Schedule.from_input("half", {"cron": "*/30 * * * *", "timezone": "Europe/Berlin", "task": TASK})
    fired = ticks(s, ms(2026, 10, 25, 1, 50), 5)
    assert fired == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T02:00:00+01:00",
                     "2026-10-25T02:30:00+01:00", "2026-10-25T03:00:00+01:00"]
    # every one half an hour after the one before: no tick doubled, none skipped
    at = [ms(2026, 10, 25, 1, 50)]
    for _ in range(5):
        at.append(s.after(at[-1]))
    assert {b - a for a, b in zip(at[1:], at[2:])} == {30 * 60_000}


def test_the_same_cron_in_utc_and_in_berlin_fires_an_hour_apart_in_winter() -> None:
    utc = Schedule.from_input("u", {"cron": "0 9 * * MON-FRI", "task": TASK})
    local = Schedule.from_input("b", {"cron": "0 9 * * mon-fri", "timezone": "Europe/Berlin", "task": TASK})
    start = ms(2026, 12, 6, 12, tz=dt.UTC)  # a Sunday
    assert rfc3339(utc.after(start)) == "2026-12-07T09:00:00Z"
    assert rfc3339(local.after(start)) == "2026-12-07T08:00:00Z"
    assert rfc3339(local.after(start), "Europe/Berlin") == "2026-12-07T09:00:00+01:00"


def test_every_s_ticks_on_the_multiples_of_its_period_since_the_epoch() -> None:
    s = Schedule.from_input("e", {"every_s": 60, "task": TASK})
    assert s.after(120_000) == 180_000 and s.after(120_001) == 180_000 and s.after(179_999) == 180_000
    assert s.latest(179_999) == 120_000 and s.latest(180_000) == 180_000


def test_ticks_overdue_within_catch_up_fire_each_and_an_older_backlog_fires_once_as_its_latest() -> None:
    s = Schedule.from_input("e", {"every_s": 10, "catch_up_s": 30, "task": TASK})
    # 25 s late: that tick fires, then the next one
    assert s.plan(100_000, 125_000) == (100_000, 110_000)
    # 35 s late: every manager was away; one firing, as the latest tick by now, then on from the next
    assert s.plan(100_000, 135_000) == (130_000, 140_000)
    # catch_up_s 0 coalesces whatever is overdue
    zero = Schedule.from_input("z", {"every_s": 10, "catch_up_s": 0, "task": TASK})
    assert zero.plan(100_000, 100_000) == (100_000, 110_000)
    assert zero.plan(100_000, 125_000) == (120_000, 130_000)


def test_a_cron_backlog_fires_as_its_latest_tick() -> None:
    s = Schedule.from_input("c", {"cron": "*/5 * * * *", "catch_up_s": 60, "task": TASK})
    next_ms, now = ms(2026, 12, 6, 10, 0, tz=dt.UTC), ms(2026, 12, 6, 10, 17, 30, tz=dt.UTC)
    tick, following = s.plan(next_ms, now)
    assert (rfc3339(tick), rfc3339(following)) == ("2026-12-06T10:15:00Z", "2026-12-06T10:20:00Z")


def test_task_ids_come_from_the_name_and_the_tick_and_the_job_defaults_to_the_name() -> None:
    s = Schedule.from_input("nightly", {"cron": "@daily", "fire_time_key": "tick", "task": TASK})
    at = ms(2026, 12, 6, 14, 30, tz=dt.UTC)
    assert task_id("nightly", at) == "sched-nightly-20261206T143000Z"
    sub = s.submission(at)
    assert (sub.id, sub.job, sub.type) == ("sched-nightly-20261206T143000Z", "nightly", "report")
    assert sub.payload == {"x": 1, "tick": "2026-12-06T14:30:00Z"}
    assert Schedule.from_input("n", {"every_s": 5, "task": {**TASK, "job": "reports"}}).submission(at).job == "reports"


def test_the_definition_round_trips_and_is_the_same_text_for_the_same_schedule() -> None:
    body = {"cron": "@hourly", "timezone": "Asia/Tokyo", "task": {"payload": {"b": 2, "a": 1}, "type": "t"}}
    s = Schedule.from_input("r", body)
    again = Schedule.from_definition("r", s.definition())
    assert again.definition() == s.definition() and again.after(0) == s.after(0)
    assert Schedule.from_input("r", dict(reversed(list(body.items())))).definition() == s.definition()


@pytest.mark.parametrize(("body", "field"), [
    ({"cron": "* * * *"}, "cron"),
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "5-1 * * * *"}, "cron"),
    ({"cron": "0 0 31 2 *"}, "cron"),
    ({"cron": "0 0 * * *", "every_s": 5}, "cron"),
    ({}, "cron"),
    ({"every_s": 0}, "every_s"),
    ({"every_s": 1.5}, "every_s"),
    ({"every_s": 5, "timezone": "Europe/Nowhere"}, "timezone"),
    ({"every_s": 5, "catch_up_s": -1}, "catch_up_s"),
    ({"every_s": 5, "task": {"type": "bad type"}}, "task.type"),
    ({"every_s": 5, "task": {**TASK, "priority": 10}}, "task.priority"),
    ({"every_s": 5, "task": {**TASK, "payload": [1]}}, "task.payload"),
    ({"every_s": 5, "crn": "x"}, "crn"),
])
def test_each_bad_field_is_named(body: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        Schedule.from_input("s", {"task": TASK, **body})
    assert exc.value.field == field, exc.value
    assert "\n" not in str(exc.value)


def test_a_bad_name_is_named() -> None:
    with pytest.raises(InvalidInput) as exc:
        Schedule.from_input("no spaces", {"every_s": 5, "task": TASK})
    assert exc.value.field == "name"


def test_the_cron_pattern_admits_the_usual_forms_and_refuses_what_cron_has_not() -> None:
    for ok in ("0 9 * * 1-5", "*/15 * * * *", "0 0 1,15 * *", "30 2 * JAN-MAR sun", "@weekly", "0-59/10 8-18 * * *"):
        assert CRON_RE.fullmatch(ok), ok
    for bad in ("0 9 * * 1-5 *", "60 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 * 13 *", "0 0 * * 8", "@often",
                "*/0 * * * *", " 0 * * * *", "0 0 L * *"):
        assert not CRON_RE.fullmatch(bad), bad
    assert re.compile(CRON_RE.pattern)  # ECMA-262 as well: no inline flags, no lookbehind
    assert "(?i" not in CRON_RE.pattern and "(?<" not in CRON_RE.pattern


def test_the_sdk_schedules_a_declared_executor_with_one_put() -> None:
    import json as _json

    from taskherd.client import Client
    from taskherd.sdk import App
    from tests.unit import test_schedules as here

    sent = []

    def api(method: str, target: str, body: bytes | None) -> tuple[int, bytes]:
        sent.append((method, target, _json.loads(body or b"null")))
        return 201, _json.dumps({"name": "n", "status": "created", "schedule": {"next_fire_at": "x"}}).encode()

    app = App("http://127.0.0.1:1")
    app._client = Client("http://127.0.0.1:1", transport=api)
    report = app.executor("report")(here.berlin)
    assert report.schedule("nightly", {"a": 1}, cron="30 2 * * *", timezone="Europe/Berlin") == {"next_fire_at": "x"}
    assert sent == [("PUT", "/schedules/nightly", {"cron": "30 2 * * *", "timezone": "Europe/Berlin",
                                                   "task": {"type": "report", "payload": {"a": 1}}})]


def test_a_scheduled_task_carries_its_priority_where_the_intake_takes_one() -> None:
    import dataclasses

    from taskherd.intake import Submission

    if "priority" not in {f.name for f in dataclasses.fields(Submission)}:
        pytest.skip("the Intake takes no priority yet")
    s = Schedule.from_input("p", {"every_s": 5, "task": {**TASK, "priority": 8}})
    assert s.submission(5000).priority == 8  # type: ignore[attr-defined]


def test_a_stored_schedule_this_host_cannot_read_is_skipped_not_a_crash() -> None:
    from taskherd.schedules import Schedules

    class Store:
        """A store holding one schedule in a time zone this host does not know."""

        class schedules:  # named as the real StateStore's attribute
            @staticmethod
            def definition(name: str) -> str:
                return '{"catch_up_s":60,"cron":"0 * * * *","task":{"payload":{},"type":"t"},"timezone":"Mars/Olympus"}'

            @staticmethod
            def advance(*args: object) -> bool:
                raise AssertionError("nothing may be advanced")

    assert Schedules(Store(), intake=object())._fire("x", 0, 10_000) == []  # type: ignore[arg-type]
    assert rfc3339(0, "Mars/Olympus") == "1970-01-01T00:00:00Z"
