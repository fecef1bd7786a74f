"""The ``opensocket`` command line. Each subcommand lives in its own module here.

A command module defines ``NAME``, ``HELP``, ``configure(parser)`` and ``execute(args) -> int``.
A module serving several commands (``_MODULES``) defines ``HELPS`` and ``configure(parser, name)``
instead. Two-word commands (``opensocket echo serve``) have their own parser, chosen when both
words lead the command line. Every command is also callable in-process as
``main([NAME, *args]) -> int``.

Exit codes: 0 success, 1 failure, 2 usage error (bad options, a malformed or unusable address,
an invalid option value: AddressError and ConfigError), 130 interrupted. A failure is one line
on stderr; with ``--json`` it is also a JSON object on stdout: ``{"error": "...", "exit": N}``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
from types import ModuleType
from typing import NoReturn

from .. import __version__
from ..errors import AddressError, ConfigError, OpenSocketError

__all__ = ["UsageError", "build_parser", "main", "parse_args", "report_failure", "run"]

# In the order of the top-level help: the hub and its client first, then the servers and
# clients people build on, then the troubleshooting tools.
COMMANDS = (
    "serve",
    "chat",
    "echo",
    "connect",
    "listen",
    "broker",
    "http",
    "send",
    "receive",
    "cert",
    "scan",
    "ping",
    "stat",
    "bench",
    "proxy",
)
_MODULES = {
    "connect": "pipe",
    "listen": "pipe",
    "echo serve": "echo",
    "send": "transfer",
    "receive": "transfer",
    "bench serve": "bench",
    "proxy ctl": "proxy",
    "chat": "chat",
    "chat serve": "chat_serve",
}
# Two-word commands have a parser of their own, not listed among COMMAND's choices;
# 'echo --help' points to 'echo serve'.
_NESTED = ("echo serve", "bench serve", "proxy ctl", "chat serve")


class UsageError(Exception):
    """A command line that does not parse (exit code 2); the usage line is already printed."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{prog}: error: {message}")
        self.message = message


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of exiting, so that ``main`` can report
    the error in JSON too and return 2 in-process."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(self.prog, message)


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"opensocket.cli.{_MODULES.get(name, name)}")


def _configure(parser: argparse.ArgumentParser, name: str) -> None:
    add_verbosity(parser)
    module = _module(name)
    if name in _MODULES:
        module.configure(parser, name)
    else:
        module.configure(parser)
    parser.set_defaults(command=name)


def _help(name: str) -> str:
    module = _module(name)
    return str(module.HELPS[name] if name in _MODULES else module.HELP)


def _command_parser(name: str) -> _Parser:
    """A command's parser on its own (``opensocket NAME``), outside the top-level one."""
    parser = _Parser(
        prog=f"opensocket {name}",
        description=_help(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _configure(parser, name)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser with every one-word command."""
    parser = _Parser(
        prog="opensocket",
        description="Build, run, test and debug socket applications.",
        epilog="Run 'opensocket COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"opensocket {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        sub = subparsers.add_parser(
            name,
            prog=f"opensocket {name}",
            description=_help(name),
            help=_help(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _configure(sub, name)
    return parser


def _parser_for(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser for ``argv`` and the arguments it parses (two-word commands have their own)."""
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in _NESTED:
        return _command_parser(f"{argv[0]} {argv[1]}"), argv[2:]
    if argv and argv[0] in COMMANDS:
        # only this command's module is imported: start-up time matters for quick tools
        return _command_parser(argv[0]), argv[1:]
    return build_parser(), argv


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse a command line; raise UsageError (usage printed) or SystemExit (--help)."""
    parser, rest = _parser_for(argv)
    args, extra = parser.parse_known_args(rest)
    if extra:
        # the command's own parser reports it, with the command's usage line
        own = parser if parser.prog != "opensocket" else _command_parser(args.command)
        own.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """-v / -vv, shared by every command."""
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
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
    except UsageError as exc:
        return report_failure(str(exc), 2, json_mode="--json" in argv)
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    setup_logging(args.verbose)
    module = _module(args.command)
    json_mode = bool(getattr(args, "json", False))
    prefix = f"opensocket {args.command}: error: "
    try:
        return int(module.execute(args))
    except KeyboardInterrupt:
        from ._common import report_interrupted  # here: start-up time matters for quick tools

        return report_interrupted(args.command, json_mode=json_mode)
    except (AddressError, ConfigError) as exc:
        return report_failure(prefix + error_text(exc), 2, json_mode=json_mode)
    except OpenSocketError as exc:
        return report_failure(prefix + error_text(exc), 1, json_mode=json_mode)
    except BrokenPipeError:
        return 1


def report_failure(line: str, code: int, *, json_mode: bool, hint: str = "") -> int:
    """Report a failure: one line (and a ``hint``) on stderr; with --json also a JSON object on
    stdout. Return ``code``."""
    print(line, file=sys.stderr)
    if hint:
        print(hint, file=sys.stderr)
    if json_mode:
        message = line.split(": error: ", 1)[-1]
        with contextlib.suppress(OSError):
            sys.stdout.write(json.dumps({"error": message, "exit": code}) + "\n")
            sys.stdout.flush()
    return code


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
