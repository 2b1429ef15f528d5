"""The `taskherd` command line: `main(argv) -> int`, a dispatch table over small command functions.

Exit codes: 0 success; 1 the API (or Redis, for `nodes`) refused or failed, or a job ended with failed
tasks; 2 bad usage or a bad config file; 3 `job wait` timed out. Errors are one line per problem on
stderr, never a traceback: `error: 409 id: task 'a' already exists ...`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskherd.client import ApiUnreachable, Client, ClientError, WaitTimeout, progress
from taskherd.config import Settings, load
from taskherd.errors import ConfigError, TaskherdError


class UsageError(TaskherdError):
    """A command's arguments cannot be used (bad JSON, missing option); exit 2."""


Command = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on bad usage; main returns instead
        return exc.code if isinstance(exc.code, int) else 2
    if args.handler is None:
        (args.group or parser).print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except ConfigError as exc:
        return _fail(exc.problems, 2, prefix="")
    except UsageError as exc:
        return _fail([str(exc)], 2)
    except ClientError as exc:
        return _fail(exc.describe().splitlines(), 1)
    except TaskherdError as exc:  # a service that would not start, a store that refused: said, not traced
        return _fail(str(exc).splitlines(), 1)
    except KeyboardInterrupt:
        return 130


def _fail(lines: list[str], code: int, prefix: str = "error: ") -> int:
    for line in lines:
        print(f"{prefix}{line}", file=sys.stderr)
    return code


# --- parser -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskherd", description="A distributed task system over NSQ, Redis and MySQL.")
    p.add_argument("--config", metavar="FILE", help="TOML configuration (built-in defaults when omitted)")
    p.add_argument("--api", metavar="URL", help="API base URL (default: http://{api.host}:{api.port} of the config)")
    p.set_defaults(handler=None, group=None)
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    group = _group(sub, "config", "check or show the configuration")
    _cmd(group, "check", cmd_config_check, "exit 0 if FILE is a usable config, else list its problems (exit 2)") \
        .add_argument("file", metavar="FILE")
    _cmd(group, "show", cmd_config_show, "print the effective configuration as TOML") \
        .add_argument("--json", action="store_true", help="print JSON instead of TOML")

    _cmd(sub, "nodes", cmd_nodes, "list live pods (reads Redis directly)")
    for kind in ("executor", "analyzer"):
        group = _group(sub, kind, f"register {kind}s")
        _spec_args(_cmd(group, "add", _spec_command(kind), f"register the {kind} of a task type"), kind)
        _cmd(group, "list", _list_command(kind), f"list registered {kind}s")

    s = _cmd(sub, "submit", cmd_submit, "submit one task, or a batch from a JSON-lines file")
    s.add_argument("--job", help="job name (the default for --file lines without one)")
    s.add_argument("--type", help="task type (the default for --file lines without one)")
    s.add_argument("--id", help="task id (idempotency key); the server makes one when omitted")
    payload = s.add_mutually_exclusive_group()
    payload.add_argument("--payload", metavar="JSON", help="payload object as JSON (default {})")
    payload.add_argument("--payload-file", metavar="FILE", help="read the payload JSON from FILE")
    payload.add_argument("--file", metavar="FILE", help="tasks as JSON lines, one task object per line")
    s.add_argument("--timeout-s", type=float)
    s.add_argument("--max-attempts", type=int)

    group = _group(sub, "task", "look at tasks")
    _cmd(group, "show", cmd_task_show, "print a task as JSON").add_argument("id")
    from taskherd import cli_control  # built on this module's helpers, so imported once they exist

    cli_control.task_commands(group)
    group = _group(sub, "job", "follow and tear down jobs")
    _cmd(group, "status", cmd_job_status, "print a job's counts as JSON").add_argument("job")
    w = _cmd(group, "wait", cmd_job_wait, "progress bar until done: exit 0, 1 with failed tasks, 3 on timeout")
    w.add_argument("job")
    w.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (default: never)")
    _cmd(group, "teardown", cmd_job_teardown, "delete the job's runtime state and verify none is left") \
        .add_argument("job")
    cli_control.job_commands(group)

    _cmd(sub, "run", cmd_run, "run one pod until SIGTERM") \
        .add_argument("--role", choices=("manager", "worker", "all"), default="all")
    u = _cmd(sub, "up", cmd_up, "run a local cluster (services + pods) until Ctrl-C")
    u.add_argument("--workers", type=int, metavar="N", help="worker pods (default [local].workers)")
    u.add_argument("--data-dir", metavar="DIR", help="data directory (default [local].data_dir)")
    d = _cmd(sub, "demo", cmd_demo, "crawl a generated site on a local cluster, end to end")
    d.add_argument("--pages", type=int, default=300, metavar="N")
    d.add_argument("--workers", type=int, default=4, metavar="N")
    return p


def _group(sub: Any, name: str, help_: str) -> Any:
    parser = sub.add_parser(name, help=help_, description=help_)
    parser.set_defaults(handler=None, group=parser)
    return parser.add_subparsers(title="commands", metavar="COMMAND")


def _cmd(sub: Any, name: str, handler: Command, help_: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_, description=help_)
    parser.set_defaults(handler=handler)
    # Also after the command (`taskherd run --role worker --config F`, as Kubernetes manifests write it).
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--api", metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _spec_args(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("task_type", metavar="TYPE")
    p.add_argument("--kind", required=True, choices=("python", "exe", "http"))
    p.add_argument("--target", required=True, help='python "pkg.mod:func"; exe a JSON array or a shell-like '
                                                   'command line; http a URL')
    p.add_argument("--id", help="spec id (default: the task type)")
    p.add_argument("--timeout-s", type=float)
    if kind == "executor":
        p.add_argument("--max-attempts", type=int)
        p.add_argument("--retry-on", action="append", metavar="NAME|CODE",
                       help="retry only on this exception type, exit code or HTTP status (repeatable)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="exe: environment variable (repeatable)")
    p.add_argument("--cwd", help="exe: working directory")
    p.add_argument("--header", action="append", metavar="NAME=VALUE", help="http: request header (repeatable)")
    p.add_argument("--description")
    p.add_argument("--replace", action="store_true", help="replace a different spec already registered")


# --- helpers ----------------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Settings:
    return load(args.config)


def _client(args: argparse.Namespace) -> Client:
    if args.api:
        return Client(args.api)
    api = _settings(args).api
    host = "127.0.0.1" if api.host in ("0.0.0.0", "::", "") else api.host
    return Client(f"http://{host}:{api.port}")


def _json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{where}: not valid JSON: {exc}") from None


def _read(path: str, where: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _pairs(items: list[str] | None, where: str) -> dict[str, str] | None:
    if not items:
        return None
    bad = [i for i in items if "=" not in i]
    if bad:
        raise UsageError(f"{where}: expected KEY=VALUE, got {bad[0]!r}")
    return dict(i.split("=", 1) for i in items)


def exe_target(text: str) -> list[str]:
    """An exe target from the command line: a JSON array, or a command line split like a shell would."""
    if text.lstrip().startswith("["):
        argv = _parse_json(text, "--target")
        if not isinstance(argv, list):
            raise UsageError("--target: expected a JSON array of strings")
        return argv
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"--target: {exc}") from None


# --- config and nodes -------------------------------------------------------------------------------
def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        load(args.file)
    except (OSError, ValueError) as exc:  # anything the loader did not already name (e.g. a NUL in the path)
        raise ConfigError([f"{args.file}: cannot read: {exc}"]) from None
    print("ok")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    data = _settings(args).model_dump(mode="json")
    if args.json:
        _json(data)
        return 0
    for section, values in data.items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"# {key} is not set" if value is None else f"{key} = {toml_value(value)}")
        print()
    return 0


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def cmd_nodes(args: argparse.Namespace) -> int:
    import redis

    from taskherd.actors.registry import live_nodes
    from taskherd.store.state_store import connect

    settings = _settings(args)
    try:
        client = connect(settings.redis)
        nodes = live_nodes(client)
    except redis.RedisError as exc:
        return _fail([f"cannot read nodes from Redis at {settings.redis.host}:{settings.redis.port}: {exc}"], 1)
    _table(nodes, ("id", "role", "host", "pid", "slots", "version", "started"))
    return 0


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    import datetime

    def cell(row: dict[str, Any], col: str) -> str:
        if col == "started" and row.get(col):
            return datetime.datetime.fromtimestamp(float(row[col])).isoformat(sep=" ", timespec="seconds")
        return str(row.get(col, ""))

    cells = [[cell(r, c) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    for line in [[c.upper() for c in columns]] + cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
    if not rows:
        print("(no live nodes)", file=sys.stderr)


# --- executors and analyzers ------------------------------------------------------------------------
def _spec_command(kind: str) -> Command:
    def add(args: argparse.Namespace) -> int:
        target = exe_target(args.target) if args.kind == "exe" else args.target
        retry_on = [int(r) if r.lstrip("-").isdigit() else r for r in getattr(args, "retry_on", None) or []]
        spec = {"id": args.id, "kind": args.kind, "target": target, "timeout_s": args.timeout_s,
                "max_attempts": getattr(args, "max_attempts", None), "retry_on": retry_on or None,
                "env": _pairs(args.env, "--env"), "cwd": args.cwd, "headers": _pairs(args.header, "--header"),
                "description": args.description}
        spec = {k: v for k, v in spec.items() if v is not None}
        with _client(args) as client:
            register = client.add_executor if kind == "executor" else client.add_analyzer
            answer = register(args.task_type, spec, replace=args.replace)
        print(f"{kind} for {args.task_type}: {answer['status']}")
        return 0
    return add


def _list_command(kind: str) -> Command:
    def list_specs(args: argparse.Namespace) -> int:
        with _client(args) as client:
            _json(client.executors() if kind == "executor" else client.analyzers())
        return 0
    return list_specs


# --- tasks and jobs ---------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    tasks = _tasks_from_file(args) if args.file else None
    with _client(args) as client:
        if tasks is None:
            answers = [client.submit(_one_task(args))]
        else:
            answers = client.submit(tasks, chunk=_settings(args).api.max_batch)
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
        payload = _parse_json(args.payload, "--payload")
    elif args.payload_file:
        payload = _parse_json(_read(args.payload_file, "--payload-file"), f"--payload-file {args.payload_file}")
    task = {"type": args.type, "job": args.job, "payload": payload, "id": args.id,
            "timeout_s": args.timeout_s, "max_attempts": args.max_attempts}
    return {k: v for k, v in task.items() if v is not None}


def _tasks_from_file(args: argparse.Namespace) -> list[dict[str, Any]]:
    defaults = {k: v for k, v in (("job", args.job), ("type", args.type), ("timeout_s", args.timeout_s),
                                  ("max_attempts", args.max_attempts)) if v is not None}
    tasks = []
    for n, line in enumerate(_read(args.file, "--file").splitlines(), 1):
        if not line.strip():
            continue
        task = _parse_json(line, f"{args.file}:{n}")
        if not isinstance(task, dict):
            raise UsageError(f"{args.file}:{n}: expected a JSON object per line")
        tasks.append({**defaults, **task})
    if not tasks:
        raise UsageError(f"{args.file}: no tasks in the file")
    return tasks


def printing(call: Callable[[Client, argparse.Namespace], Any]) -> Command:
    """A command that makes one client call and prints its answer as JSON."""
    def command(args: argparse.Namespace) -> int:
        with _client(args) as client:
            _json(call(client, args))
        return 0
    return command


cmd_task_show = printing(lambda client, args: client.task(args.id))
cmd_job_status = printing(lambda client, args: client.job(args.job))


def cmd_job_wait(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    bar = tqdm(total=0, desc=args.job, unit="task", dynamic_ncols=True)

    def show(status: dict[str, Any]) -> None:
        done, total = progress(status)
        bar.total, bar.n = total, done
        bar.set_postfix(failed=status["counts"].get("failed", 0), open=status.get("open", 0), refresh=False)
        bar.refresh()

    try:
        with _client(args) as client:
            status = client.wait(args.job, timeout=args.timeout, on_progress=show)
    except WaitTimeout as exc:
        bar.close()  # before the message, so the bar does not overwrite it
        return _fail([str(exc)], 3)
    finally:
        bar.close()
    counts = status["counts"]
    print(f"job {args.job} done: {counts.get('succeeded', 0)} succeeded, {counts.get('failed', 0)} failed, "
          f"{counts.get('cancelled', 0)} cancelled, {status.get('total', 0)} in all")
    return 1 if counts.get("failed", 0) else 0


def cmd_job_teardown(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            client.teardown(args.job)
        except ClientError as exc:
            if isinstance(exc, ApiUnreachable) or not isinstance(exc.detail, dict):
                raise
            for key in exc.detail.get("leftovers", []):
                print(f"left: {key}", file=sys.stderr)
            raise
    print(f"job {args.job} torn down: no key of it is left in Redis")
    return 0


# --- pods, local cluster, demo (implemented elsewhere; imported only when used) -----------------------
def cmd_run(args: argparse.Namespace) -> int:
    from taskherd.pod import run

    return run(_settings(args), args.role, args.config)


def cmd_up(args: argparse.Namespace) -> int:
    from taskherd.deploy.local.cluster import up

    return up(_settings(args), args.config, args.workers, args.data_dir)


def cmd_demo(args: argparse.Namespace) -> int:
    from taskherd.demo import main as demo_main

    return demo_main(_settings(args), args.config, args.pages, args.workers)
