"""What the asyncio and the blocking ``connect``/``serve`` share: argument checks and dispatch."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from ._server import ServerBase
from .address import Address, is_rudp_url, stream_address
from .errors import ConfigError
from .hooks import Hooks
from .options import (
    ProtocolOptions,
    ServerLimits,
    SocketOptions,
    TLSOptions,
    merge_protocol_options,
)
from .rudp import RudpOptions
from .tls import server_context

__all__ = ["only_rudp_args", "stream_server", "wants_rudp"]

S = TypeVar("S", bound=ServerBase)


def wants_rudp(urls: list[str | Address], rudp: RudpOptions | None, **given: Any) -> bool:
    """True when ``connect``/``serve`` should go over rudp://; refuses what that cannot take."""
    if rudp is None and not any(is_rudp_url(u) for u in urls):
        return False
    for url in urls:
        only_rudp_args(url, **given)
    return True


def only_rudp_args(url: str | Address, **given: Any) -> None:
    """Refuse arguments that mean nothing over rudp://, and rudp options on other schemes."""
    if not is_rudp_url(url):
        raise ConfigError(f"rudp= options need a rudp:// address, not {url}")
    extra = [name for name, value in given.items() if value not in (None, False)]
    if extra:
        raise ConfigError(f"rudp:// does not take {', '.join(extra)}= (see RudpOptions)")


def stream_server(
    cls: type[S],
    urls: list[str | Address],
    handler: Callable[[Any], Any],
    *,
    raw: bool,
    codec: str | tuple[str, ...] | None,
    secret: bytes | str | None,
    name: str | None,
    tls: TLSOptions | ssl.SSLContext | None,
    options: SocketOptions | None,
    protocol: ProtocolOptions | None,
    limits: ServerLimits | None,
    hooks: Hooks | None,
) -> tuple[S, list[Address]]:
    """A tcp/tls/unix server of class ``cls`` for ``urls`` (not yet listening), and the addresses
    to start it on."""
    addrs = [stream_address(u) for u in urls]
    schemes = {a.scheme for a in addrs}
    if "tls" in schemes and len(schemes) > 1:
        raise ConfigError("serve tls:// and plaintext addresses from two servers, not one")
    if "tls" in schemes and tls is None:
        server_context(None)  # raises the error that says what a TLS server needs
    server = cls(
        handler,
        raw=raw,
        protocol=merge_protocol_options(protocol, codec, secret, name),
        options=options or SocketOptions(),
        limits=limits or ServerLimits(),
        tls=tls if ("tls" in schemes or tls is not None) else None,
        hooks=hooks,
        scheme=addrs[0].scheme,
    )
    return server, addrs
