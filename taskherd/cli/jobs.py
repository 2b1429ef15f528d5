"""`taskherd job status|wait|cancel|teardown`: follow a job and end it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from taskherd.cli.common import client, command, group, printing
from taskherd.client import ApiUnreachable, ClientError, WaitTimeout, progress
from taskherd.states import FINAL_STATES, TaskState


def add_commands(sub: Any) -> None:
    jobs = group(sub, "job", "follow and tear down jobs")
    ls = command(jobs, "list", cmd_job_list, "list open jobs (or --state done) with their progress")
    ls.add_argument("--state", choices=("open", "done"), default="open")
    ls.add_argument("--limit", type=int, default=1000, metavar="N")
    command(jobs, "status", printing(lambda api, args: api.job(args.job)), "print a job's counts as JSON") \
        .add_argument("job")
    w = command(jobs, "wait", cmd_job_wait, "progress bar until done: exit 0, 1 with failed tasks, 3 on timeout")
    w.add_argument("job")
    w.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (default: never)")
    command(jobs, "cancel", printing(lambda api, args: api.cancel_job(args.job)),
            "cancel every live task of a job; it accepts no new ones").add_argument("job")
    t = command(jobs, "teardown", cmd_job_teardown, "delete a finished job's runtime state and verify none is left")
    t.add_argument("job")
    t.add_argument("--cancel", action="store_true",
                   help="if the job is open, cancel it first and wait (up to 30 s) for its tasks to be killed and archived")


def cmd_job_list(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    with client(args) as api:
        cursor: str | None = None
        while len(rows) < args.limit:
            page, cursor = api.jobs(args.state, min(1000, args.limit - len(rows)), cursor)
            rows += page
            if cursor is None:
                break
    if not rows:
        print(f"no {args.state} jobs", file=sys.stderr)
        return 0
    width = max(len("JOB"), *(len(r["job"]) for r in rows))
    print(f"{'JOB':<{width}}  {'DONE/TOTAL':>12}  {'FAILED':>7}  {'OPEN':>7}")
    for r in rows:
        done, total = progress(r)
        print(f"{r['job']:<{width}}  {f'{done}/{total}':>12}  {r['counts'].get(TaskState.FAILED, 0):>7}  {r['open']:>7}")
    return 0


def cmd_job_wait(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    # Drawn at the first answer, not before: an unknown job or an unreachable API prints its one-line
    # error without an empty bar above it.
    bars: list[tqdm[Any]] = []

    def show(status: dict[str, Any]) -> None:
        if not bars:
            bars.append(tqdm(total=0, desc=args.job, unit="task", dynamic_ncols=True))
        bar = bars[0]
        done, total = progress(status)
        bar.total, bar.n = total, done
        bar.set_postfix(failed=status["counts"].get(TaskState.FAILED, 0), open=status.get("open", 0), refresh=False)
        bar.refresh()

    try:
        with client(args) as api:
            status = api.wait(args.job, timeout=args.timeout, on_progress=show)
    except WaitTimeout as exc:
        for bar in bars:
            bar.close()  # before the message, so the bar does not overwrite it
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        for bar in bars:
            bar.close()
    counts = status["counts"]
    ended = ", ".join(f"{counts.get(s, 0)} {s}" for s in FINAL_STATES)
    print(f"job {args.job} done: {ended}, {status.get('total', 0)} in all")
    return 1 if counts.get(TaskState.FAILED, 0) else 0


def cmd_job_teardown(args: argparse.Namespace) -> int:
    with client(args) as api:
        try:
            api.teardown(args.job, cancel=args.cancel)
        except ClientError as exc:
            if isinstance(exc, ApiUnreachable) or not isinstance(exc.detail, dict):
                raise
            for key in exc.detail.get("leftovers", []):
                print(f"left: {key}", file=sys.stderr)
            raise
    print(f"job {args.job} torn down: no key of it is left in Redis")
    return 0
