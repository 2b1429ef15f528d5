"""The `taskherd` command line: `main(argv) -> int` over small command modules, one per resource.

Exit codes: 0 success; 1 the API (or Redis, for `nodes`) refused or failed, or a job ended with failed
tasks; 2 bad usage or a bad config file; 3 `job wait` timed out; 141 the reader of stdout closed it
(`taskherd config show | head -1`: nothing more is printed, and no error). Errors are one line per problem on
stderr, never a traceback: `error: 409 id: task 'a' already exists ...`.
"""

from __future__ import annotations

import argparse
import os
import sys

from taskherd.cli import cluster, config, jobs, schedules, specs, system, tasks
from taskherd.cli.common import UsageError
from taskherd.client import ClientError
from taskherd.errors import ConfigError, TaskherdError


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
        code: int = args.handler(args)
        sys.stdout.flush()  # here, where a closed pipe can still be answered quietly
        return code
    except BrokenPipeError:  # `taskherd config show | head -1`: the reader has all it wanted
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by a closed pipe
    except ConfigError as exc:
        return _fail(exc.problems, 2, prefix="")
    except UsageError as exc:
        return _fail([str(exc)], 2)
    except ClientError as exc:
        hint = " (pass --token or set TASKHERD_TOKEN)" if exc.status == 401 else ""
        return _fail((exc.describe() + hint).splitlines(), 1)
    except TaskherdError as exc:  # a service that would not start, a store that refused: said, not traced
        return _fail(str(exc).splitlines(), 1)
    except KeyboardInterrupt:
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _fail(lines: list[str], code: int, prefix: str = "error: ") -> int:
    for line in lines:
        print(f"{prefix}{line}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskherd", description="A distributed task system over NSQ, Redis and MySQL.")
    p.add_argument("--config", metavar="FILE", help="TOML configuration (built-in defaults when omitted)")
    p.add_argument("--api", metavar="URL", help="API base URL (default: http://{api.host}:{api.port} of the config)")
    p.add_argument("--token", metavar="TOKEN", help="the API's bearer token (default: $TASKHERD_TOKEN, which is "
                                                    "safer: a command line is visible to other users)")
    p.set_defaults(handler=None, group=None)
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    for commands in (config, cluster, specs, tasks, jobs, schedules, system):
        commands.add_commands(sub)
    return p
