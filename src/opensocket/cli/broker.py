"""``opensocket broker``: a request/reply or publish/subscribe broker between two addresses."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

from .. import aio
from ..address import Address, parse_address
from ..aio.messaging import Broker
from ..errors import AddressError, ConfigError
from ..messaging import Balance
from ..options import ProtocolOptions, TLSOptions
from ._common import (
    add_protocol_args,
    add_tls_args,
    add_uvloop_arg,
    check_positive,
    check_tls_flags,
    print_json,
    protocol_from,
    stop_on_signals,
    tls_from,
)

__all__ = ["HELP", "configure", "execute"]

HELP: Final = "forward requests to workers, or publications to subscribers, through one broker"

_EPILOG: Final = """\
reqrep: requesters (opensocket.aio.messaging.Requester) connect to --front; workers
(Replier) connect to --back. Each request goes to the worker with the fewest outstanding
requests, ties in turn (--balance least-loaded, the default: a slow worker gets less), or
strictly in turn (--balance round-robin); each reply goes back to its requester. A worker that
dies holding requests: the retryable ones go to another worker, the others get an error reply.

pubsub: publishers (Publisher) connect to --front; subscribers (Subscriber) connect to --back.
The subscribers' prefixes are forwarded to the publishers, so unwanted topics never leave them.

Payloads pass through unchanged, so any codec works end to end. A tls:// address needs
--tls-cert and --tls-key (the peers connecting to it need the CA, e.g. --tls-ca); a shared
secret (--secret-env VAR or --secret-file FILE, never on the command line where ps shows it)
applies to both ends: every requester, worker, publisher and subscriber must use it too.

Prints the bound addresses (the real port for port 0; --json: one JSON line with
"event": "listening") and runs until Ctrl-C or SIGTERM, then prints a summary (--json: one
line with "event": "stopped"). Exit status: 0 stopped, 1 failure, 2 usage.

examples:
  opensocket broker --mode reqrep --front tcp://127.0.0.1:5555 --back tcp://127.0.0.1:5556
  opensocket broker --mode reqrep --front tcp://127.0.0.1:5555 --back tcp://127.0.0.1:5556 \\
      --balance round-robin --request-timeout 30
  opensocket broker --mode pubsub --front tcp://127.0.0.1:0 --back unix:///tmp/bus.sock --json
  opensocket cert                          # CA + server certificate in ./certs
  opensocket broker --mode reqrep --front tls://127.0.0.1:5555 --back tls://127.0.0.1:5556 \\
      --tls-cert certs/server.pem --tls-key certs/server-key.pem
  opensocket broker --mode pubsub --front tcp://127.0.0.1:5557 --back tcp://127.0.0.1:5558 \\
      --secret-env BROKER_SECRET           # export BROKER_SECRET=... (8+ bytes) first
"""

_SCHEMES: Final = ("tcp", "tls", "unix")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the broker's options."""
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--mode",
        choices=("reqrep", "pubsub"),
        required=True,
        help="reqrep: requests to workers and back; pubsub: publications to subscribers",
    )
    parser.add_argument(
        "--front", required=True, metavar="URL", help="requesters / publishers connect here"
    )
    parser.add_argument(
        "--back", required=True, metavar="URL", help="workers / subscribers connect here"
    )
    parser.add_argument(
        "--balance",
        choices=("least-loaded", "round-robin"),
        default=None,
        help="reqrep: how workers are chosen (default: least-loaded)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        metavar="SECONDS",
        help="reqrep: answer with an error when no worker replied in time (default: wait)",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout")
    add_tls_args(parser, server=True)
    # no --codec: payloads pass through the broker as they are
    add_protocol_args(parser, codec=False, title="framed protocol (both ends)")
    add_uvloop_arg(parser)


def _addresses(args: argparse.Namespace) -> tuple[Address, Address]:
    """Both addresses, checked: a scheme the broker serves, TLS files for tls://."""
    addrs = []
    for url, flag in ((args.front, "--front"), (args.back, "--back")):
        addr = parse_address(url)
        if addr.scheme not in _SCHEMES:
            raise AddressError(
                f"{flag} {url}: the broker command listens on tcp://, tls:// or unix://"
            )
        if addr.is_tls and not (args.tls_cert and args.tls_key):
            raise ConfigError(
                f"{flag} {url}: a tls:// address needs --tls-cert and --tls-key "
                "(create them with 'opensocket cert')"
            )
        addrs.append(addr)
    check_tls_flags(args, addrs)
    return addrs[0], addrs[1]


def _settings(args: argparse.Namespace) -> tuple[ProtocolOptions, TLSOptions | None]:
    """Check the options; return the protocol and TLS options of both ends."""
    if args.mode == "pubsub":
        for value, flag in (
            (args.balance, "--balance"),
            (args.request_timeout, "--request-timeout"),
        ):
            if value is not None:
                raise ConfigError(f"{flag} applies to --mode reqrep only")
    check_positive(args.request_timeout, "--request-timeout")
    return protocol_from(args), tls_from(args, server=True)


def execute(args: argparse.Namespace) -> int:
    """Run the broker until SIGINT/SIGTERM."""
    front_addr, back_addr = _addresses(args)
    protocol, tls = _settings(args)
    balance: Balance = "round-robin" if args.balance == "round-robin" else "least-loaded"
    summary: dict[str, Any] = {}

    async def main() -> None:
        broker = Broker(
            args.mode,
            request_timeout=args.request_timeout,
            balance=balance,
            protocol=protocol,
            front_tls=tls if front_addr.is_tls else None,
            back_tls=tls if back_addr.is_tls else None,
        )
        with stop_on_signals() as stop:
            try:
                front, back = await broker.bind(args.front, args.back)
                _banner(args, front, back, balance, protocol)
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


def _banner(
    args: argparse.Namespace, front: str, back: str, balance: str, protocol: ProtocolOptions
) -> None:
    """The start banner: where to connect (never the secret, only whether one is set)."""
    info: dict[str, Any] = {"mode": args.mode, "front": front, "back": back}
    if args.mode == "reqrep":
        info["balance"] = balance
    info["secret"] = protocol.secret is not None
    if args.json:
        print_json({"event": "listening", **info})
        return
    extra = f", balance {balance}" if args.mode == "reqrep" else ""
    auth = ", shared secret required" if info["secret"] else ""
    print(f"{args.mode} broker: front {front}, back {back}{extra}{auth}", flush=True)
    print("press Ctrl-C to stop", flush=True)


def _summary(broker: Broker) -> dict[str, Any]:
    stats = broker.stats
    return {
        "forwarded": stats["forwarded"],
        "failed": stats["failed"],
        "front_in": stats["front"].messages_in,
        "back_out": stats["back"].messages_out,
    }
