"""Run opensocket's web server for the HTTP benchmark: a chosen event loop, sendfile on or off.

    python bench/_http_serve.py DIR URL [--loop asyncio|uvloop] [--sendfile]
        [--tls-cert FILE --tls-key FILE]

``opensocket http serve`` runs on uvloop (``--no-uvloop``: asyncio's loop) and has no switch
for the plain-connection body path; this runner exposes both so the benchmark can compare
them. It serves until SIGTERM/SIGINT, with the access log off (as ``--quiet``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from opensocket.aio import run
from opensocket.http import HttpLimits, serve_http
from opensocket.options import TLSOptions


async def _serve(args: argparse.Namespace) -> None:
    tls = TLSOptions(cert_file=args.tls_cert, key_file=args.tls_key) if args.tls_cert else None
    server = await serve_http(
        args.url, args.dir, tls=tls, limits=HttpLimits(sendfile=args.sendfile)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"open {server.url}", flush=True)
    await stop.wait()
    await server.close(1.0)


def main() -> None:
    """Parse the arguments and serve until told to stop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir")
    parser.add_argument("url")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--sendfile", action="store_true")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    run(_serve(args), use_uvloop=args.loop == "uvloop")


if __name__ == "__main__":
    main()
