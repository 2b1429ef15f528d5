"""CLI verbs that act on submitted work: cancel, retry, and the dead-letter listing."""

from __future__ import annotations

import argparse
from typing import Any

from taskherd.cli import UsageError, _client, _cmd, printing


def task_commands(group: Any) -> None:
    p = _cmd(group, "list", cmd_task_list, "list archived tasks in a final state (failed: the dead letters)")
    p.add_argument("--state", required=True, choices=("failed", "cancelled", "succeeded"))
    p.add_argument("--job", help="only this job")
    p.add_argument("--limit", type=int, default=1000)
    p = _cmd(group, "retry", cmd_task_retry, "requeue a failed or cancelled task (or every failed task of --job)")
    p.add_argument("id", nargs="?")
    p.add_argument("--job")
    _cmd(group, "cancel", cmd_task_cancel, "cancel a task; a running one is killed").add_argument("id")


def job_commands(group: Any) -> None:
    _cmd(group, "cancel", cmd_job_cancel, "cancel every live task of a job; it accepts no new ones").add_argument("job")


def cmd_task_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        cursor: str | None = None
        shown = 0
        while shown < args.limit:
            ids, cursor = client.tasks(args.state, args.job, min(1000, args.limit - shown), cursor)
            for task_id in ids:
                print(task_id)
            shown += len(ids)
            if cursor is None:
                break
    return 0


def _retry(client: Any, args: argparse.Namespace) -> Any:
    if bool(args.id) == bool(args.job):
        raise UsageError("give a task id or --job JOB (not both)")
    return client.retry(args.id) if args.id else client.retry_job(args.job)


cmd_task_retry = printing(_retry)
cmd_task_cancel = printing(lambda client, args: client.cancel(args.id))
cmd_job_cancel = printing(lambda client, args: client.cancel_job(args.job))
