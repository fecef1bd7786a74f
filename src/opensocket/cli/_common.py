"""Options shared by several commands, and turning them into option objects."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Final

from ..address import Address
from ..errors import ConfigError
from ..options import ProtocolOptions, ServerLimits, SocketOptions, TLSOptions

__all__ = [
    "CODEC_DEFAULT_HELP",
    "add_limit_args",
    "add_protocol_args",
    "add_tls_args",
    "add_uvloop_arg",
    "check_at_least",
    "check_positive",
    "check_tls_flags",
    "framed_flags",
    "limits_from",
    "print_json",
    "protocol_from",
    "reachable_addresses",
    "reject_framed_flags",
    "report_interrupted",
    "stop_on_signals",
    "tls_from",
]

CODEC_DEFAULT_HELP = "bytes,json, and msgpack when installed (pip install 'opensocket[msgpack]')"
_FRAMED_FLAGS = (
    ("codec", "--codec"),
    ("secret_env", "--secret-env"),
    ("secret_file", "--secret-file"),
    ("name", "--name"),
    ("heartbeat", "--heartbeat"),
    ("max_frame_size", "--max-frame-size"),
)
_TLS_FLAGS = (
    ("tls_ca", "--tls-ca"),
    ("tls_cert", "--tls-cert"),
    ("tls_key", "--tls-key"),
    ("tls_client_auth", "--tls-client-auth"),
    ("tls_insecure", "--tls-insecure"),
    ("tls_server_name", "--tls-server-name"),
)


def _given(args: argparse.Namespace, table: tuple[tuple[str, str], ...]) -> list[str]:
    return [flag for attr, flag in table if getattr(args, attr, None) not in (None, "", False)]


def _applies(flags: list[str]) -> str:
    return f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'}"


def check_positive(value: float | None, flag: str) -> None:
    """ConfigError naming ``flag`` unless ``value`` is None or above 0."""
    if value is not None and value <= 0:
        raise ConfigError(f"{flag} must be a positive number (got {value:g})")


def check_at_least(value: float | None, flag: str, minimum: int, unit: str = "") -> None:
    """ConfigError naming ``flag`` unless ``value`` is None or at least ``minimum``."""
    if value is not None and value < minimum:
        raise ConfigError(f"{flag} must be at least {minimum}{unit} (got {value:g})")


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
            default=None,
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
            client_auth=args.tls_client_auth or "none",
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


def check_tls_flags(args: argparse.Namespace, addrs: Sequence[Address]) -> None:
    """ConfigError when TLS options are given but no address is tls:// (they would be ignored)."""
    given = _given(args, _TLS_FLAGS)
    if not given or any(a.is_tls for a in addrs):
        return
    tcp = next((a for a in addrs if a.scheme == "tcp"), None)
    instead = f"use {tcp.with_scheme('tls')} instead of {tcp}" if tcp else "use a tls:// address"
    raise ConfigError(f"{_applies(given)} to tls:// addresses only: {instead}")


def framed_flags(args: argparse.Namespace) -> list[str]:
    """The framed-protocol options given on the command line."""
    return _given(args, _FRAMED_FLAGS)


def reject_framed_flags(
    args: argparse.Namespace, what: str, *, allow: tuple[str, ...] = ()
) -> None:
    """ConfigError when framed-protocol options (but ``allow``) are given for ``what``."""
    given = [flag for flag in framed_flags(args) if flag not in allow]
    if given:
        raise ConfigError(f"{_applies(given)} to the framed protocol only, not to {what}")


def add_protocol_args(
    parser: argparse.ArgumentParser,
    *,
    server: bool = False,
    codec: bool = True,
    title: str = "framed protocol",
) -> None:
    """Framed-protocol options: codec (unless ``codec=False``), secret, name, sizes, heartbeat."""
    group = parser.add_argument_group(title)
    if codec:
        codec_help = (
            f"payload codecs to accept, comma-separated (default: {CODEC_DEFAULT_HELP})"
            if server
            else "payload codec: bytes, json or msgpack (default: bytes)"
        )
        group.add_argument("--codec", default=None, help=codec_help)
    else:
        parser.set_defaults(codec=None)  # protocol_from reads it
    secret = group.add_mutually_exclusive_group()
    secret.add_argument(
        "--secret-env",
        metavar="VAR",
        help="name of an environment variable holding the shared secret (authentication)",
    )
    secret.add_argument("--secret-file", metavar="FILE", help="file holding the shared secret")
    group.add_argument("--name", default="", help="peer name sent in the handshake")
    group.add_argument(
        "--max-frame-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="largest frame accepted (default: 16 MiB)",
    )
    group.add_argument(
        "--heartbeat",
        type=float,
        default=None,
        metavar="SECONDS",
        help="ping interval (default: 15; 0: off)",
    )


def _secret(args: argparse.Namespace) -> bytes | None:
    if args.secret_env:
        value = os.environ.get(args.secret_env)
        if value is None:
            raise ConfigError(
                f"--secret-env: the environment variable {args.secret_env} is not set"
            )
        secret, source = value.encode(), f"${args.secret_env}"
    elif args.secret_file:
        try:
            with open(args.secret_file, "rb") as handle:
                secret = handle.read().strip()
        except OSError as exc:
            raise ConfigError(
                f"--secret-file: cannot read {args.secret_file}: {exc.strerror or exc}"
            ) from exc
        source = args.secret_file
    else:
        return None
    if len(secret) < 8:
        raise ConfigError(
            f"the secret in {source} is {len(secret)} bytes long: a shared secret must be at "
            "least 8 bytes"
        )
    return secret


def protocol_from(args: argparse.Namespace, **defaults: Any) -> ProtocolOptions:
    """ProtocolOptions from the protocol arguments."""
    check_at_least(args.max_frame_size, "--max-frame-size", 64, " bytes")
    if args.max_frame_size is not None and args.max_frame_size > 0xFFFFFFFF:
        raise ConfigError(f"--max-frame-size must be at most {0xFFFFFFFF} bytes (4 GiB - 1)")
    if args.heartbeat is not None and args.heartbeat < 0:
        raise ConfigError("--heartbeat must be 0 (off) or a positive number of seconds")
    values: dict[str, Any] = dict(defaults)
    if args.codec is not None:
        codecs = tuple(c.strip() for c in args.codec.split(",") if c.strip())
        if not codecs:
            raise ConfigError("--codec needs at least one codec name: bytes, json or msgpack")
        values["codecs"] = codecs
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
    group.add_argument(
        "--max-connections",
        type=int,
        default=10_000,
        metavar="N",
        help="connections open at once; more are refused (default: 10000)",
    )
    group.add_argument(
        "--max-per-ip",
        type=int,
        default=1_000,
        metavar="N",
        help="connections open at once from one IP address (default: 1000)",
    )
    group.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="accept clients from this network only, e.g. 10.0.0.0/8; repeatable "
        "(default: everyone)",
    )
    group.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="CIDR",
        help="refuse clients from this network (wins over --allow); repeatable",
    )
    group.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="PER_SEC",
        help="new connections per second from one IP address (default: no limit)",
    )
    group.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="close connections silent this long (default: never)",
    )


def limits_from(args: argparse.Namespace) -> ServerLimits:
    """ServerLimits from the limit arguments."""
    check_at_least(args.max_connections, "--max-connections", 1)
    check_at_least(args.max_per_ip, "--max-per-ip", 1)
    check_positive(args.rate, "--rate")
    check_positive(args.idle_timeout, "--idle-timeout")
    for flag, values in (("--allow", args.allow), ("--deny", args.deny)):
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{flag} {value!r} is not an IP network: use a CIDR block like 10.0.0.0/8 "
                    "or ::1/128"
                ) from None
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
    return SocketOptions(connect_timeout=10.0 if timeout is None else timeout)


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


def report_interrupted(command: str, *, json_mode: bool, hint: str = "") -> int:
    """Ctrl-C: ``opensocket COMMAND: interrupted`` (and ``: hint``) on stderr; with --json also
    ``{"error": "interrupted", "exit": 130}`` on stdout, so a script still gets its object.
    Return 130."""
    print(f"opensocket {command}: interrupted" + (f": {hint}" if hint else ""), file=sys.stderr)
    if json_mode:
        with contextlib.suppress(OSError):  # stdout may be a pipe its reader closed
            print_json({"error": "interrupted", "exit": 130})
    return 130


_ANY_HOST: Final = {"0.0.0.0": (socket.AF_INET,), "::": (socket.AF_INET6,)}


def reachable_addresses(addr: Address) -> list[Address]:
    """Addresses another machine can use to reach ``addr``: for a wildcard bind (``*``,
    ``0.0.0.0``, ``::``), this host's non-loopback interface addresses with the same scheme and
    port (IPv4 first, IPv6 link-local left out), or its hostname when it has none; otherwise
    ``[addr]``. Pass the address as given (``*``), not what a dual-stack socket reports (``::``),
    which stands for IPv6 only."""
    if addr.is_wildcard:
        families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)
    elif addr.host in _ANY_HOST:
        families = _ANY_HOST[addr.host]
    else:
        return [addr]
    hosts = [host for family in families for host in _interface_hosts(family)]
    return [Address(addr.scheme, host, addr.port) for host in hosts or [socket.gethostname()]]


def _interface_hosts(family: int) -> list[str]:
    """This host's addresses of ``family`` that another machine may reach, without repeats."""
    import psutil

    found: list[str] = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family != family:
                continue
            ip = ipaddress.ip_address(entry.address.split("%", 1)[0])
            if ip.is_loopback or (ip.version == 6 and ip.is_link_local):
                continue  # link-local IPv6 needs a %zone the other machine names differently
            if str(ip) not in found:
                found.append(str(ip))
    return found
