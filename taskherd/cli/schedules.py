"""`taskherd schedule add|list|show|rm`: tasks submitted on a cron expression or every N seconds."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from taskherd.cli.common import UsageError, client, command, group, parse_json, printing


def add_commands(sub: Any) -> None:
    commands = group(sub, "schedule", "submit a task on a cron expression or every N seconds")
    p = command(commands, "add", _add, "create or replace a schedule (the same one again changes nothing)")
    p.add_argument("name", metavar="NAME")
    when = p.add_mutually_exclusive_group()  # one of them is required: said in one line by _add
    when.add_argument("--cron", metavar="EXPR", help="5 fields, e.g. '30 2 * * *', or @hourly, @daily...")
    when.add_argument("--every-s", type=int, metavar="N", help="every N seconds (at the multiples of N since the epoch)")
    p.add_argument("--timezone", metavar="TZ", help="IANA time zone the cron fields are read in (default UTC)")
    p.add_argument("--catch-up-s", type=int, metavar="S",
                   help="ticks overdue by at most S fire late; older missed ones fire once (default 60)")
    p.add_argument("--fire-time-key", metavar="KEY", help="put each tick's time (RFC 3339) in the payload under KEY")
    p.add_argument("--type", required=True, help="the task type (an executor must be registered)")
    p.add_argument("--payload", default="{}", help="the task's payload, a JSON object (default {})")
    p.add_argument("--job", help="the job its tasks go into (default: the schedule's name)")
    p.add_argument("--priority", type=int, help="0-9, higher first")
    command(commands, "list", _list, "list schedules with their next and last fire times")
    show = command(commands, "show", printing(lambda api, args: api.schedule(args.name)), "show one schedule as JSON")
    show.add_argument("name", metavar="NAME")
    rm = command(commands, "rm", _rm, "delete a schedule: it fires no more")
    rm.add_argument("name", metavar="NAME")


def _add(args: argparse.Namespace) -> int:
    if args.cron is None and args.every_s is None:
        raise UsageError("schedule add: give --cron EXPR or --every-s N")
    payload = parse_json(args.payload, "--payload")
    if not isinstance(payload, dict):
        raise UsageError("--payload: expected a JSON object")
    task = {"type": args.type, "payload": payload, "job": args.job, "priority": args.priority}
    body = {"cron": args.cron, "every_s": args.every_s, "timezone": args.timezone, "catch_up_s": args.catch_up_s,
            "fire_time_key": args.fire_time_key, "task": {k: v for k, v in task.items() if v is not None}}
    with client(args) as api:
        answer = api.put_schedule(args.name, {k: v for k, v in body.items() if v is not None})
    print(f"schedule {args.name}: {answer['status']}, next fire {answer['schedule']['next_fire_at']}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with client(args) as api:
        rows = api.schedules()
    if not rows:
        print("no schedules", file=sys.stderr)
    for s in rows:
        when = s.get("cron") or f"every {s.get('every_s')} s"
        last = f"{s['last_fired_at']} {s['last_task_id']} {s['last_status']}" if s.get("last_fired_at") else "never fired"
        print(f"{s['name']}\t{when} ({s['timezone']})\tnext {s['next_fire_at']}\tlast {last}"
              + (f"\terror: {s['last_error']}" if s.get("last_error") else ""))
    return 0


def _rm(args: argparse.Namespace) -> int:
    with client(args) as api:
        api.delete_schedule(args.name)
    print(f"schedule {args.name}: deleted")
    return 0
