"""The ``pssnet`` command line: one sub-module per command, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..errors import UserError
from . import adapt_cmd, demo_cmd, eval_cmd, export_cmd, lut_cmd, resources_cmd, serve_cmd, train_cmd

# Each module adds its sub-command parser and sets ``func`` to the function that runs it.
COMMAND_MODULES = [resources_cmd, eval_cmd, export_cmd, adapt_cmd, train_cmd, lut_cmd, demo_cmd, serve_cmd]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="pssnet",
        description="Train resource-adaptive supernets with Prioritized Subnet Sampling and deploy them.",
    )
    parser.add_argument("--version", action="version", version=f"pssnet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("PSSNET_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"pssnet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pssnet {args.command}: interrupted", file=sys.stderr)
        return 130
