"""Typed option objects shared by both runtimes."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from .errors import ConfigError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "KeepAlive",
    "ProtocolOptions",
    "ServerLimits",
    "SocketOptions",
    "TLSOptions",
]

DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{name} must be positive or None (got {value!r})")


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """TCP keepalive probes: start after ``idle`` seconds, every ``interval``, give up after
    ``count`` unanswered probes."""

    idle: float = 60.0
    interval: float = 10.0
    count: int = 5

    def __post_init__(self) -> None:
        _positive("keepalive idle", self.idle)
        _positive("keepalive interval", self.interval)
        _positive("keepalive count", self.count)


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """Socket options and timeouts; None means the operating system default or no timeout."""

    nodelay: bool = True
    keepalive: KeepAlive | None = None
    send_buffer: int | None = None
    recv_buffer: int | None = None
    reuse_address: bool = True
    reuse_port: bool = False
    connect_timeout: float | None = 10.0
    read_timeout: float | None = None
    write_timeout: float | None = 30.0
    idle_timeout: float | None = None
    backlog: int = 1024

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "write_timeout", "idle_timeout"):
            _positive(name, getattr(self, name))
        for name in ("send_buffer", "recv_buffer"):
            _positive(name, getattr(self, name))


Codec = str
Pattern = Literal["request", "reply", "publish", "subscribe", "push", "pull", "pair"]
PATTERNS: tuple[Pattern, ...] = ("request", "reply", "publish", "subscribe", "push", "pull", "pair")


@dataclass(frozen=True, slots=True)
class ProtocolOptions:
    """Settings of the framed protocol, offered in the handshake.

    ``codecs`` lists payload codecs in order of preference (a client offers them, a server
    accepts those it lists). ``heartbeat`` is the ping interval in seconds (0 turns it off);
    a peer silent for ``heartbeat_misses`` intervals is declared dead. ``checksum`` is "on",
    "off", or "auto" (off on TLS links, whose records are already authenticated).
    """

    codecs: tuple[Codec, ...] = ("bytes",)
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    heartbeat: float = 15.0
    heartbeat_misses: int = 3
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    secret: bytes | None = None
    name: str = ""
    checksum: Literal["on", "off", "auto"] = "auto"
    max_queued_messages: int = 10_000
    max_queued_bytes: int = 64 * 1024 * 1024
    pattern: Pattern | None = None

    def __post_init__(self) -> None:
        if not self.codecs:
            raise ConfigError("at least one payload codec is required")
        if not 64 <= self.max_frame_size <= 0xFFFFFFFF:
            raise ConfigError("max_frame_size must be between 64 bytes and 4 GiB - 1")
        if self.heartbeat < 0:
            raise ConfigError("heartbeat must be 0 (off) or a positive number of seconds")
        if self.heartbeat_misses < 1:
            raise ConfigError("heartbeat_misses must be at least 1")
        _positive("handshake_timeout", self.handshake_timeout)
        _positive("close_timeout", self.close_timeout)
        if self.secret is not None and len(self.secret) < 8:
            raise ConfigError("a shared secret must be at least 8 bytes long")
        if len(self.name.encode()) > 255:
            raise ConfigError("the peer name must be at most 255 bytes of UTF-8")
        if self.checksum not in ("on", "off", "auto"):
            raise ConfigError("checksum must be 'on', 'off' or 'auto'")
        if self.pattern is not None and self.pattern not in PATTERNS:
            raise ConfigError(
                f"unknown messaging pattern {self.pattern!r}: use one of {', '.join(PATTERNS)} "
                "(or None for a plain link)"
            )


def merge_protocol_options(
    protocol: ProtocolOptions | None,
    codec: str | tuple[str, ...] | None = None,
    secret: bytes | str | None = None,
    name: str | None = None,
) -> ProtocolOptions:
    """ProtocolOptions with the ``connect``/``serve`` keyword shortcuts applied; every codec
    named must be known and installed (ConfigError otherwise)."""
    opts = protocol or ProtocolOptions()
    changes: dict[str, object] = {}
    if codec is not None:
        changes["codecs"] = (codec,) if isinstance(codec, str) else tuple(codec)
    if secret is not None:
        changes["secret"] = secret.encode() if isinstance(secret, str) else secret
    if name is not None:
        changes["name"] = name
    merged = replace(opts, **changes) if changes else opts  # type: ignore[arg-type]
    from .codecs import get_codec  # here, not at the top: codecs is a layer above options

    for codec_name in merged.codecs:
        get_codec(codec_name)  # unknown or not installed: a ConfigError now, not mid-handshake
    return merged


ClientAuth = Literal["none", "optional", "required"]


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """TLS settings. Clients verify the server by default (system store, or ``ca_file``).

    ``cert_file``/``key_file`` are the server's certificate, or a client certificate for mutual
    TLS. ``client_auth`` sets whether a server asks for client certificates.
    ``server_hostname`` overrides the name checked against the server certificate.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    server_hostname: str | None = None
    client_auth: ClientAuth = "none"
    minimum_version: Literal["1.2", "1.3"] = "1.2"
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.key_file and not self.cert_file:
            raise ConfigError("a TLS key file was given without its certificate file")
        if self.client_auth not in ("none", "optional", "required"):
            raise ConfigError("client_auth must be 'none', 'optional' or 'required'")
        _positive("TLS handshake_timeout", self.handshake_timeout)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(values: Sequence[str | Network] | str) -> tuple[Network, ...]:
    if isinstance(values, str):  # one CIDR block given without a list
        values = [values]
    out: list[Network] = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ConfigError(
                f"{value!r} is not an IP network: use a CIDR block like 10.0.0.0/8 or ::1/128"
            ) from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What a server does to protect itself from any one client.

    ``allow``/``deny`` are CIDR blocks (deny wins; an empty allow list allows everyone).
    ``rate``/``burst`` are a per-IP token bucket for new connections. ``send_buffer_limit``
    bounds each connection's outgoing buffer: ``send`` waits while it is full, and a peer that
    stays stuck for ``stuck_timeout`` seconds is dropped. The blocking server runs handlers on
    ``workers`` threads; ``max_pending`` connections (default 4 per worker) may wait for one.
    """

    max_connections: int = 10_000
    max_connections_per_ip: int = 1_000
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    rate: float | None = None
    burst: int = 50
    handshake_timeout: float = 10.0
    idle_timeout: float | None = None
    send_buffer_limit: int = 4 * 1024 * 1024
    stuck_timeout: float = 30.0
    shutdown_grace: float = 5.0
    workers: int = 64
    max_pending: int | None = None

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_connections_per_ip < 1:
            raise ConfigError("connection limits must be at least 1")
        object.__setattr__(self, "allow", _networks(self.allow))
        object.__setattr__(self, "deny", _networks(self.deny))
        _positive("rate", self.rate)
        if self.burst < 1:
            raise ConfigError("burst must be at least 1")
        for name in ("handshake_timeout", "idle_timeout", "stuck_timeout", "shutdown_grace"):
            _positive(name, getattr(self, name))
        if self.send_buffer_limit < 1024:
            raise ConfigError("send_buffer_limit must be at least 1024 bytes")
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if self.max_pending is not None and self.max_pending < 0:
            raise ConfigError("max_pending must be 0 or more")
