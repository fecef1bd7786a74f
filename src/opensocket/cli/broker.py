"""``opensocket broker``: a request/reply or publish/subscribe broker between two addresses."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

from .. import aio
from ..address import parse_address
from ..aio.messaging import Broker
from ..errors import AddressError
from ._common import add_uvloop_arg, check_positive, print_json, stop_on_signals

__all__ = ["HELP", "configure", "execute"]

HELP: Final = "forward requests to workers, or publications to subscribers, through one broker"

_EPILOG: Final = """\
reqrep: requesters (opensocket.aio.messaging.Requester) connect to --front; workers
(Replier) connect to --back and get the requests round-robin; each reply goes back to its
requester. A worker that dies holding requests: the retryable ones go to another worker, the
others get an error reply.

pubsub: publishers (Publisher) connect to --front; subscribers (Subscriber) connect to --back.
The subscribers' prefixes are forwarded to the publishers, so unwanted topics never leave them.

Payloads pass through unchanged, so any codec works end to end. Prints the bound addresses
(the real port for port 0; --json: one JSON line) and runs until Ctrl-C or SIGTERM, then prints
a summary.

examples:
  opensocket broker --mode reqrep --front tcp://127.0.0.1:5555 --back tcp://127.0.0.1:5556
  opensocket broker --mode pubsub --front tcp://127.0.0.1:0 --back unix:///tmp/bus.sock --json
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the broker's options."""
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--mode", choices=("reqrep", "pubsub"), required=True)
    parser.add_argument("--front", required=True, metavar="URL", help="requesters / publishers")
    parser.add_argument("--back", required=True, metavar="URL", help="workers / subscribers")
    parser.add_argument(
        "--request-timeout",
        type=float,
        metavar="SECONDS",
        help="reqrep: answer with an error when no worker replied in time (default: wait)",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout")
    add_uvloop_arg(parser)


def execute(args: argparse.Namespace) -> int:
    """Run the broker until SIGINT/SIGTERM."""
    for url, flag in ((args.front, "--front"), (args.back, "--back")):
        addr = parse_address(url)
        if addr.scheme not in ("tcp", "unix"):
            raise AddressError(f"{flag} {url}: the broker command listens on tcp:// or unix://")
    check_positive(args.request_timeout, "--request-timeout")
    summary: dict[str, Any] = {}

    async def main() -> None:
        broker = Broker(args.mode, request_timeout=args.request_timeout)
        with stop_on_signals() as stop:
            try:
                front, back = await broker.bind(args.front, args.back)
                if args.json:
                    print_json(
                        {"event": "listening", "mode": args.mode, "front": front, "back": back}
                    )
                else:
                    print(f"{args.mode} broker: front {front}, back {back}", flush=True)
                await stop.wait()
            finally:
                summary.update(_summary(broker))
                await broker.close(linger=1.0)

    aio.run(main(), use_uvloop=not args.no_uvloop)
    if args.json:
        print_json({"event": "stopped", **summary})
    else:
        sys.stdout.write(f"stopped: forwarded {summary['forwarded']}, failed {summary['failed']}\n")
    return 0


def _summary(broker: Broker) -> dict[str, Any]:
    stats = broker.stats
    return {
        "forwarded": stats["forwarded"],
        "failed": stats["failed"],
        "front_in": stats["front"].messages_in,
        "back_out": stats["back"].messages_out,
    }
