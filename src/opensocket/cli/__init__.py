"""The ``opensocket`` command line. Each subcommand lives in its own module here.

A command module defines ``NAME``, ``HELP``, ``configure(parser)`` and ``execute(args) -> int``.
Every command is also callable in-process as ``main([NAME, *args]) -> int``.
Exit codes: 0 success, 1 failure, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType
from typing import NoReturn

from .. import __version__
from ..errors import OpenSocketError

__all__ = ["main", "run"]

COMMANDS = ("serve", "echo", "connect", "listen", "cert")
_MODULES = {"connect": "pipe", "listen": "pipe"}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"opensocket.cli.{_MODULES.get(name, name)}")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="opensocket",
        description="Build, run, test and debug socket applications.",
        epilog="Run 'opensocket COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"opensocket {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = _module(name)
        sub = subparsers.add_parser(
            name,
            help=module.HELP if name not in _MODULES else module.HELPS[name],
            description=module.HELP if name not in _MODULES else module.HELPS[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_verbosity(sub)
        if name in _MODULES:
            module.configure(sub, name)
        else:
            module.configure(sub)
    return parser


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """-v / -vv / -q, shared by every command."""
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )


def setup_logging(verbosity: int) -> None:
    """Log to stderr at WARNING, INFO (-v) or DEBUG (-vv)."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("opensocket").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    setup_logging(args.verbose)
    module = _module(args.command)
    try:
        return int(module.execute(args))
    except KeyboardInterrupt:
        return 130
    except OpenSocketError as exc:
        print(f"opensocket {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
