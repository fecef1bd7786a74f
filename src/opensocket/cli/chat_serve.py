"""``opensocket chat serve`` (and ``opensocket serve``): the chat hub, native clients and
browsers in the same rooms.

``opensocket serve`` is the same hub with the same options and defaults; both print a start
banner that says how to join: the page in a browser, the terminal client, a Python bot.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Final

from .. import aio
from ..address import Address, parse_address
from ..aio.chat_server import ChatServer, serve_chat
from ..aio.chat_web import normalize_origin
from ..chat import ChatOptions, SlowClientPolicy
from ..chat.metrics import ChatCounters
from ..chat.redis_backplane import RedisTarget, parse_redis_url, redact_url
from ..errors import AddressInUse, ConfigError
from ..http.server import http_address
from ..options import SocketOptions, TLSOptions
from . import error_text, report_failure
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

__all__ = ["DEFAULT_LISTEN", "DEFAULT_WEB", "HELPS", "banner", "configure", "execute"]

DEFAULT_LISTEN: Final = "tcp://127.0.0.1:7070"
DEFAULT_WEB: Final = "http://127.0.0.1:8070"
HELPS: Final = {
    "chat serve": "run the chat hub: native clients and browsers (WebSocket) in the same rooms",
}
SERVE_EPILOG: Final = f"""\
examples:
  opensocket chat serve                          # {DEFAULT_LISTEN} and {DEFAULT_WEB}
  opensocket chat serve --listen 'tcp://*:7070' --web 'http://*:8070'
  opensocket chat serve --listen unix:///run/chat.sock --web http://127.0.0.1:0
  opensocket chat serve --listen 'tls://*:7443' --web 'https://*:8443' \\
      --tls-cert c.pem --tls-key k.pem
  opensocket chat serve --operator-token-file op.token --history 100
  opensocket chat serve --web 'http://*:8070' --allow-origin https://chat.example.com
  opensocket chat serve --backplane redis://127.0.0.1:6379/0 --node hub-1
  opensocket chat serve --reuse-port --backplane redis://127.0.0.1:6379/0   # run it N times

The web address serves the browser page at /, the WebSocket endpoint at /ws and Prometheus
metrics at /metrics. Native clients speak the framed protocol with codec json: one chat
command or event per message. Several hubs share rooms, nicks and history through
--backplane; with --reuse-port several hub processes on one machine share the same ports
(the kernel spreads new connections over them). Without --listen/--web the hub listens on
loopback only (printed at start).
Exit status: 0 stopped by Ctrl-C or SIGTERM, 1 failed (address in use, TLS files), 2 bad options.
"""
PING_INTERVAL: Final = 20.0
PING_TIMEOUT: Final = 20.0


def configure(parser: argparse.ArgumentParser, name: str = "chat serve") -> None:
    """The options of ``chat serve`` (``serve`` has the same ones)."""
    if parser.epilog is None:
        parser.epilog = SERVE_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.set_defaults(hub_command=name)
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
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="SO_REUSEPORT: several hub processes share the same ports (give them one "
        "--backplane so that they share rooms)",
    )
    _add_hub_args(parser)
    _add_backplane_args(parser)
    add_tls_args(parser, server=True)
    add_limit_args(parser)
    add_uvloop_arg(parser)
    parser.add_argument("--json", action="store_true", help="print the start banner as JSON")


def _add_secret(group: Any, flag: str, metavar: str, what: str) -> None:
    """``--X``, ``--X-env VAR`` and ``--X-file FILE``: one of them."""
    choice = group.add_mutually_exclusive_group()
    choice.add_argument(
        f"--{flag}",
        metavar=metavar,
        help=f"{what} (visible to other users in ps: prefer --{flag}-env or --{flag}-file)",
    )
    choice.add_argument(
        f"--{flag}-env", metavar="VAR", help=f"environment variable holding the {what}"
    )
    choice.add_argument(
        f"--{flag}-file", metavar="FILE", help=f"file holding the {what} (first line)"
    )


def _add_hub_args(parser: argparse.ArgumentParser) -> None:
    hub = parser.add_argument_group("hub")
    hub.add_argument("--name", default="opensocket", help="server name sent in welcome")
    hub.add_argument("--motd", default="", help="message of the day sent in welcome")
    _add_secret(hub, "password", "PASSWORD", "server password clients give in hello")
    _add_secret(hub, "operator-token", "TOKEN", "operator token that enables kick/ban (8+ chars)")
    hub.add_argument(
        "--history",
        type=int,
        default=50,
        metavar="N",
        help="last messages of a room sent to whoever joins (default: 50)",
    )
    hub.add_argument(
        "--message-rate",
        type=float,
        default=5.0,
        metavar="PER_SEC",
        help="commands per second per user (default: 5)",
    )
    hub.add_argument(
        "--burst",
        type=int,
        default=30,
        metavar="N",
        help="commands a user may send at once (default: 30)",
    )
    hub.add_argument(
        "--max-length",
        type=int,
        default=2000,
        metavar="CHARS",
        help="longest message in characters (default: 2000)",
    )
    hub.add_argument(
        "--max-rooms",
        type=int,
        default=20,
        metavar="N",
        help="rooms one user may be in (default: 20)",
    )
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
    hub.add_argument(
        "--ws-ping",
        type=float,
        default=PING_INTERVAL,
        metavar="SECONDS",
        help=f"ping WebSocket clients this often; 0: never (default: {PING_INTERVAL:g})",
    )
    hub.add_argument(
        "--ws-ping-timeout",
        type=float,
        default=PING_TIMEOUT,
        metavar="SECONDS",
        help="drop a WebSocket client that has not answered a ping after this long "
        f"(default: {PING_TIMEOUT:g})",
    )
    hub.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept WebSockets from pages of this site (e.g. https://chat.example.com), "
        "repeatable; * accepts any site (default: the hub's own page only)",
    )


def _add_backplane_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backplane (several hubs share rooms through Redis)")
    group.add_argument(
        "--backplane",
        metavar="URL",
        help="redis://[:PASSWORD@]HOST:PORT/DB, or rediss:// for TLS (a password in the URL is "
        "visible in ps: prefer --backplane-password-env or --backplane-password-file)",
    )
    secret = group.add_mutually_exclusive_group()
    secret.add_argument(
        "--backplane-password-env",
        metavar="VAR",
        help="environment variable with the Redis password",
    )
    secret.add_argument(
        "--backplane-password-file", metavar="FILE", help="file holding the Redis password"
    )
    group.add_argument(
        "--backplane-ca", metavar="FILE", help="rediss://: CA certificates (default: the system's)"
    )
    group.add_argument(
        "--backplane-cert", metavar="FILE", help="rediss://: client certificate (mutual TLS)"
    )
    group.add_argument("--backplane-key", metavar="FILE", help="rediss://: client key")
    group.add_argument("--node", help="this hub's name in the cluster (default: host-pid)")


def _secret(args: argparse.Namespace, flag: str) -> str | None:
    """The value of ``--FLAG``, ``--FLAG-env`` or ``--FLAG-file`` (None: none given)."""
    dest = flag.replace("-", "_")
    env, path = getattr(args, f"{dest}_env"), getattr(args, f"{dest}_file")
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"--{flag}-env: the environment variable {env} is not set")
        return value
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--{flag}-file: cannot read {path}: {error_text(exc)}") from exc
        if not lines or not lines[0]:
            raise ConfigError(f"--{flag}-file: {path} is empty: put the {flag} on its first line")
        return lines[0]
    given: str | None = getattr(args, dest, None)
    return given


def _chat_options(args: argparse.Namespace) -> ChatOptions:
    check_at_least(args.history, "--history", 0)
    check_positive(args.message_rate, "--message-rate")
    check_at_least(args.burst, "--burst", 1)
    check_at_least(args.max_length, "--max-length", 1)
    check_at_least(args.max_rooms, "--max-rooms", 1)
    token = _secret(args, "operator-token")
    if token is not None and len(token) < 8:
        raise ConfigError("--operator-token must be at least 8 characters long")
    return ChatOptions(
        server_name=args.name,
        motd=args.motd,
        password=_secret(args, "password"),
        operator_token=token,
        history=args.history,
        rate=args.message_rate,
        burst=args.burst,
        max_message_length=args.max_length,
        max_command_bytes=max(16 * 1024, args.max_length * 6 + 1024),
        max_rooms_per_user=args.max_rooms,
    )


def _addresses(args: argparse.Namespace) -> tuple[list[Address], list[Address]]:
    web = [http_address(u) for u in args.web or [DEFAULT_WEB]]
    listen = []
    for url in args.listen or [DEFAULT_LISTEN]:
        scheme = url.partition("://")[0] if "://" in url else "tcp"
        if scheme not in ("tcp", "tls", "unix"):
            hint = " (the page and WebSocket go on --web)" if scheme in ("http", "https") else ""
            raise ConfigError(
                f"--listen {url}: use tcp://, tls:// or unix:// (chat is a stream){hint}"
            )
        listen.append(parse_address(url))
    if any(a.is_tls for a in listen + web) and not (args.tls_cert and args.tls_key):
        raise ConfigError("tls:// and https:// addresses need --tls-cert and --tls-key")
    return listen, web


def _backplane(args: argparse.Namespace) -> tuple[RedisTarget | None, TLSOptions | None]:
    """The Redis target (a bad URL is a usage error before anything starts) and its TLS."""
    tls_flags = [f for f in ("ca", "cert", "key") if getattr(args, f"backplane_{f}")]
    password_given = args.backplane_password_env or args.backplane_password_file
    if args.backplane is None:
        if tls_flags or password_given:
            raise ConfigError("the --backplane-* options need --backplane redis://HOST:PORT/DB")
        return None, None
    target = parse_redis_url(args.backplane)
    if password_given:
        password = _secret(args, "backplane-password")
        target = RedisTarget(
            target.host, target.port, target.db, target.username, password, target.tls
        )
    if not target.tls:
        if tls_flags:
            raise ConfigError(
                f"--backplane-{tls_flags[0]} applies to rediss:// (TLS) only: use "
                f"rediss://{redact_url(args.backplane).split('://', 1)[-1]}"
            )
        return target, None
    if bool(args.backplane_cert) != bool(args.backplane_key):
        raise ConfigError("--backplane-cert and --backplane-key go together")
    for flag in tls_flags:
        path = getattr(args, f"backplane_{flag}")
        if not os.path.isfile(path):
            raise ConfigError(f"--backplane-{flag}: {path} is not a file")
    tls = TLSOptions(
        ca_file=args.backplane_ca, cert_file=args.backplane_cert, key_file=args.backplane_key
    )
    return target, tls


def execute(args: argparse.Namespace) -> int:
    """Run the hub until SIGINT/SIGTERM."""
    command = getattr(args, "hub_command", "chat serve")
    try:
        return _run(args)
    except AddressInUse as exc:
        return report_failure(
            f"opensocket {command}: error: {error_text(exc)}",
            1,
            json_mode=args.json,
            hint="  to run another hub next to it, let the system pick free ports:\n"
            f"  opensocket {command} --listen tcp://127.0.0.1:0 --web http://127.0.0.1:0\n"
            "  or share the ports: start every hub with --reuse-port (and one --backplane)",
        )


def _run(args: argparse.Namespace) -> int:
    listen, web = _addresses(args)
    options = _chat_options(args)
    check_at_least(args.slow_messages, "--slow-messages", 1)
    check_positive(args.slow_lag, "--slow-lag")
    check_at_least(args.ws_ping, "--ws-ping", 0)
    check_positive(args.ws_ping_timeout, "--ws-ping-timeout")
    policy = SlowClientPolicy(max_messages=args.slow_messages, max_lag=args.slow_lag)
    for origin in args.allow_origin:
        normalize_origin(origin)  # a typo is a usage error now, not a refused browser later
    redis, redis_tls = _backplane(args)
    tls = tls_from(args, server=True)
    limits = limits_from(args)
    if args.reuse_port and redis is None:
        print(
            f"opensocket {args.hub_command}: warning: --reuse-port without --backplane: each "
            "hub process keeps its own rooms, and clients land on any of them",
            file=sys.stderr,
            flush=True,
        )

    async def main() -> None:
        with stop_on_signals() as stop:
            server = await serve_chat(
                listen,
                web,
                options=options,
                policy=policy,
                tls=tls,
                socket_options=SocketOptions(reuse_port=args.reuse_port),
                limits=limits,
                redis=redis,
                redis_tls=redis_tls,
                node=args.node,
                ws_ping=args.ws_ping or None,
                ws_ping_timeout=args.ws_ping_timeout,
                allow_origins=args.allow_origin,
            )
            started = time.monotonic()
            try:
                _announce(args, server, redis, password=options.password is not None)
                await stop.wait()
            finally:
                await server.close()
                _report_stop(args, server.hub.counters, time.monotonic() - started)

    aio.run(main(), use_uvloop=not args.no_uvloop)
    return 0


def _report_stop(args: argparse.Namespace, counters: ChatCounters, seconds: float) -> None:
    """One line (or JSON event) saying what the hub did, as the other servers do at exit."""
    connections = sum(counters.connections_total.values())
    summary = {
        "event": "stopped",
        "seconds": round(seconds, 1),
        "connections": connections,
        "messages_in": counters.messages_in,
        "events_out": counters.events_out,
        "drops": sum(counters.drops.values()),
    }
    if args.json:
        print_json(summary)
        return
    print(
        f"chat hub stopped after {seconds:.1f}s: {connections} connection"
        f"{'' if connections == 1 else 's'}, {counters.messages_in} messages in, "
        f"{counters.events_out} events out, {summary['drops']} dropped",
        flush=True,
    )


def _announce(
    args: argparse.Namespace, server: ChatServer, redis: RedisTarget | None, *, password: bool
) -> None:
    info = banner(server, redis, password=password)
    if args.json:
        print_json(info)
        return
    print("\n".join(banner_lines(info)), flush=True)


def banner(
    server: ChatServer, redis: RedisTarget | None = None, *, password: bool = False
) -> dict[str, Any]:
    """What the start banner says, as the JSON banner prints it."""
    native = server.urls
    pages = server.web_urls
    http = [_reachable(u) for u in pages if u.startswith(("http://", "https://"))]
    first = _reachable(native[0]) if native else None
    info: dict[str, Any] = {
        "event": "listening",
        "native": native,
        "web": pages,
        "page": http[0] if http else None,
        "websocket": [_ws(_reachable(u)) for u in pages],
        "metrics": [f"{u}metrics" for u in http],
        "backplane": None if redis is None else str(redis),
        "node": server.hub.node,
        "terminal": None,
        "python": [],
    }
    if first is not None:
        extra = " --password PASSWORD" if password else ""
        info["terminal"] = f"opensocket chat {first} --nick NAME --room lobby{extra}"
        options = f'"{first}", nick="bot", rooms=["lobby"]'
        if password:
            options += ', password="PASSWORD"'
        if first.startswith("tls://"):
            options += ', tls=opensocket.TLSOptions(ca_file="ca.pem")'
        info["python"] = [
            "import opensocket.chat",
            f"client = await opensocket.chat.Client.connect({options})",
            'await client.say("lobby", "hello from Python")',
        ]
    return info


def banner_lines(info: dict[str, Any]) -> list[str]:
    """The text banner: where the hub listens and how to join, one step a line."""
    lines = ["opensocket chat hub is running"]
    lines += [f"  native clients  {url}   (framed protocol, codec json)" for url in info["native"]]
    for url, ws in zip(info["web"], info["websocket"], strict=True):
        lines.append(f"  web             {url}   (WebSocket {ws})")
    if info["backplane"]:
        lines.append(f"  sharing rooms through {info['backplane']} as node {info['node']}")
    lines += ["", "join the chat:"]
    if info["page"]:
        lines.append(f"  in a browser:    open {info['page']} and pick a nick")
    if info["terminal"]:
        lines.append(f"  in a terminal:   {info['terminal']}")
    if info["python"]:
        lines.append("  in Python (python -m asyncio):")
        lines += [f"    >>> {line}" for line in info["python"]]
    for url in info["metrics"]:
        lines.append(f"  metrics:         curl {url}")
    lines.append("press Ctrl-C to stop")
    return lines


def _reachable(url: str) -> str:
    """A URL to connect to: a wildcard listener (every interface) is reached on loopback."""
    for wildcard in ("//0.0.0.0:", "//[::]:"):
        if wildcard in url:
            return url.replace(wildcard, "//127.0.0.1:", 1)
    return url


def _ws(url: str) -> str:
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :] + "ws"
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :] + "ws"
    return url + " (path /ws)"
