"""``opensocket http serve [DIR]``: serve a folder over HTTP or HTTPS."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Final

from ..errors import ConfigError
from ..http import HttpLimits, serve_http
from ..http.access import LOG_FORMATS
from ..http.server import access_log, http_address
from ._common import (
    add_limit_args,
    add_tls_args,
    check_tls_flags,
    limits_from,
    stop_on_signals,
    tls_from,
)

__all__ = ["DEFAULT_LISTEN", "HELP", "NAME", "configure", "execute"]

NAME: Final = "http"
HELP: Final = "HTTP/1.1 tools: 'http serve [DIR]' serves a folder over HTTP or HTTPS"
DEFAULT_LISTEN: Final = "127.0.0.1:8000"

_EPILOG: Final = f"""\
serves DIR (default: the current folder) on {DEFAULT_LISTEN} unless --listen says otherwise,
prints the URL to open, and runs until Ctrl-C or SIGTERM (exit code 0 after a clean shutdown).
Files are answered with ETag/Last-Modified, conditional requests and Range requests; a folder
shows its index.html or a listing. Nothing outside DIR is ever served, nor hidden files unless
--show-hidden. -v logs every request in common log format.

examples:
  opensocket http serve                                   # the current folder on {DEFAULT_LISTEN}
  opensocket http serve ./site --listen 127.0.0.1:0       # port 0: the system picks one
  opensocket cert                                         # makes certs/ for the next line
  opensocket http serve ./site --listen https://127.0.0.1:8443 \\
      --tls-cert certs/server.pem --tls-key certs/server-key.pem
  opensocket http serve ./site --listen http://127.0.0.1:8080 --listen https://127.0.0.1:8443 \\
      --tls-cert certs/server.pem --tls-key certs/server-key.pem --redirect-https
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``http``: the ``serve`` action and its options."""
    parser.epilog = _EPILOG
    parser.add_argument("action", choices=("serve",), help="what to do (serve: run a web server)")
    parser.add_argument("dir", nargs="?", default=".", metavar="DIR", help="folder to serve")
    parser.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help=f"HOST:PORT, http://, https:// (tcp://, tls://) to listen on; repeatable "
        f"(default {DEFAULT_LISTEN})",
    )
    parser.add_argument("--show-hidden", action="store_true", help="serve and list dot-files too")
    parser.add_argument(
        "--keepalive-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="close idle keep-alive connections after this long (default: 15)",
    )
    parser.add_argument(
        "--access-log",
        choices=LOG_FORMATS,
        default="common",
        help="access log on stdout: common (default), combined or json (one object a line)",
    )
    parser.add_argument("--quiet", action="store_true", help="no access log")
    parser.add_argument(
        "--redirect-https",
        action="store_true",
        help="answer requests on the http:// addresses with a redirect to the https:// one",
    )
    add_tls_args(parser, server=True)
    add_limit_args(parser)


@contextlib.contextmanager
def _access_to_stdout(enabled: bool) -> Iterator[None]:
    """Access-log lines, bare, on stdout while the server runs (a web server's main output)."""
    if not enabled:
        yield
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level, old_propagate = access_log.level, access_log.propagate
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    try:
        yield
    finally:
        access_log.removeHandler(handler)
        access_log.setLevel(old_level)
        access_log.propagate = old_propagate


async def _run(args: argparse.Namespace) -> int:
    addrs = [http_address(u) for u in args.listen or [DEFAULT_LISTEN]]
    check_tls_flags(args, addrs)
    if args.keepalive_timeout <= 0:
        raise ConfigError("--keepalive-timeout must be a positive number of seconds")
    if not os.path.isdir(args.dir):
        raise ConfigError(f"{args.dir!r} is not a folder: give the folder to serve")
    with stop_on_signals() as stop, _access_to_stdout(not args.quiet):
        server = await serve_http(
            addrs,
            args.dir,
            tls=tls_from(args, server=True),
            limits=HttpLimits(keepalive_timeout=args.keepalive_timeout),
            server_limits=limits_from(args),
            show_hidden=args.show_hidden,
            log_format=args.access_log,
            redirect_https=args.redirect_https,
        )
        print(f"serving {server.files.root}", flush=True)
        for url in server.urls:
            print(f"open {url}", flush=True)
        try:
            await stop.wait()
        finally:
            await server.close()
    return 0


def execute(args: argparse.Namespace) -> int:
    """Run the web server until SIGINT/SIGTERM."""
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:  # pragma: no cover - signals are handled by stop_on_signals
        print("interrupted", file=sys.stderr)
        return 130
