"""The asyncio runtime: ``connect``, ``serve``, ``open_datagram`` and ``run``."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, TypeVar, overload

from .._entry import stream_server, wants_rudp
from ..address import Address, format_sockaddr, stream_address
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
    if wants_rudp([url], rudp, raw=raw, name=name, tls=tls, protocol=protocol, hooks=hooks):
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
    if wants_rudp(urls, rudp, raw=raw, name=name, tls=tls, protocol=protocol, hooks=hooks):
        return await serve_rudp(
            urls, handler, codec=codec, secret=secret, options=options, limits=limits, rudp=rudp
        )
    server, addrs = stream_server(
        Server,
        urls,
        handler,
        raw=raw,
        codec=codec,
        secret=secret,
        name=name,
        tls=tls,
        options=options,
        protocol=protocol,
        limits=limits,
        hooks=hooks,
    )
    try:
        for addr in addrs:
            await server._start(addr)
    except BaseException:
        await server.close(0)
        raise
    return server


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
