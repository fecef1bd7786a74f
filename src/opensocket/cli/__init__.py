"""The ``opensocket`` command line. Each subcommand lives in its own module here.

A command module defines ``NAME``, ``HELP``, ``configure(parser)`` and ``execute(args) -> int``.
A module serving several commands (``_MODULES``) defines ``HELPS`` and ``configure(parser, name)``
instead. Two-word commands (``opensocket echo serve``) have their own parser, chosen when both
words lead the command line. Every command is also callable in-process as
``main([NAME, *args]) -> int``.

Exit codes: 0 success, 1 failure, 2 usage error (bad options, a malformed or unusable address,
an invalid option value: AddressError and ConfigError), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from types import ModuleType
from typing import NoReturn

from .. import __version__
from ..errors import AddressError, ConfigError, OpenSocketError

__all__ = ["main", "run"]

COMMANDS = ("serve", "echo", "connect", "listen", "cert")
_MODULES = {"connect": "pipe", "listen": "pipe", "echo serve": "echo"}
_NESTED = ("echo serve",)  # hidden from the command list; 'echo --help' points to it


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
    for name in COMMANDS + _NESTED:
        module = _module(name)
        text = module.HELP if name not in _MODULES else module.HELPS[name]
        sub = subparsers.add_parser(
            name,
            prog=f"{parser.prog} {name}",
            description=text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **({"help": text} if name not in _NESTED else {}),
        )
        add_verbosity(sub)
        if name in _MODULES:
            module.configure(sub, name)
        else:
            module.configure(sub)
    return parser


def _join_nested(argv: list[str]) -> list[str]:
    """``["echo", "serve", ...]`` -> ``["echo serve", ...]``: the two words name one parser."""
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in _NESTED:
        return [f"{argv[0]} {argv[1]}", *argv[2:]]
    return argv


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
    argv = _join_nested(sys.argv[1:] if argv is None else list(argv))
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
    except (AddressError, ConfigError) as exc:
        print(f"opensocket {args.command}: error: {error_text(exc)}", file=sys.stderr)
        return 2
    except OpenSocketError as exc:
        print(f"opensocket {args.command}: error: {error_text(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1


def error_text(exc: BaseException) -> str:
    """The message of an error, without the ``[Errno N]`` prefix of OSError subclasses."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _open_missing_std_fds() -> None:
    """Put /dev/null on a closed stdin/stdout/stderr, so that no socket gets fd 0-2 (libuv
    aborts when it closes one, and a stray print would write into a connection)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # takes the lowest free descriptor: this one


def run() -> NoReturn:
    """Console-script entry point."""
    _open_missing_std_fds()
    sys.exit(main())
