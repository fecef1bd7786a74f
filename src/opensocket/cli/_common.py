"""Options shared by several commands, and turning them into option objects."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError
from ..options import ProtocolOptions, ServerLimits, SocketOptions, TLSOptions

__all__ = [
    "add_limit_args",
    "add_protocol_args",
    "add_tls_args",
    "add_uvloop_arg",
    "limits_from",
    "print_json",
    "protocol_from",
    "stop_on_signals",
    "tls_from",
]


def add_tls_args(parser: argparse.ArgumentParser, *, server: bool) -> None:
    """--tls-ca/--tls-cert/--tls-key and friends."""
    group = parser.add_argument_group("TLS (tls:// addresses)")
    group.add_argument("--tls-ca", metavar="FILE", help="CA certificate(s) to verify the peer")
    group.add_argument("--tls-cert", metavar="FILE", help="certificate (chain) in PEM")
    group.add_argument("--tls-key", metavar="FILE", help="private key in PEM")
    if server:
        group.add_argument(
            "--tls-client-auth",
            choices=("none", "optional", "required"),
            default="none",
            help="ask clients for certificates (mutual TLS); default: none",
        )
    else:
        group.add_argument(
            "--tls-insecure",
            action="store_true",
            help="do not verify the server certificate (testing only)",
        )
        group.add_argument("--tls-server-name", metavar="NAME", help="name to verify instead")


def tls_from(args: argparse.Namespace, *, server: bool) -> TLSOptions | None:
    """TLSOptions from the TLS arguments, or None if none were given."""
    given = any(getattr(args, a, None) for a in ("tls_ca", "tls_cert", "tls_key"))
    if server:
        if not given:
            return None
        return TLSOptions(
            ca_file=args.tls_ca,
            cert_file=args.tls_cert,
            key_file=args.tls_key,
            client_auth=args.tls_client_auth,
        )
    if not given and not args.tls_insecure and not args.tls_server_name:
        return None
    return TLSOptions(
        ca_file=args.tls_ca,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
        verify=not args.tls_insecure,
        server_hostname=args.tls_server_name,
    )


def add_protocol_args(parser: argparse.ArgumentParser, *, server: bool = False) -> None:
    """Framed-protocol options: codec, secret, name, sizes, heartbeat."""
    group = parser.add_argument_group("framed protocol")
    codec_help = (
        "payload codecs to accept, comma-separated (default: bytes,json,msgpack)"
        if server
        else "payload codec: bytes, json, msgpack (default: bytes)"
    )
    group.add_argument("--codec", default=None, help=codec_help)
    group.add_argument(
        "--secret-env",
        metavar="VAR",
        help="name of an environment variable holding the shared secret (authentication)",
    )
    group.add_argument("--secret-file", metavar="FILE", help="file holding the shared secret")
    group.add_argument("--name", default="", help="peer name sent in the handshake")
    group.add_argument(
        "--max-frame-size", type=int, default=None, metavar="BYTES", help="largest frame accepted"
    )
    group.add_argument(
        "--heartbeat", type=float, default=None, metavar="SECONDS", help="ping interval (0: off)"
    )


def _secret(args: argparse.Namespace) -> bytes | None:
    if args.secret_env:
        value = os.environ.get(args.secret_env)
        if value is None:
            raise ConfigError(f"environment variable {args.secret_env} is not set")
        return value.encode()
    if args.secret_file:
        try:
            with open(args.secret_file, "rb") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the secret file: {exc}") from exc
    return None


def protocol_from(args: argparse.Namespace, **defaults: Any) -> ProtocolOptions:
    """ProtocolOptions from the protocol arguments."""
    values: dict[str, Any] = dict(defaults)
    if args.codec:
        values["codecs"] = tuple(c.strip() for c in args.codec.split(","))
    secret = _secret(args)
    if secret is not None:
        values["secret"] = secret
    if args.name:
        values["name"] = args.name
    if args.max_frame_size is not None:
        values["max_frame_size"] = args.max_frame_size
    if args.heartbeat is not None:
        values["heartbeat"] = args.heartbeat
    return ProtocolOptions(**values)


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    """Server protection options."""
    group = parser.add_argument_group("server limits")
    group.add_argument("--max-connections", type=int, default=10_000, metavar="N")
    group.add_argument("--max-per-ip", type=int, default=1_000, metavar="N")
    group.add_argument("--allow", action="append", default=[], metavar="CIDR", help="repeatable")
    group.add_argument("--deny", action="append", default=[], metavar="CIDR", help="repeatable")
    group.add_argument(
        "--rate", type=float, default=None, metavar="PER_SEC", help="new connections per IP"
    )
    group.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS")


def limits_from(args: argparse.Namespace) -> ServerLimits:
    """ServerLimits from the limit arguments."""
    return ServerLimits(
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_per_ip,
        allow=tuple(args.allow),
        deny=tuple(args.deny),
        rate=args.rate,
        idle_timeout=args.idle_timeout,
    )


def socket_options(timeout: float | None = None) -> SocketOptions:
    """SocketOptions for a CLI client."""
    return SocketOptions(connect_timeout=timeout or 10.0)


def print_json(obj: Any) -> None:
    """One JSON document per line on stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def add_uvloop_arg(parser: argparse.ArgumentParser) -> None:
    """--no-uvloop: run on the standard asyncio loop even when uvloop is installed."""
    parser.add_argument(
        "--no-uvloop",
        action="store_true",
        help="use the standard asyncio event loop even when uvloop is installed",
    )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event that SIGINT or SIGTERM sets while the block runs (how servers stop: exit 0).

    Enter it before announcing an address, so that a signal sent right after the
    announcement stops the server gracefully. Call from a coroutine in the main thread;
    elsewhere the event is only set by code.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
            continue
        installed.append(sig)
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
