"""``opensocket serve``: run the opensocket service on loopback.

For now the service is the framed echo server of ``opensocket echo serve`` (it will grow into a
chat hub); this module only picks the defaults and says how to connect.
"""

from __future__ import annotations

import argparse
from typing import Final

from ..errors import AddressInUse
from . import error_text, report_failure
from .echo import (
    EchoService,
    add_server_args,
    reachable_address,
    serve_echo,
    tls_client_files,
)

__all__ = ["DEFAULT_LISTEN", "HELP", "NAME", "configure", "execute"]

NAME: Final = "serve"
HELP: Final = "run the opensocket service (a framed echo service for now) on loopback"
DEFAULT_LISTEN: Final = "tcp://127.0.0.1:9000"

_EPILOG: Final = f"""\
listens on {DEFAULT_LISTEN} unless --listen says otherwise, prints the command and the Python
code that connect to it, and runs until Ctrl-C or SIGTERM (exit code 0 after a clean shutdown).

examples:
  opensocket serve
  opensocket serve --listen tcp://127.0.0.1:0 --json          # port 0: the system picks one
  opensocket serve --listen tcp://127.0.0.1:9000 --listen unix:///tmp/opensocket.sock
  opensocket serve --listen 'tcp://*:9000' --allow 10.0.0.0/8  # every interface, one network
  opensocket serve --codec json                               # JSON payloads only
  opensocket cert                                             # makes certs/ for the next line
  opensocket serve --listen tls://127.0.0.1:9443 \\
      --tls-cert certs/server.pem --tls-key certs/server-key.pem
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``serve``."""
    parser.epilog = _EPILOG
    parser.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help=f"address to listen on (repeatable; default {DEFAULT_LISTEN})",
    )
    add_server_args(parser)


def python_snippet(args: argparse.Namespace, service: EchoService) -> list[str]:
    """Three lines of Python (``python -m asyncio``) that talk to the first stream address."""
    streams = [a for a in service.addresses if not a.is_datagram]
    if not streams or service.raw:
        return []
    url = reachable_address(streams[0])
    modules, options = "opensocket", [f'"{url}"']
    codec = "bytes"  # what connect() offers by default
    if args.codec is not None:  # narrowed: the default codec may be refused
        codec = service.protocol.codecs[0]
        options.append(f'codec="{codec}"')
    if args.secret_env:
        modules += ", os"
        options.append(f'secret=os.environ["{args.secret_env}"]')
    elif args.secret_file:
        options.append(f'secret=open("{args.secret_file}", "rb").read().strip()')
    if url.is_tls:
        ca, cert, key = tls_client_files(args)
        files = [f'ca_file="{ca}"'] + ([f'cert_file="{cert}"', f'key_file="{key}"'] if cert else [])
        options.append(f"tls=opensocket.TLSOptions({', '.join(files)})")
    hello = '"hello"' if codec == "json" else 'b"hello"'  # json has no bytes
    return [
        "in Python (python -m asyncio):",
        f"  >>> import {modules}",
        f"  >>> conn = await opensocket.connect({', '.join(options)})",
        f"  >>> await conn.send({hello}); await conn.recv()",
    ]


def execute(args: argparse.Namespace) -> int:
    """Run the service until SIGINT/SIGTERM."""
    urls = args.listen or [DEFAULT_LISTEN]
    try:
        return serve_echo(args, urls, title="opensocket service", extra=python_snippet)
    except AddressInUse as exc:
        return report_failure(
            f"opensocket serve: error: {error_text(exc)}",
            1,
            json_mode=args.json,
            hint="  to run another instance, let the system pick a free port:\n"
            "  opensocket serve --listen tcp://127.0.0.1:0",
        )
