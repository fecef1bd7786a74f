"""The chat hub's asyncio server: one ``Hub`` for native clients and browser WebSocket clients.

Native clients speak the framed protocol (codec ``json``): each DATA payload goes to
``hub.receive`` as raw bytes, so the hub validates JSON and UTF-8 itself. Browser clients
connect over WebSocket at ``/ws`` on the HTTP port, which also serves ``/`` (the page) and
``/metrics`` (Prometheus text). HTTP is parsed by h11 and WebSocket by wsproto; both are
sans-IO, this module only moves bytes. The hub's output is routed to a bounded
``ClientQueue`` per client: a client that stops reading is disconnected (close code 4011)
when it falls too far behind, and nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from .. import tls as tlsmod
from .._sockets import bind_sockets
from ..address import Address, from_sockaddr
from ..chat import web
from ..chat.flow import ClientQueue, SlowClientPolicy
from ..chat.hub import Hub
from ..chat.metrics import render_metrics
from ..chat.options import ChatOptions
from ..chat.outgoing import Close, Deliver, Outgoing, Payload
from ..chat.redis_backplane import RedisBackplane
from ..errors import CloseCode, ConfigError, OpenSocketError
from ..http.server import http_address
from ..options import ProtocolOptions, ServerLimits, SocketOptions, TLSOptions
from ..protocol.connection import State
from ._framed import Connection, FramedProtocol
from .server import Server

if TYPE_CHECKING:
    from .chat_redis import RedisLink

__all__ = ["ChatServer", "redis_address", "serve_chat"]

log = logging.getLogger("opensocket.chat")
WRITE_CHUNK: Final = 64 * 1024
TRANSPORT_HIGH: Final = 64 * 1024  # bytes a transport holds before the client's queue fills
CLOSE_GRACE: Final = 5.0  # a closing client that does not read is aborted after this
LAG_TICK: Final = 1.0
HTTP_IDLE: Final = 15.0  # an HTTP connection (not yet a WebSocket) must send a request by then


def _ws_text_frame(data: bytes) -> bytes:
    """A complete unmasked WebSocket text frame (server to client), built once per event."""
    n = len(data)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + data


def redis_address(url: str) -> tuple[str, int]:
    """``redis://HOST[:PORT][/0]`` as (host, port)."""
    parts = urlsplit(url)
    try:
        port = parts.port or 6379
    except ValueError:
        port = -1
    if (
        parts.scheme != "redis"
        or not parts.hostname
        or port < 1
        or parts.path not in ("", "/", "/0")
    ):
        raise ConfigError(
            f"{url!r} is not a Redis address this hub can use: give redis://HOST:PORT "
            "(database 0; TLS and passwords are not supported yet)"
        )
    return parts.hostname, port


def _ip(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else None


class _Client:
    """One connection as the router sees it: a bounded queue in front of a transport."""

    __slots__ = ("cid", "closing", "queue", "server")

    def __init__(self, server: ChatServer, cid: int) -> None:
        self.server = server
        self.cid = cid
        self.queue = ClientQueue(server.policy)
        self.closing = False

    def frame(self, payload: Payload) -> bytes:
        """The bytes this protocol writes for one event."""
        raise NotImplementedError

    def paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark."""
        raise NotImplementedError

    def write(self, chunks: list[bytes]) -> None:
        """Hand framed messages to the transport."""
        raise NotImplementedError

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a reason (after what is already written)."""
        raise NotImplementedError

    def push(self, payload: Payload, now: float) -> None:
        """Write at once when the transport takes data, else queue (bounded)."""
        if self.closing:
            return
        queue = self.queue
        if not len(queue) and not self.paused():
            self.write([self.frame(payload)])
            return
        reason = queue.push(self.frame(payload), now)
        if reason is not None:
            self.server.slow(self, reason)
        elif len(queue) == 1:
            self.server.backlogged(self)

    def flush(self) -> None:
        """Move queued messages to the transport while it accepts them."""
        queue = self.queue
        while len(queue) and not self.paused() and not self.closing:
            self.write(queue.pop(WRITE_CHUNK))


class _NativeClient(_Client):
    __slots__ = ("proto",)

    def __init__(self, server: ChatServer, cid: int, proto: FramedProtocol) -> None:
        super().__init__(server, cid)
        self.proto = proto
        if proto.transport is not None:
            # The ClientQueue is the bound: keep the transport's own buffer small (the
            # framed server's default is sized for bulk transfers, not for chat fan-out).
            proto.transport.set_write_buffer_limits(high=TRANSPORT_HIGH)

    def frame(self, payload: Payload) -> bytes:
        return payload.data  # the core frames it; DATA payload = the JSON bytes

    def paused(self) -> bool:
        return self.proto._write_paused

    def write(self, chunks: list[bytes]) -> None:
        proto = self.proto
        if proto.core.state is not State.OPEN:
            return  # the connection is ending; its disconnect follows
        try:
            proto.core.send_many(chunks)
        except OpenSocketError as exc:  # e.g. an event over the peer's frame size limit
            log.warning("client %s cannot take an event, closing: %s", self.cid, exc)
            self.close(CloseCode.INTERNAL_ERROR, "the hub could not send an event")
            return
        proto.schedule_flush()
        if proto._write_paused:
            self.server.backlogged(self)

    async def wait_writable(self) -> None:
        await self.proto.drain()

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.proto.flush()
            self.proto.close(code, reason)  # the core's close timeout aborts a stuck peer


class _WebProtocol(asyncio.Protocol):
    """One HTTP connection: ``/``, ``/metrics``, or the upgrade to WebSocket at ``/ws``."""

    def __init__(self, server: ChatServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.http = h11.Connection(h11.SERVER)
        self.ws: WSConnection | None = None
        self.client: _WsClient | None = None
        self.request: h11.Request | None = None
        self.write_paused = False
        self.abort_later: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they behave as one.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH)
        self.server._web_conns.add(self)
        self._arm_idle()

    def _arm_idle(self) -> None:
        if self.abort_later is not None:
            self.abort_later.cancel()
        transport = self.transport
        if transport is not None:
            self.abort_later = self.server.loop.call_later(self.server.http_idle, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._web_conns.discard(self)
        if self.abort_later is not None:
            self.abort_later.cancel()
        if self.client is not None:
            self.server.gone(self.client, "connection closed" if exc is None else str(exc))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.client is not None:
            self.client.flush()

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self._ws_data(data)
            return
        try:
            self.http.receive_data(data)
            self._http_events()
        except h11.RemoteProtocolError as exc:
            self._respond(exc.error_status_hint, b"bad request: " + str(exc).encode() + b"\n")
            self._close()

    def eof_received(self) -> bool | None:
        if self.ws is None:
            with contextlib.suppress(h11.RemoteProtocolError):
                self.http.receive_data(b"")
        return None

    # --- HTTP -------------------------------------------------------------------------------

    def _http_events(self) -> None:
        while self.transport is not None and not self.transport.is_closing():
            event = self.http.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request = event
                if self._is_upgrade(event):
                    self._upgrade(event)
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._route()
                if self.http.our_state is h11.MUST_CLOSE:
                    self._close()
                    return
                self.http.start_next_cycle()
                self._arm_idle()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    @staticmethod
    def _is_upgrade(request: h11.Request) -> bool:
        headers = {k.lower(): v.lower() for k, v in request.headers}
        return headers.get(b"upgrade") == b"websocket"

    def _route(self) -> None:
        request = self.request
        assert request is not None
        path = request.target.split(b"?", 1)[0]
        if request.method not in (b"GET", b"HEAD"):
            self._respond(405, b"method not allowed\n", (("allow", "GET, HEAD"),))
        elif path == b"/":
            self._respond(200, self.server.page, (("content-type", "text/html; charset=utf-8"),))
        elif path == b"/metrics":
            text = render_metrics(self.server.hub.metrics()).encode()
            ctype = "text/plain; version=0.0.4; charset=utf-8"
            self._respond(200, text, (("content-type", ctype),))
        elif path == b"/ws":
            self._respond(426, b"use a WebSocket client here\n", (("upgrade", "websocket"),))
        else:
            self._respond(404, b"not found\n")

    def _respond(self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
        if self.http.our_state is not h11.SEND_RESPONSE or self.transport is None:
            return
        head = [("content-length", str(len(body))), ("cache-control", "no-store"), *headers]
        if "content-type" not in dict(headers):
            head.append(("content-type", "text/plain; charset=utf-8"))
        is_head = self.request is not None and self.request.method == b"HEAD"
        out = self.http.send(h11.Response(status_code=status, headers=head)) or b""
        if not is_head:
            out += self.http.send(h11.Data(data=body)) or b""
        out += self.http.send(h11.EndOfMessage()) or b""
        self.transport.write(out)

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            if self.abort_later is not None:
                self.abort_later.cancel()
            self.abort_later = self.server.loop.call_later(CLOSE_GRACE, self.transport.abort)

    # --- WebSocket --------------------------------------------------------------------------

    def _upgrade(self, request: h11.Request) -> None:
        assert self.transport is not None
        path = request.target.split(b"?", 1)[0]
        trailing, _ = self.http.trailing_data
        if self.abort_later is not None:
            self.abort_later.cancel()  # a WebSocket may idle; the hub and TCP watch it
            self.abort_later = None
        ws = self.ws = WSConnection(ConnectionType.SERVER)
        ws.initiate_upgrade_connection(list(request.headers), request.target)
        for event in ws.events():
            if not isinstance(event, Request):
                continue
            if path != b"/ws":
                self.transport.write(ws.send(RejectConnection(status_code=404)))
                self._close()
                return
            # No extensions: every client gets the same uncompressed frame bytes.
            self.transport.write(ws.send(AcceptConnection()))
            self.client = self.server.ws_joined(self)
        if trailing:
            self._ws_data(bytes(trailing))

    def _ws_data(self, data: bytes) -> None:
        ws = self.ws
        client = self.client
        assert ws is not None
        assert self.transport is not None
        try:
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, (TextMessage, BytesMessage)) and client is not None:
                    client.fragment(event.data, event.message_finished)
                elif isinstance(event, Ping):
                    self.transport.write(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(Exception):
                        self.transport.write(ws.send(event.response()))
                    self._close()
                    return
        except RemoteProtocolError as exc:
            # The peer broke the WebSocket protocol (e.g. invalid UTF-8 in a text frame).
            code = int(getattr(exc.event_hint, "code", CloseCode.PROTOCOL_ERROR) or 1002)
            if client is not None:
                client.close(code, str(exc))
            else:
                self._close()


class _WsClient(_Client):
    __slots__ = ("buffer", "limit", "overflow", "proto")

    def __init__(self, server: ChatServer, cid: int, proto: _WebProtocol) -> None:
        super().__init__(server, cid)
        self.proto = proto
        self.buffer: list[str | bytes] = []
        self.limit = server.hub.options.max_command_bytes
        self.overflow = 0

    def fragment(self, data: str | bytes | bytearray, finished: bool) -> None:
        """Part of a message: kept up to the command limit (a bigger one gets an error)."""
        if self.overflow <= self.limit:
            self.buffer.append(bytes(data) if isinstance(data, bytearray) else data)
        self.overflow += len(data)
        if not finished:
            return
        parts, self.buffer, self.overflow = self.buffer, [], 0
        message: str | bytes = (
            "".join(p for p in parts if isinstance(p, str))
            if parts and isinstance(parts[0], str)
            else b"".join(p for p in parts if isinstance(p, bytes))
        )
        self.server.received(self, [message])

    def frame(self, payload: Payload) -> bytes:
        return payload.memo("ws", _ws_text_frame)

    def paused(self) -> bool:
        return self.proto.write_paused

    def write(self, chunks: list[bytes]) -> None:
        transport = self.proto.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        ws = self.proto.ws
        reason = reason.encode()[:120].decode(errors="ignore")  # a close frame holds 123 bytes
        if ws is not None:
            with contextlib.suppress(Exception):
                self.write([ws.send(CloseConnection(code=code, reason=reason))])
        self.proto._close()


class ChatServer:
    """A running chat hub: native listeners, the web port, and the router between them."""

    def __init__(
        self,
        hub: Hub | None = None,
        *,
        policy: SlowClientPolicy | None = None,
        page: bytes | None = None,
        http_idle: float = HTTP_IDLE,
    ) -> None:
        self.hub = hub or Hub(ChatOptions())
        self.http_idle = http_idle
        self.policy = policy or SlowClientPolicy()
        self.page = web.page() if page is None else page
        self.loop = asyncio.get_running_loop()
        self.clients: dict[int, _Client] = {}
        self.native: list[Server] = []
        self.web_addresses: list[Address] = []
        self._web_servers: list[asyncio.Server] = []
        self._web_conns: set[_WebProtocol] = set()
        self._ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._backlog: set[_Client] = set()
        self._lag_timer: asyncio.TimerHandle | None = None
        self._waiters: set[asyncio.Task[None]] = set()
        self.link: RedisLink | None = None

    # --- starting and stopping --------------------------------------------------------------

    async def listen(
        self,
        url: str | Address,
        *,
        tls: TLSOptions | None = None,
        options: SocketOptions | None = None,
        limits: ServerLimits | None = None,
    ) -> Server:
        """Serve native clients (framed protocol, codec json) on ``url``."""
        from . import serve

        # Frames a bit over the command limit still reach the hub (the sender gets a
        # too_large error event); far bigger ones end the connection before they are buffered.
        frame_limit = max(64 * 1024, 4 * self.hub.options.max_command_bytes)
        protocol = ProtocolOptions(codecs=("json",), max_frame_size=frame_limit)
        server = await serve(
            url, self._native, protocol=protocol, tls=tls, options=options, limits=limits
        )
        self.native.append(server)
        return server

    async def listen_web(
        self,
        url: str | Address,
        *,
        tls: TLSOptions | None = None,
        options: SocketOptions | None = None,
    ) -> None:
        """Serve ``/``, ``/ws`` and ``/metrics`` on ``url`` (http://, https://, unix://)."""
        addr = http_address(url)
        ctx: ssl.SSLContext | None = None
        if addr.is_tls:
            ctx = tlsmod.server_context(tls or TLSOptions())
        opts = options or SocketOptions()
        for sock in bind_sockets(addr, opts):
            srv = await self.loop.create_server(
                lambda: _WebProtocol(self), sock=sock, ssl=ctx, backlog=opts.backlog
            )
            self._web_servers.append(srv)
            bound = from_sockaddr(addr.scheme, sock.getsockname())
            self.web_addresses.append(bound if bound.is_unix else bound.with_scheme(addr.scheme))

    def use_redis(self, host: str = "127.0.0.1", port: int = 6379) -> RedisLink:
        """Share rooms with other hubs through Redis (the hub needs a RedisBackplane)."""
        if not isinstance(self.hub.backplane, RedisBackplane):
            raise ConfigError("a Redis backplane needs Hub(options, RedisBackplane(), node=...)")
        try:
            from .chat_redis import RedisLink
        except ImportError as exc:
            raise ConfigError(
                f"a Redis backplane needs the redis client library ({exc}): "
                "pip install 'opensocket[redis]'"
            ) from None
        self.link = RedisLink(self.hub, self.apply, host, port)
        self.link.start()
        return self.link

    @property
    def urls(self) -> list[str]:
        """The native addresses, e.g. ``tcp://127.0.0.1:7000``."""
        return [str(a) for server in self.native for a in server.addresses]

    @property
    def web_urls(self) -> list[str]:
        """The web addresses as URLs, e.g. ``http://127.0.0.1:8080/``."""
        return [
            str(a) if a.is_unix else f"{'https' if a.is_tls else 'http'}://{a.hostport}/"
            for a in self.web_addresses
        ]

    async def close(self) -> None:
        """Stop listening and close every client with 'going away'."""
        for srv in self._web_servers:
            srv.close()
        clients = list(self.clients.values())
        for client in clients:
            client.close(CloseCode.GOING_AWAY, "server shutting down")
        for client in clients:  # after the closes: nobody gets quit notices for the others
            self.gone(client, "server shutting down")  # memberships leave the backplane too
        if self.link is not None:
            await self.link.aclose()
        for server in self.native:
            await server.close(timeout=1.0)
        for conn in list(self._web_conns):
            if conn.transport is not None:
                conn.transport.abort()
        for srv in self._web_servers:
            await srv.wait_closed()
        for handle in (self._timer, self._lag_timer):
            if handle is not None:
                handle.cancel()

    async def __aenter__(self) -> ChatServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- connections ------------------------------------------------------------------------

    async def _native(self, conn: Connection) -> None:
        proto: FramedProtocol = conn._proto
        cid = next(self._ids)
        client = _NativeClient(self, cid, proto)
        self.clients[cid] = client
        ip = _ip(proto.transport) if proto.transport is not None else None
        self.apply(self.hub.connect(cid, time.time(), ip, "native"))
        # Raw payloads straight to the hub: it checks UTF-8 and JSON and answers bad input
        # with an error event (the connection's json codec would close on it instead).
        proto.receiver = lambda items: self.received(client, items)
        if proto.inbox:
            queued = list(proto.inbox)
            proto.inbox.clear()
            proto.taken(sum(map(len, queued)))
            self.received(client, queued)
        try:
            await conn.wait_closed()
        finally:
            self.gone(client, conn.close_reason or "connection closed")

    def ws_joined(self, proto: _WebProtocol) -> _WsClient:
        """A WebSocket handshake completed."""
        client = _WsClient(self, next(self._ids), proto)
        self.clients[client.cid] = client
        ip = _ip(proto.transport) if proto.transport is not None else None
        self.apply(self.hub.connect(client.cid, time.time(), ip, "websocket"))
        return client

    def received(self, client: _Client, items: list[Any]) -> None:
        """Commands from a client, in order."""
        hub = self.hub
        for item in items:
            if client.cid not in self.clients:
                return
            data = item if isinstance(item, (bytes, str)) else item.payload
            self.apply(hub.receive(client.cid, data, time.time()))

    def gone(self, client: _Client, reason: str) -> None:
        """A connection ended, whoever ended it."""
        if self.clients.pop(client.cid, None) is not None:
            client.closing = True
            self._backlog.discard(client)
            self.apply(self.hub.disconnect(client.cid, time.time(), reason))

    # --- routing ----------------------------------------------------------------------------

    def apply(self, out: list[Outgoing]) -> None:
        """Route the hub's output: deliveries to queues, closes to connections."""
        now = time.time()
        clients = self.clients
        for item in out:
            if isinstance(item, Deliver):
                payload = item.payload
                for cid in item.recipients:
                    client = clients.get(cid)  # type: ignore[call-overload]
                    if client is not None:
                        client.push(payload, now)
            elif isinstance(item, Close):
                client = clients.get(item.client)  # type: ignore[call-overload]
                if client is not None:
                    client.close(item.code, item.reason)
        self._arm_timer()

    def slow(self, client: _Client, reason: str) -> None:
        """A client fell too far behind: drop it, tell the others why."""
        log.warning("client %s is too slow, disconnecting: %s", client.cid, reason)
        self.hub.record_drop("slow")
        client.close(CloseCode.SLOW_CONSUMER, reason)
        self.gone(client, reason)

    def backlogged(self, client: _Client) -> None:
        """A client's transport is full: flush its queue when it drains; watch its lag."""
        if client in self._backlog or client.closing:
            return
        self._backlog.add(client)
        if isinstance(client, _NativeClient):
            task = self.loop.create_task(self._drain_native(client))
            self._waiters.add(task)
            task.add_done_callback(self._waiters.discard)
        if self._lag_timer is None and self.policy.max_lag is not None:
            self._lag_timer = self.loop.call_later(LAG_TICK, self._check_lag)

    async def _drain_native(self, client: _NativeClient) -> None:
        with contextlib.suppress(Exception):
            while not client.closing and (len(client.queue) or client.paused()):
                await client.wait_writable()
                client.flush()
        self._backlog.discard(client)

    def _check_lag(self) -> None:
        self._lag_timer = None
        now = time.time()
        for client in list(self._backlog):
            if not len(client.queue) and not client.paused():
                self._backlog.discard(client)
            elif (reason := client.queue.check(now)) is not None:
                self.slow(client, reason)
        if self._backlog:
            self._lag_timer = self.loop.call_later(LAG_TICK, self._check_lag)

    def _arm_timer(self) -> None:
        deadline = self.hub.get_timer()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            delay = max(0.0, deadline - time.time())
            self._timer = self.loop.call_later(delay, self._fire_timer)

    def _fire_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.apply(self.hub.handle_timer(time.time()))


async def serve_chat(
    listen: Sequence[str | Address] = (),
    web: Sequence[str | Address] = (),
    *,
    hub: Hub | None = None,
    options: ChatOptions | None = None,
    policy: SlowClientPolicy | None = None,
    tls: TLSOptions | None = None,
    socket_options: SocketOptions | None = None,
    limits: ServerLimits | None = None,
    redis: str | None = None,
    node: str | None = None,
) -> ChatServer:
    """Start a chat hub on native addresses ``listen`` and web addresses ``web``.

    ``redis`` (``redis://HOST:PORT``) shares rooms, nicks and history with other hubs;
    ``node`` names this hub in the cluster (default: host name and process id).
    """
    if hub is None:
        options = options or ChatOptions()
        if redis is None:
            hub = Hub(options)
        else:
            hub = Hub(
                options, RedisBackplane(), node=node or f"{socket.gethostname()}-{os.getpid()}"
            )
    server = ChatServer(hub, policy=policy)
    try:
        if redis is not None:
            server.use_redis(*redis_address(redis))
        for url in listen:
            await server.listen(url, tls=tls, options=socket_options, limits=limits)
        for url in web:
            await server.listen_web(url, tls=tls, options=socket_options)
    except BaseException:
        await server.close()
        raise
    for url in server.urls + server.web_urls:
        log.info("chat hub on %s", url)
    return server
