"""``opensocket chat serve``: the chat hub (native clients and browsers in the same rooms)."""

from __future__ import annotations

import argparse
from typing import Final

from .. import aio
from ..address import Address, parse_address
from ..aio.chat_server import ChatServer, redis_address, serve_chat
from ..chat import ChatOptions, SlowClientPolicy
from ..errors import ConfigError
from ..http.server import http_address
from ._common import (
    add_limit_args,
    add_tls_args,
    add_uvloop_arg,
    check_at_least,
    check_positive,
    limits_from,
    print_json,
    stop_on_signals,
    tls_from,
)

__all__ = ["DEFAULT_LISTEN", "DEFAULT_WEB", "HELPS", "configure", "execute"]

DEFAULT_LISTEN: Final = "tcp://127.0.0.1:7070"
DEFAULT_WEB: Final = "http://127.0.0.1:8070"
HELPS: Final = {
    "chat serve": "run the chat hub: native clients and browsers (WebSocket) in the same rooms",
}
SERVE_EPILOG: Final = f"""\
examples:
  opensocket chat serve                          {DEFAULT_LISTEN} and {DEFAULT_WEB}
  opensocket chat serve --listen tcp://*:7070 --web http://*:8070
  opensocket chat serve --listen unix:///run/chat.sock --web http://127.0.0.1:0
  opensocket chat serve --listen tls://*:7443 --web https://*:8443 --tls-cert c.pem --tls-key k.pem
  opensocket chat serve --operator-token "$(cat op.token)" --history 100
  opensocket chat serve --backplane redis://127.0.0.1:6379 --node hub-1

The web address serves the browser page at /, the WebSocket endpoint at /ws and Prometheus
metrics at /metrics. Native clients speak the framed protocol with codec json: one chat
command or event per message. Several hubs share rooms, nicks and history through
--backplane. Without --listen/--web the hub listens on loopback only (printed at start).
Exit status: 0 stopped by Ctrl-C or SIGTERM, 1 failed (address in use, TLS files), 2 bad options.
"""


def configure(parser: argparse.ArgumentParser, name: str = "chat serve") -> None:
    """The options of ``chat serve``."""
    parser.epilog = SERVE_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="URL",
        help=f"native address (tcp://, tls://, unix://), repeatable (default: {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--web",
        action="append",
        default=[],
        metavar="URL",
        help=f"HTTP address for /, /ws and /metrics (http://, https://), repeatable "
        f"(default: {DEFAULT_WEB})",
    )
    hub = parser.add_argument_group("hub")
    hub.add_argument("--name", default="opensocket", help="server name sent in welcome")
    hub.add_argument("--motd", default="", help="message of the day sent in welcome")
    hub.add_argument("--password", help="server password clients give in hello")
    hub.add_argument("--operator-token", metavar="TOKEN", help="enables kick/ban (8+ chars)")
    hub.add_argument("--history", type=int, default=50, metavar="N", help="messages replayed")
    hub.add_argument(
        "--message-rate", type=float, default=5.0, metavar="PER_SEC", help="per-user commands/s"
    )
    hub.add_argument("--burst", type=int, default=30, metavar="N", help="per-user burst")
    hub.add_argument("--max-length", type=int, default=2000, metavar="CHARS", help="per message")
    hub.add_argument("--max-rooms", type=int, default=20, metavar="N", help="rooms per user")
    hub.add_argument(
        "--slow-messages",
        type=int,
        default=1000,
        metavar="N",
        help="disconnect a client with more than N messages waiting (default: 1000)",
    )
    hub.add_argument(
        "--slow-lag",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="disconnect a client whose oldest waiting message is this old (default: 30)",
    )
    hub.add_argument("--backplane", metavar="redis://HOST:PORT", help="share rooms via Redis")
    hub.add_argument("--node", help="this hub's name in the cluster (default: host-pid)")
    add_tls_args(parser, server=True)
    add_limit_args(parser)
    add_uvloop_arg(parser)
    parser.add_argument("--json", action="store_true", help="print the start banner as JSON")


def _chat_options(args: argparse.Namespace) -> ChatOptions:
    check_at_least(args.history, "--history", 0)
    check_positive(args.message_rate, "--message-rate")
    check_at_least(args.burst, "--burst", 1)
    check_at_least(args.max_length, "--max-length", 1)
    check_at_least(args.max_rooms, "--max-rooms", 1)
    if args.operator_token is not None and len(args.operator_token) < 8:
        raise ConfigError("--operator-token must be at least 8 characters long")
    return ChatOptions(
        server_name=args.name,
        motd=args.motd,
        password=args.password,
        operator_token=args.operator_token,
        history=args.history,
        rate=args.message_rate,
        burst=args.burst,
        max_message_length=args.max_length,
        max_command_bytes=max(16 * 1024, args.max_length * 6 + 1024),
        max_rooms_per_user=args.max_rooms,
    )


def _addresses(args: argparse.Namespace) -> tuple[list[Address], list[Address]]:
    listen = [parse_address(u) for u in args.listen or [DEFAULT_LISTEN]]
    web = [http_address(u) for u in args.web or [DEFAULT_WEB]]
    for addr in listen:
        if addr.scheme not in ("tcp", "tls", "unix"):
            raise ConfigError(f"--listen {addr}: use tcp://, tls:// or unix:// (chat is a stream)")
    if any(a.is_tls for a in listen + web) and not (args.tls_cert and args.tls_key):
        raise ConfigError("tls:// and https:// addresses need --tls-cert and --tls-key")
    return listen, web


def execute(args: argparse.Namespace) -> int:
    """Run the hub until SIGINT/SIGTERM."""
    listen, web = _addresses(args)
    options = _chat_options(args)
    check_at_least(args.slow_messages, "--slow-messages", 1)
    check_positive(args.slow_lag, "--slow-lag")
    policy = SlowClientPolicy(max_messages=args.slow_messages, max_lag=args.slow_lag)
    if args.backplane is not None:
        redis_address(args.backplane)  # a bad URL is a usage error before anything starts
    tls = tls_from(args, server=True)
    limits = limits_from(args)

    async def main() -> None:
        with stop_on_signals() as stop:
            server = await serve_chat(
                listen,
                web,
                options=options,
                policy=policy,
                tls=tls,
                limits=limits,
                redis=args.backplane,
                node=args.node,
            )
            try:
                _announce(args, server)
                await stop.wait()
            finally:
                await server.close()

    aio.run(main(), use_uvloop=not args.no_uvloop)
    return 0


def _announce(args: argparse.Namespace, server: ChatServer) -> None:
    if args.json:
        print_json(
            {
                "event": "listening",
                "native": server.urls,
                "web": server.web_urls,
                "websocket": [_ws(u) for u in server.web_urls],
                "metrics": [f"{u}metrics" for u in server.web_urls if "://" in u],
                "backplane": args.backplane,
            }
        )
        return
    lines = [f"chat hub (native, codec json) on {url}" for url in server.urls]
    for url in server.web_urls:
        lines.append(f"chat page on {url}   WebSocket {_ws(url)}   metrics {url}metrics")
    if args.backplane:
        lines.append(f"sharing rooms through {args.backplane} as node {server.hub.node}")
    lines.append("press Ctrl-C to stop")
    print("\n".join(lines), flush=True)


def _ws(url: str) -> str:
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :] + "ws"
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :] + "ws"
    return url + " (path /ws)"
