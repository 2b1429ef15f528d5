"""`taskherd submit` and `taskherd task show|list|retry|cancel`: put work in, look at it, act on it."""

from __future__ import annotations

import argparse
import sys
from typing import Any, cast

from taskherd.cli.common import UsageError, client, command, group, parse_json, printing, read_text, settings
from taskherd.states import FINAL_STATES


def add_commands(sub: Any) -> None:
    s = command(sub, "submit", cmd_submit, "submit one task, or a batch from a JSON-lines file")
    s.add_argument("--job", help="job name (the default for --file lines without one)")
    s.add_argument("--type", help="task type (the default for --file lines without one)")
    s.add_argument("--id", help="task id (idempotency key); the server makes one when omitted")
    payload = s.add_mutually_exclusive_group()
    payload.add_argument("--payload", metavar="JSON", help="payload object as JSON (default {})")
    payload.add_argument("--payload-file", metavar="FILE", help="read the payload JSON from FILE")
    payload.add_argument("--file", metavar="FILE", help="tasks as JSON lines, one task object per line")
    s.add_argument("--timeout-s", type=float)
    s.add_argument("--max-attempts", type=int)

    tasks = group(sub, "task", "look at tasks")
    command(tasks, "show", printing(lambda api, args: api.task(args.id)), "print a task as JSON").add_argument("id")
    p = command(tasks, "list", cmd_task_list, "list archived tasks in a final state (failed: the dead letters)")
    p.add_argument("--state", required=True, choices=[str(s) for s in FINAL_STATES])
    p.add_argument("--job", help="only this job")
    p.add_argument("--limit", type=int, default=1000)
    p = command(tasks, "retry", printing(_retry), "requeue a failed or cancelled task (or every failed task of --job)")
    p.add_argument("id", nargs="?")
    p.add_argument("--job")
    command(tasks, "cancel", printing(lambda api, args: api.cancel(args.id)),
            "cancel a task; a running one is killed").add_argument("id")


def cmd_submit(args: argparse.Namespace) -> int:
    tasks = _tasks_from_file(args) if args.file else None
    with client(args) as api:
        if tasks is None:
            answers = [cast(dict[str, Any], api.submit(_one_task(args)))]
        else:
            answers = cast(list[dict[str, Any]], api.submit(tasks, chunk=settings(args).api.max_batch))
    for a in answers:
        print(f"{a['id']} {a['status']}")
    conflicts = sum(a["status"] == "conflict" for a in answers)
    if len(answers) > 1:
        created = sum(a["status"] == "created" for a in answers)
        print(f"{created} created, {len(answers) - created - conflicts} exist, {conflicts} conflict",
              file=sys.stderr)
    return 1 if conflicts else 0


def _one_task(args: argparse.Namespace) -> dict[str, Any]:
    if not args.job or not args.type:
        raise UsageError("submit needs --job and --type (or --file with one task per line)")
    payload: Any = {}
    if args.payload is not None:
        payload = parse_json(args.payload, "--payload")
    elif args.payload_file:
        payload = parse_json(read_text(args.payload_file, "--payload-file"), f"--payload-file {args.payload_file}")
    task = {"type": args.type, "job": args.job, "payload": payload, "id": args.id,
            "timeout_s": args.timeout_s, "max_attempts": args.max_attempts}
    return {k: v for k, v in task.items() if v is not None}


def _tasks_from_file(args: argparse.Namespace) -> list[dict[str, Any]]:
    defaults = {k: v for k, v in (("job", args.job), ("type", args.type), ("timeout_s", args.timeout_s),
                                  ("max_attempts", args.max_attempts)) if v is not None}
    tasks = []
    for n, line in enumerate(read_text(args.file, "--file").splitlines(), 1):
        if not line.strip():
            continue
        task = parse_json(line, f"{args.file}:{n}")
        if not isinstance(task, dict):
            raise UsageError(f"{args.file}:{n}: expected a JSON object per line")
        tasks.append({**defaults, **task})
    if not tasks:
        raise UsageError(f"{args.file}: no tasks in the file")
    return tasks


def cmd_task_list(args: argparse.Namespace) -> int:
    with client(args) as api:
        cursor: str | None = None
        shown = 0
        while shown < args.limit:
            ids, cursor = api.tasks(args.state, args.job, min(1000, args.limit - shown), cursor)
            for task_id in ids:
                print(task_id)
            shown += len(ids)
            if cursor is None:
                break
    return 0


def _retry(api: Any, args: argparse.Namespace) -> Any:
    if bool(args.id) == bool(args.job):
        raise UsageError("give a task id or --job JOB (not both)")
    return api.retry(args.id) if args.id else api.retry_job(args.job)
