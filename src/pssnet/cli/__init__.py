"""The ``pssnet`` command line: one sub-module per command, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..errors import UserError
from ..fileio import os_error_message
from . import adapt_cmd, demo_cmd, eval_cmd, export_cmd, lut_cmd, info_cmd, serve_cmd, train_cmd

# Each module adds its sub-command parser and sets ``func`` to the function that runs it.
COMMAND_MODULES = [info_cmd, eval_cmd, export_cmd, adapt_cmd, train_cmd, lut_cmd, demo_cmd, serve_cmd]


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``pssnet CMD: error: ...``), exit 2, like
    every other user mistake; sub-command parsers inherit it."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = OneLineErrorParser(
        prog="pssnet",
        description="Train resource-adaptive supernets with Prioritized Subnet Sampling and deploy them.",
    )
    parser.add_argument("--version", action="version", version=f"pssnet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A :class:`UserError` (a user mistake: a bad flag, file or path, or an
    ``OSError`` of a file the user named, such as a full disk) is one line and exit 2; anything
    else is a bug in pssnet: one line naming it and exit 1 (``PSSNET_DEBUG=1`` shows the traceback)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad flag (status 2, message printed) or --help / --version (0)
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"pssnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`pssnet info ... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as exc:
        if os.environ.get("PSSNET_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, OSError) and (path_message := os_error_message(exc, action="access")):
            exc, message = UserError(path_message), path_message  # the user's path, not a bug
        if isinstance(exc, UserError):
            print(f"pssnet {args.command}: error: {message}", file=sys.stderr)
            return 2
        print(f"pssnet {args.command}: internal error: {type(exc).__name__}: {message} "
              "(a bug in pssnet; run again with PSSNET_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
