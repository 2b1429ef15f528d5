"""`taskherd config check|show`: validate a configuration file, print the effective one."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from taskherd.cli.common import command, group, print_json, settings
from taskherd.config.loader import check, tokens
from taskherd.config.toml_out import dumps
from taskherd.errors import ConfigError


def add_commands(sub: Any) -> None:
    commands = group(sub, "config", "check or show the configuration")
    command(commands, "check", cmd_config_check, "exit 0 if FILE is a usable config, else list its problems (exit 2)") \
        .add_argument("file", metavar="FILE")
    command(commands, "show", cmd_config_show, "print the effective configuration as TOML") \
        .add_argument("--json", action="store_true", help="print JSON instead of TOML")


def cmd_config_check(args: argparse.Namespace) -> int:
    """'ok' and exit 0 for a usable file (deprecated keys are listed as warnings on stderr)."""
    try:
        checked, deprecated = check(args.file)
        tokens(checked.auth)  # [auth].tokens_file too: what the manager pod reads at start
    except (OSError, ValueError) as exc:  # anything the loader did not already name (e.g. a NUL in the path)
        raise ConfigError([f"{args.file}: cannot read: {exc}"]) from None
    for line in deprecated:
        print(f"warning: {line}", file=sys.stderr)
    print("ok")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    config = settings(args)
    if args.json:
        print_json(config.model_dump(mode="json"))
    else:
        print(dumps(config, unset_as_comments=True))
    return 0
