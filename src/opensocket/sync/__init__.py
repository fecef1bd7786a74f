"""The blocking runtime: ``connect``, ``serve`` and ``open_datagram`` for threaded programs.

The same names and arguments as the asyncio API (``opensocket.aio``), over the same sans-IO
protocol core; each framed connection has one reader thread, and servers run handlers in a
bounded thread pool::

    from opensocket import sync

    with sync.serve("tcp://127.0.0.1:0", lambda conn: [conn.send(m) for m in conn]) as server:
        with sync.connect(server.url) as conn:
            conn.send(b"ping")
            assert conn.recv() == b"ping"
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any, Literal, overload

from .._entry import stream_server, wants_rudp
from .._log import safe_call
from .._sockets import close_quietly
from ..address import Address, stream_address
from ..errors import HandshakeTimeout
from ..hooks import Hooks
from ..options import (
    ProtocolOptions,
    ServerLimits,
    SocketOptions,
    TLSOptions,
    merge_protocol_options,
)
from ..protocol.connection import FramedConnection, Role
from ..rudp import RudpOptions
from ._connect import open_socket, open_transport
from ._framed import Connection, FramedLink
from .datagram import DatagramEndpoint, open_datagram_endpoint
from .messaging import Pair, Publisher, Puller, Pusher, Replier, Requester, Subscriber
from .pool import Pool, PoolClosed, PoolExhausted, PoolStats
from .rudp import ReliableConnection, ReliableServer, connect_rudp, serve_rudp
from .server import Server
from .stream import Stream, fmt_sockaddr

__all__ = [
    "Connection",
    "DatagramEndpoint",
    "Pair",
    "Pool",
    "PoolClosed",
    "PoolExhausted",
    "PoolStats",
    "Publisher",
    "Puller",
    "Pusher",
    "ReliableConnection",
    "ReliableServer",
    "Replier",
    "Requester",
    "Server",
    "Stream",
    "Subscriber",
    "connect",
    "open_datagram",
    "open_socket",
    "serve",
]

TLSArg = TLSOptions | ssl.SSLContext | None
HANDSHAKE_SLACK = 5.0


@overload
def connect(
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
def connect(
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
def connect(
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


def connect(
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
        return connect_rudp(url, codec=codec, secret=secret, options=options, rudp=rudp)
    addr = stream_address(url)
    opts = options or SocketOptions()
    popts = merge_protocol_options(protocol, codec, secret, name)
    transport = open_transport(addr, opts, tls)
    if raw:
        return Stream(transport, read_timeout=opts.read_timeout, write_timeout=opts.write_timeout)
    core = FramedConnection(
        Role.CLIENT,
        popts,
        now=time.monotonic(),
        tls=transport.tls,
        idle_timeout=opts.idle_timeout,
    )
    local = fmt_sockaddr(transport.sockname())

    def opened(link: FramedLink) -> None:
        # In the reader thread, before any later input: the hooks see open before close.
        conn = Connection(link, local, str(addr), read_timeout=opts.read_timeout)
        if hooks is not None:
            safe_call(hooks.on_connect, conn)

    link = FramedLink(
        core,
        transport,
        peer=addr.hostport,
        write_timeout=opts.write_timeout,
        hooks=hooks,
        on_ready=opened,
    )
    link.start()
    # The reader thread enforces the handshake deadline; the slack only guards against a bug.
    if not link.ready.wait(popts.handshake_timeout + HANDSHAKE_SLACK) or not link.opened:
        # The reader thread sends our ERROR (if any) and closes the socket by itself.
        if not link.closed.wait(HANDSHAKE_SLACK):
            link.abort(HandshakeTimeout("the handshake did not complete"))
            link.closed.wait(HANDSHAKE_SLACK)
        error = core.closed_exception()
        term = core.terminated
        if term is not None and term.error is not None:
            error = term.error
        if hooks is not None:
            safe_call(hooks.on_handshake_failed, addr.hostport, error)
        raise error
    assert link.connection is not None
    return link.connection


@overload
def serve(
    url: str | Address | list[str | Address],
    handler: Callable[[Any], Any],
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
def serve(
    url: str | Address | list[str | Address],
    handler: Callable[[Any], Any],
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


def serve(
    url: str | Address | list[str | Address],
    handler: Callable[[Any], Any],
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
    """Listen on ``url`` (or several) and run ``handler(conn)`` in a worker thread per connection.

    ``handler`` gets a ``Connection`` (or a ``Stream`` with ``raw=True``); when it returns the
    connection is closed. Port 0 picks a free port: read ``server.addresses``. ``limits``
    protect the server (connection caps, access lists, rate limits, timeouts, ``workers`` and
    ``max_pending``: connections beyond the waiting room are refused). The server runs
    until ``shutdown()``. rudp:// addresses give a ``ReliableServer`` whose handlers get
    ``ReliableConnection``s.
    """
    urls = url if isinstance(url, list) else [url]
    if wants_rudp(urls, rudp, raw=raw, name=name, tls=tls, protocol=protocol, hooks=hooks):
        return serve_rudp(
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
            server._start(addr)
    except BaseException:
        for sock in server._listeners:
            close_quietly(sock)
        server.shutdown(0)
        raise
    server._launch()
    return server


def open_datagram(
    url: str | Address, *, bind: bool = False, options: SocketOptions | None = None
) -> DatagramEndpoint:
    """Open a UDP endpoint bound to ``url`` (``bind=True``) or connected to it."""
    return open_datagram_endpoint(url, bind=bind, options=options)
