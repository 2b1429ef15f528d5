"""What every command module shares: the usage error, how a command is declared, how it reaches the
API (`client`) and the configuration (`settings`), and small readers and printers."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskherd.client import TOKEN_ENV, Client
from taskherd.config import Settings, load
from taskherd.errors import TaskherdError


class UsageError(TaskherdError):
    """A command's arguments cannot be used (bad JSON, missing option); exit 2."""


Command = Callable[[argparse.Namespace], int]


def group(sub: Any, name: str, help_: str) -> Any:
    """A command group (`taskherd task ...`); returns its subparsers."""
    parser = sub.add_parser(name, help=help_, description=help_)
    parser.set_defaults(handler=None, group=parser)
    return parser.add_subparsers(title="commands", metavar="COMMAND")


def command(sub: Any, name: str, handler: Command, help_: str) -> argparse.ArgumentParser:
    """A command; `--config` and `--api` are accepted after it too (`taskherd run --role worker
    --config F`, as Kubernetes manifests write it)."""
    parser = sub.add_parser(name, help=help_, description=help_)
    parser.set_defaults(handler=handler)
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--api", metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--token", metavar="TOKEN", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def settings(args: argparse.Namespace) -> Settings:
    return load(args.config)


def client(args: argparse.Namespace) -> Client:
    """The API's client: at --api, else at the config's [api]; with --token, else $TASKHERD_TOKEN."""
    given = getattr(args, "token", None)
    token = os.environ.get(TOKEN_ENV) if given is None else given
    if token is not None and not all("!" <= c <= "~" for c in token):  # named, never shown: a secret
        where = "--token" if given is not None else f"${TOKEN_ENV}"
        raise UsageError(f"{where}: holds a space, a control or a non-ASCII character, which a bearer token cannot")
    if args.api:
        url = args.api if "://" in args.api else f"http://{args.api}"  # `--api host:port` means http
        try:
            return Client(url, token=token)
        except ValueError as exc:
            raise UsageError(f"--api {args.api}: {exc}") from None
    api = settings(args).api
    host = "127.0.0.1" if api.host in ("0.0.0.0", "::", "") else api.host
    return Client(f"http://{host}:{api.port}", token=token)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{where}: not valid JSON: {exc}") from None


def read_text(path: str, where: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def printing(call: Callable[[Client, argparse.Namespace], Any]) -> Command:
    """A command that makes one client call and prints its answer as JSON."""
    def run(args: argparse.Namespace) -> int:
        with client(args) as api:
            print_json(call(api, args))
        return 0
    return run
