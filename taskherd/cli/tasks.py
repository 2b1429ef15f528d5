"""`taskherd submit` and `taskherd task show|list|retry|cancel|wait`: put work in, look at it, act on it."""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

from taskherd.cli.common import UsageError, client, command, group, parse_json, print_json, printing, read_text, settings
from taskherd.client import ApiUnreachable, Client, ClientError, TaskFailed, TaskTimeout
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
    s.add_argument("--priority", type=int, metavar="P", help="0-9, higher first (default: the executor's, else 5)")
    when = s.add_mutually_exclusive_group()
    when.add_argument("--delay-s", type=float, metavar="S", help="do not start it before S seconds from now")
    when.add_argument("--run-at", type=_run_at, metavar="T",
                      help="do not start it before T: RFC 3339 (2026-12-24T18:00:00Z) or epoch seconds")
    s.add_argument("--submit-deadline", type=float, default=300.0, metavar="S",
                   help="while the herd is full (429), send a request again for up to S seconds (default 300)")

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
    w = command(tasks, "wait", cmd_task_wait, "wait for a task's result and print it: exit 0 ok, 1 failed or "
                "cancelled, 3 on timeout")
    w.add_argument("id")
    w.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (default: wait on)")


def cmd_task_wait(args: argparse.Namespace) -> int:
    """The executor's result as JSON the moment it is recorded (before the analysis and the archive)."""
    with client(args) as api:
        try:
            print_json(api.result(args.id, timeout=args.timeout))
        except TaskFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except TaskTimeout as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 3
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    with client(args) as api:
        api.submit_deadline = args.submit_deadline
        if args.file:
            tally = _submit_file(api, args, settings(args).api.max_batch)
        else:
            tally = _print_answers([cast(dict[str, Any], api.submit(_one_task(args)))])
    if sum(tally.values()) > 1:
        _print_tally(tally)
    return 1 if tally["conflict"] else 0


def _print_answers(answers: list[dict[str, Any]], tally: Counter[str] | None = None) -> Counter[str]:
    """Print `ID STATUS` per answer, as they come; returns the tally of statuses (added to `tally`)."""
    tally = Counter({"created": 0, "conflict": 0}) if tally is None else tally
    for a in answers:
        print(f"{a['id']} {a['status']}")
        tally[a["status"]] += 1
    sys.stdout.flush()
    return tally


def _print_tally(tally: Counter[str]) -> None:
    created, conflicts = tally["created"], tally["conflict"]
    print(f"{created} created, {sum(tally.values()) - created - conflicts} exist, {conflicts} conflict",
          file=sys.stderr)


def _submit_file(api: Client, args: argparse.Namespace, chunk: int) -> Counter[str]:
    """Stream the file `chunk` tasks at a time (each chunk all or nothing, read only as the one before
    is accepted: a full herd slows the reading down), printing each chunk's answers as they come; an
    error names the file's line (`tasks.jsonl:3: type: ...`), not the task's place in the request."""
    tally: Counter[str] = Counter({"created": 0, "conflict": 0})
    sent = False
    for tasks, lines in _chunks_of_file(args, chunk):
        try:
            _print_answers(cast(list[dict[str, Any]], api.submit(tasks, chunk=chunk)), tally)
        except ClientError as exc:
            if sent:  # what earlier chunks submitted stays submitted: they were shown, sum them up
                _print_tally(tally)
            raise _at_lines(exc, args.file, lines) from None
        sent = True
    if not sent:
        raise UsageError(f"{args.file}: no tasks in the file")
    return tally


def _at_lines(exc: ClientError, path: str, lines: list[int]) -> ClientError:
    """The API's `tasks.N.field` errors as `FILE:LINE: field`."""
    if isinstance(exc, ApiUnreachable):
        return exc
    errors = []
    for error in exc.errors:
        where = re.fullmatch(r"tasks\.(\d+)(?:\.(.+))?", str(error.get("field") or ""))
        if where and int(where[1]) < len(lines):
            error = {**error, "field": f"{path}:{lines[int(where[1])]}: {where[2] or 'task'}"}
        errors.append(error)
    return ClientError(exc.status, {**exc.detail, "errors": errors} if isinstance(exc.detail, dict) else
                       {"errors": errors})


def _one_task(args: argparse.Namespace) -> dict[str, Any]:
    if not args.job or not args.type:
        raise UsageError("submit needs --job and --type (or --file with one task per line)")
    payload: Any = {}
    if args.payload is not None:
        payload = parse_json(args.payload, "--payload")
    elif args.payload_file:
        payload = parse_json(read_text(args.payload_file, "--payload-file"), f"--payload-file {args.payload_file}")
    task = {"type": args.type, "job": args.job, "payload": payload, "id": args.id,
            "timeout_s": args.timeout_s, "max_attempts": args.max_attempts, "delay_s": args.delay_s,
            "run_at": args.run_at, "priority": args.priority}
    return {k: v for k, v in task.items() if v is not None}


def _run_at(text: str) -> float | str:
    """--run-at: epoch seconds as a number, anything else as text for the server to parse (and name)."""
    try:
        return float(text)
    except ValueError:
        return text


def _chunks_of_file(args: argparse.Namespace, chunk: int) -> Iterator[tuple[list[dict[str, Any]], list[int]]]:
    """The file's tasks `chunk` at a time, each with the lines they are on, read as they are asked for."""
    defaults = {k: v for k, v in (("job", args.job), ("type", args.type), ("timeout_s", args.timeout_s),
                                  ("max_attempts", args.max_attempts), ("delay_s", args.delay_s),
                                  ("run_at", args.run_at), ("priority", args.priority)) if v is not None}
    tasks: list[dict[str, Any]] = []
    lines: list[int] = []
    for n, line in enumerate(_lines(args.file), 1):
        if not line.strip():
            continue
        task = parse_json(line, f"{args.file}:{n}")
        if not isinstance(task, dict):
            raise UsageError(f"{args.file}:{n}: expected a JSON object per line")
        tasks.append({**defaults, **task})
        lines.append(n)
        if len(tasks) == chunk:
            yield tasks, lines
            tasks, lines = [], []
    if tasks:
        yield tasks, lines


def _lines(path: str) -> Iterator[str]:
    """The lines of `path` (`-`: stdin), read as they are asked for."""
    if path == "-":
        yield from sys.stdin
        return
    try:
        with open(path, encoding="utf-8") as f:
            yield from f
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--file {path}: {getattr(exc, 'strerror', None) or exc}") from None


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
    if not shown:
        print("no tasks", file=sys.stderr)  # stdout stays empty, for scripts reading ids
    return 0


def _retry(api: Any, args: argparse.Namespace) -> Any:
    if bool(args.id) == bool(args.job):
        raise UsageError("give a task id or --job JOB (not both)")
    return api.retry(args.id) if args.id else api.retry_job(args.job)
