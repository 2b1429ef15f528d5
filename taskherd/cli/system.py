"""`taskherd teardown --all`: tear the whole system down (every job, the NSQ topics; `--stop`: the pods)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from taskherd.cli.common import UsageError, client, command
from taskherd.client import ApiUnreachable, ClientError


def add_commands(sub: Any) -> None:
    t = command(sub, "teardown", cmd_teardown,
                "tear down every job and taskherd's NSQ topics; verify Redis holds no task, job or lease key")
    t.add_argument("--all", action="store_true", help="required: the whole system (one job: taskherd job teardown)")
    t.add_argument("--cancel-open", action="store_true",
                   help="cancel open jobs first and wait (up to 30 s) for their tasks to be killed and archived")
    t.add_argument("--stop", action="store_true",
                   help="then ask every registered pod to exit (workers drain first, the manager last)")


def cmd_teardown(args: argparse.Namespace) -> int:
    if not args.all:
        raise UsageError("teardown needs --all (it ends every job); to tear down one job: taskherd job teardown JOB")
    with client(args) as api:
        try:
            done = api.teardown_all(cancel_open=args.cancel_open, stop=args.stop)
        except ClientError as exc:
            if isinstance(exc, ApiUnreachable) or not isinstance(exc.detail, dict):
                raise
            for key in exc.detail.get("leftovers", []):
                print(f"left: {key}", file=sys.stderr)
            for job, counts in (exc.detail.get("open_jobs") or {}).items():
                print(f"open: {job} {counts}", file=sys.stderr)
            raise
    for job in done["cancelled"]:
        print(f"cancelled job {job}")
    print(f"torn down {len(done['jobs'])} job(s){': ' + ', '.join(done['jobs']) if done['jobs'] else ''}")
    print(f"deleted topic(s): {', '.join(done['topics_deleted']) or '(none was there)'}")
    if done.get("topics_emptied"):
        print(f"emptied topic(s) running pods are subscribed to (--stop deletes them too): "
              f"{', '.join(done['topics_emptied'])}")
    print("Redis holds no task, job or lease key")
    if done["stopping"]:
        print(f"asked {len(done['stopping'])} pod(s) to exit: {', '.join(done['stopping'])}")
    for node in done["not_stopped"]:
        print(f"still running when the wait was over: {node}", file=sys.stderr)
    return 0
