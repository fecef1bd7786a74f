"""The hub process of bench/chat.py: ``serve_chat`` on uvloop, as ``opensocket chat serve`` runs it.

The same call the CLI makes (``serve_chat(listen, web, options=, limits=)`` under
``aio.run(..., use_uvloop=True)``), with the benchmark's settings: the per-user rate limit
opened up (senders send far more than 5 messages/s) and connection caps above the client count.
Run as a script so the benchmark does not depend on the CLI's option set, and so ``--profile``
can run cProfile over the measured window only: SIGUSR1 starts it, SIGUSR2 stops it and
writes the stats. Prints one JSON line with the addresses, then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import resource
import signal
import sys

from opensocket import aio
from opensocket.aio.chat_server import serve_chat
from opensocket.chat import ChatOptions
from opensocket.options import ServerLimits


def _profile_signals(loop: asyncio.AbstractEventLoop, path: str) -> None:
    profiler = cProfile.Profile()

    def stop() -> None:
        profiler.disable()
        profiler.dump_stats(path)

    loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
    loop.add_signal_handler(signal.SIGUSR2, stop)


async def serve(args: argparse.Namespace) -> None:
    """Start the hub, announce it, wait for a signal, close."""
    options = ChatOptions(rate=args.rate, burst=args.burst)
    limits = ServerLimits(max_connections=args.max_conns, max_connections_per_ip=args.max_conns)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.profile:
        _profile_signals(loop, args.profile)
    server = await serve_chat([args.listen], [args.web], options=options, limits=limits)
    print(json.dumps({"native": server.urls, "web": server.web_urls}), flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="tcp://127.0.0.1:0")
    parser.add_argument("--web", default="http://127.0.0.1:0")
    parser.add_argument("--rate", type=float, default=1e6, help="per-user commands/s")
    parser.add_argument("--burst", type=int, default=1_000_000)
    parser.add_argument("--max-conns", type=int, default=20_000)
    parser.add_argument("--profile", metavar="PATH", help="cProfile the hub, stats to PATH")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    aio.run(serve(args), use_uvloop=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
