"""`taskherd executor|analyzer add|list`: register and list executors and analyzers."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from taskherd.cli.common import Command, UsageError, client, command, group, parse_json, printing
from taskherd.client import ApiUnreachable, ClientError
from taskherd.specs import KINDS, SPEC_KINDS


def add_commands(sub: Any) -> None:
    for kind in SPEC_KINDS:
        commands = group(sub, kind, f"register {kind}s")
        _spec_args(command(commands, "add", _add_command(kind), f"register the {kind} of a task type"), kind)
        command(commands, "list", printing(_lister(kind)), f"list registered {kind}s")


def _spec_args(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("task_type", metavar="TYPE")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--target", required=True, help='python "pkg.mod:func"; exe a JSON array or a shell-like '
                                                   'command line; http a URL')
    p.add_argument("--id", help="spec id (default: the task type)")
    p.add_argument("--timeout-s", type=float)
    if kind == "executor":
        p.add_argument("--max-attempts", type=int)
        p.add_argument("--retry-on", action="append", metavar="NAME|CODE",
                       help="retry only on this exception type, exit code or HTTP status (repeatable)")
        p.add_argument("--rate-limit-per-s", type=float, metavar="R", help="tasks of this type started per second, herd-wide")
        p.add_argument("--rate-burst", type=int, metavar="B", help="starts at once after a quiet spell (default max(1, R))")
        p.add_argument("--max-concurrency", type=int, metavar="N", help="executions of this type at once, herd-wide")
        p.add_argument("--priority", type=int, metavar="P", help="default priority of its tasks, 0-9 (default 5)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="exe: environment variable (repeatable)")
    p.add_argument("--cwd", help="exe: working directory")
    p.add_argument("--header", action="append", metavar="NAME=VALUE", help="http: request header (repeatable)")
    p.add_argument("--description")
    p.add_argument("--replace", action="store_true", help="replace a different spec already registered")
    p.add_argument("--no-check", action="store_true",
                   help="register a target that exists only where the workers run (no module or program "
                        "check on the manager's host)")


def _add_command(kind: str) -> Command:
    def add(args: argparse.Namespace) -> int:
        target = exe_target(args.target) if args.kind == "exe" else args.target
        retry_on = [int(r) if r.lstrip("-").isdigit() else r for r in getattr(args, "retry_on", None) or []]
        spec = {"id": args.id, "kind": args.kind, "target": target, "timeout_s": args.timeout_s,
                "max_attempts": getattr(args, "max_attempts", None), "retry_on": retry_on or None,
                "env": _pairs(args.env, "--env"), "cwd": args.cwd, "headers": _pairs(args.header, "--header"),
                "description": args.description, **{name: getattr(args, name, None) for name in
                                                    ("rate_limit_per_s", "rate_burst", "max_concurrency", "priority")}}
        spec = {k: v for k, v in spec.items() if v is not None}
        with client(args) as api:
            register = api.add_executor if kind == "executor" else api.add_analyzer
            try:
                answer = register(args.task_type, spec, replace=args.replace, check=not args.no_check)
            except ClientError as exc:
                raise in_cli_words(exc) from None
        print(f"{kind} for {args.task_type}: {answer['status']}")
        return 0
    return add


API_WORDS = {"register with check=false": "add --no-check", "pass replace=true": "add --replace"}
"""How the API's messages name its query parameters -> this command's flags."""


def in_cli_words(exc: ClientError) -> ClientError:
    """The API's error, naming the command's flags instead of the API's query parameters."""
    if isinstance(exc, ApiUnreachable):
        return exc
    errors = []
    for error in exc.errors:
        message = str(error.get("message", ""))
        for api_words, cli_words in API_WORDS.items():
            message = message.replace(api_words, cli_words)
        errors.append({**error, "message": message})
    detail = {**exc.detail, "errors": errors} if isinstance(exc.detail, dict) else {"errors": errors}
    return ClientError(exc.status, detail)


def _lister(kind: str) -> Any:
    return lambda api, _args: api.executors() if kind == "executor" else api.analyzers()


def exe_target(text: str) -> list[str]:
    """An exe target from the command line: a JSON array, or a command line split like a shell would."""
    if text.lstrip().startswith("["):
        argv = parse_json(text, "--target")
        if not isinstance(argv, list):
            raise UsageError("--target: expected a JSON array of strings")
        return argv
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"--target: {exc}") from None


def _pairs(items: list[str] | None, where: str) -> dict[str, str] | None:
    if not items:
        return None
    bad = [i for i in items if "=" not in i]
    if bad:
        raise UsageError(f"{where}: expected KEY=VALUE, got {bad[0]!r}")
    return dict(i.split("=", 1) for i in items)
