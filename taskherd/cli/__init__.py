"""The `taskherd` command line (`main`); one module of commands per resource, `common` for what they share."""

from taskherd.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
