"""The asyncio runtime: ``connect``, ``serve``, ``open_datagram`` and ``run``."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, TypeVar, overload

from ..address import Address, format_sockaddr, is_rudp_url, stream_address
from ..errors import ConfigError
from ..hooks import Hooks
from ..options import (
    ProtocolOptions,
    ServerLimits,
    SocketOptions,
    TLSOptions,
    merge_protocol_options,
)
from ..protocol.connection import Role
from ..rudp import RudpOptions
from ..tls import server_context
from ._connect import open_socket, open_transport
from ._framed import Connection, FramedProtocol, client_core
from .datagram import DatagramEndpoint, open_datagram_endpoint
from .rudp import ReliableConnection, ReliableServer, connect_rudp, serve_rudp
from .server import Server
from .stream import DEFAULT_LINE_LIMIT, Stream

__all__ = [
    "Connection",
    "DatagramEndpoint",
    "ReliableConnection",
    "ReliableServer",
    "Server",
    "Stream",
    "connect",
    "open_datagram",
    "open_socket",
    "run",
    "serve",
]

T = TypeVar("T")
TLSArg = TLSOptions | ssl.SSLContext | None


@overload
async def connect(
    url: str | Address,
    *,
    raw: Literal[False] = False,
    codec: str | tuple[str, ...] | None = None,
    secret: bytes | str | None = None,
    name: str | None = None,
    tls: TLSArg = None,
    options: SocketOptions | None = None,
    protocol: ProtocolOptions | None = None,
    hooks: Hooks | None = None,
    rudp: None = None,
) -> Connection: ...


@overload
async def connect(
    url: str | Address,
    *,
    raw: Literal[True],
    codec: str | tuple[str, ...] | None = None,
    secret: bytes | str | None = None,
    name: str | None = None,
    tls: TLSArg = None,
    options: SocketOptions | None = None,
    protocol: ProtocolOptions | None = None,
    hooks: Hooks | None = None,
    rudp: None = None,
) -> Stream: ...


@overload
async def connect(
    url: str | Address,
    *,
    raw: Literal[False] = False,
    codec: str | tuple[str, ...] | None = None,
    secret: bytes | str | None = None,
    name: str | None = None,
    tls: TLSArg = None,
    options: SocketOptions | None = None,
    protocol: ProtocolOptions | None = None,
    hooks: Hooks | None = None,
    rudp: RudpOptions,
) -> ReliableConnection: ...


async def connect(
    url: str | Address,
    *,
    raw: bool = False,
    codec: str | tuple[str, ...] | None = None,
    secret: bytes | str | None = None,
    name: str | None = None,
    tls: TLSArg = None,
    options: SocketOptions | None = None,
    protocol: ProtocolOptions | None = None,
    hooks: Hooks | None = None,
    rudp: RudpOptions | None = None,
) -> Connection | Stream | ReliableConnection:
    """Connect to ``url`` (tcp://, tls://, unix://, rudp://) and complete the handshake.

    Returns a framed ``Connection``, or a raw byte ``Stream`` with ``raw=True``. ``codec`` is
    the payload codec (or codecs, in order of preference), ``secret`` a shared secret for
    authentication, ``tls`` TLS options (implied by tls://). A rudp:// address gives a
    ``ReliableConnection`` (messages on channels over UDP) set up by ``rudp`` options.
    Raises a ConnectError, TLSError or HandshakeError subclass that says what went wrong.
    """
    if rudp is not None or is_rudp_url(url):
        _only_rudp_args(url, raw=raw, name=name, tls=tls, protocol=protocol, hooks=hooks)
        return await connect_rudp(url, codec=codec, secret=secret, options=options, rudp=rudp)
    addr = stream_address(url)
    opts = options or SocketOptions()
    loop = asyncio.get_running_loop()
    if raw:
        return await _connect_raw(addr, opts, tls)
    popts = merge_protocol_options(protocol, codec, secret, name)
    use_tls = addr.is_tls or tls is not None

    def factory() -> FramedProtocol:
        # The core is made once the socket (and TLS) is up: its handshake deadline starts
        # then, so a slow connect does not eat into the handshake timeout.
        core = client_core(Role.CLIENT, popts, loop=loop, tls=use_tls, idle=opts.idle_timeout)
        return FramedProtocol(
            core, peer=addr.hostport, write_timeout=opts.write_timeout, hooks=hooks
        )

    transport, proto = await open_transport(addr, factory, opts, tls)
    assert isinstance(proto, FramedProtocol)
    try:
        await asyncio.shield(proto.ready)
    except BaseException as exc:
        transport.abort()
        # A cancelled connect is the caller's decision, not a failed handshake.
        if isinstance(exc, Exception) and hooks is not None and hooks.on_handshake_failed:
            from .._log import safe_call

            safe_call(hooks.on_handshake_failed, addr.hostport, exc)
        raise
    local = format_sockaddr(transport.get_extra_info("sockname"))
    conn = Connection(proto, local, str(addr), read_timeout=opts.read_timeout)
    if hooks is not None and hooks.on_connect is not None:
        from .._log import safe_call

        safe_call(hooks.on_connect, conn)
    return conn


async def _connect_raw(addr: Address, opts: SocketOptions, tls: TLSArg) -> Stream:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=DEFAULT_LINE_LIMIT, loop=loop)
    proto = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await open_transport(addr, lambda: proto, opts, tls)
    writer = asyncio.StreamWriter(transport, proto, reader, loop)
    return Stream(reader, writer, read_timeout=opts.read_timeout, write_timeout=opts.write_timeout)


@overload
async def serve(
    url: str | Address | list[str | Address],
    handler: Callable[[Any], Awaitable[Any]],
    *,
    raw: bool = False,
    codec: str | tuple[str, ...] | None = None,
    secret: bytes | str | None = None,
    name: str | None = None,
    tls: TLSArg = None,
    options: SocketOptions | None = None,
    protocol: ProtocolOptions | None = None,
    limits: ServerLimits | None = None,
    hooks: Hooks | None = None,
    rudp: None = None,
) -> Server: ...


@overload
async def serve(
    url: str | Address | list[str | Address],
    handler: Callable[[Any], Awaitable[Any]],
    *,
    raw: bool = False,
    codec: str | tuple[str, ...] | None = None,
    secret: bytes | str | None = None,
    name: str | None = None,
    tls: TLSArg = None,
    options: SocketOptions | None = None,
    protocol: ProtocolOptions | None = None,
    limits: ServerLimits | None = None,
    hooks: Hooks | None = None,
    rudp: RudpOptions,
) -> ReliableServer: ...


async def serve(
    url: str | Address | list[str | Address],
    handler: Callable[[Any], Awaitable[Any]],
    *,
    raw: bool = False,
    codec: str | tuple[str, ...] | None = None,
    secret: bytes | str | None = None,
    name: str | None = None,
    tls: TLSArg = None,
    options: SocketOptions | None = None,
    protocol: ProtocolOptions | None = None,
    limits: ServerLimits | None = None,
    hooks: Hooks | None = None,
    rudp: RudpOptions | None = None,
) -> Server | ReliableServer:
    """Listen on ``url`` (or several) and run ``await handler(conn)`` for each connection.

    ``handler`` gets a ``Connection`` (or a ``Stream`` with ``raw=True``); when it returns the
    connection is closed. Port 0 picks a free port: read ``server.addresses``. ``limits``
    protect the server (connection caps, access lists, rate limits, timeouts). rudp://
    addresses give a ``ReliableServer`` whose handlers get ``ReliableConnection``s.
    """
    urls = url if isinstance(url, list) else [url]
    if rudp is not None or any(is_rudp_url(u) for u in urls):
        for one in urls:
            _only_rudp_args(one, raw=raw, name=name, tls=tls, protocol=protocol, hooks=hooks)
        return await serve_rudp(
            urls, handler, codec=codec, secret=secret, options=options, limits=limits, rudp=rudp
        )
    addrs = [stream_address(u) for u in urls]
    schemes = {a.scheme for a in addrs}
    if "tls" in schemes and len(schemes) > 1:
        raise ConfigError("serve tls:// and plaintext addresses from two servers, not one")
    if "tls" in schemes and tls is None:
        server_context(None)  # raises the error that says what a TLS server needs
    server = Server(
        handler,
        raw=raw,
        protocol=merge_protocol_options(protocol, codec, secret, name),
        options=options or SocketOptions(),
        limits=limits or ServerLimits(),
        tls=tls if ("tls" in schemes or tls is not None) else None,
        hooks=hooks,
        scheme=addrs[0].scheme,
    )
    try:
        for addr in addrs:
            await server._start(addr)
    except BaseException:
        await server.close(0)
        raise
    return server


def _only_rudp_args(url: str | Address, **given: Any) -> None:
    """Refuse arguments that mean nothing over rudp://, and rudp options on other schemes."""
    if not is_rudp_url(url):
        raise ConfigError(f"rudp= options need a rudp:// address, not {url}")
    extra = [name for name, value in given.items() if value not in (None, False)]
    if extra:
        raise ConfigError(f"rudp:// does not take {', '.join(extra)}= (see RudpOptions)")


async def open_datagram(
    url: str | Address,
    *,
    bind: bool = False,
    options: SocketOptions | None = None,
    queue_limit: int = 4096,
) -> DatagramEndpoint:
    """Open a UDP endpoint bound to ``url`` (``bind=True``) or connected to it."""
    return await open_datagram_endpoint(url, bind=bind, options=options, queue_limit=queue_limit)


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True, debug: bool = False) -> T:
    """Run a coroutine on a new event loop: uvloop when installed, unless opted out."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(debug=debug, loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main, debug=debug)
