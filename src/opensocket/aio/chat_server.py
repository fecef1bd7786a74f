"""The chat hub's asyncio server: one ``Hub`` for native clients and browser WebSocket clients.

Native clients speak the framed protocol (codec ``json``): each DATA payload goes to
``hub.receive`` as raw bytes, so the hub validates JSON and UTF-8 itself. Browser clients
connect over WebSocket at ``/ws`` on the HTTP port, which also serves ``/`` (the page) and
``/metrics`` (Prometheus text): see ``aio.chat_web``. The hub's output is routed to a bounded
``ClientQueue`` per client: a client that stops reading is disconnected (close code 4011)
when it falls too far behind, and nobody else waits for it. An event is encoded once and
framed once per kind of link (``Payload.memo``), so a recipient costs an append.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from .. import tls as tlsmod
from .._sockets import bind_sockets
from ..address import Address, from_sockaddr
from ..chat import web
from ..chat.flow import SlowClientPolicy
from ..chat.hub import Hub
from ..chat.options import ChatOptions
from ..chat.outgoing import Close, Deliver, Outgoing, Payload
from ..chat.redis_backplane import RedisBackplane, RedisTarget, parse_redis_url
from ..errors import CloseCode, ConfigError, OpenSocketError
from ..http.server import http_address
from ..options import ProtocolOptions, ServerLimits, SocketOptions, TLSOptions
from ..protocol.frame import FrameType, frame_bytes
from ._accept import Acceptor
from ._chat_route import TRANSPORT_HIGH, Coalescer, RoutedClient
from ._framed import Connection
from .chat_web import HTTP_IDLE, Pinger, WebListener, WebProtocol, WsClient, normalize_origin
from .server import Server

if TYPE_CHECKING:
    from .chat_redis import RedisLink

__all__ = ["ChatServer", "serve_chat"]

log = logging.getLogger("opensocket.chat")
LAG_TICK: Final = 1.0
WS_PING: Final = 20.0  # seconds between pings to WebSocket clients
WS_PING_TIMEOUT: Final = 20.0  # a WebSocket client silent this long after a ping is dropped


def _frame_checked(data: bytes) -> bytes:
    return frame_bytes(FrameType.DATA, data, checksum=True)


def _frame_plain(data: bytes) -> bytes:
    return frame_bytes(FrameType.DATA, data, checksum=False)


class _NativeClient(RoutedClient):
    __slots__ = ("conn", "framer", "memo_key", "pending")

    def __init__(self, server: ChatServer, cid: int, conn: Connection) -> None:
        super().__init__(server, cid)
        self.conn = conn
        # Each event is framed once per checksum setting, not once per recipient.
        checked = conn.checksum
        self.memo_key = "framed+crc" if checked else "framed"
        self.framer = _frame_checked if checked else _frame_plain
        # The ClientQueue is the bound: keep the transport's own buffer small (the framed
        # server's default is sized for bulk transfers, not for chat fan-out).
        conn.set_write_buffer_limits(high=TRANSPORT_HIGH)
        self.pending = False  # frames queued in the connection, written at the iteration's end

    def frame(self, payload: Payload) -> bytes:
        return payload.memo(self.memo_key, self.framer)  # DATA frame of the event's JSON

    def paused(self) -> bool:
        return not self.conn.writable

    def write(self, chunks: list[bytes]) -> None:
        conn = self.conn
        if not conn.is_open:
            return  # the connection is ending (no exception per event); its disconnect follows
        try:
            conn.send_frames(chunks, flush=False)
        except OpenSocketError as exc:  # e.g. an event over the peer's frame size limit
            log.warning("client %s cannot take an event, closing: %s", self.cid, exc)
            self.close(CloseCode.INTERNAL_ERROR, "the hub could not send an event")
            return
        if not self.pending:
            self.pending = True
            self.server.output.add(self)

    def send_pending(self) -> None:
        """Write what this loop iteration queued, in one write."""
        self.pending = False
        conn = self.conn
        conn.flush()
        if not conn.writable:
            self.server.backlogged(self)

    async def wait_writable(self) -> None:
        await self.conn.drain()

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.conn.close_nowait(code, reason)  # the close timeout aborts a stuck peer


class ChatServer:
    """A running chat hub: native listeners, the web port, and the router between them."""

    def __init__(
        self,
        hub: Hub | None = None,
        *,
        policy: SlowClientPolicy | None = None,
        page: bytes | None = None,
        http_idle: float = HTTP_IDLE,
        ws_ping: float | None = WS_PING,
        ws_ping_timeout: float = WS_PING_TIMEOUT,
        allow_origins: Sequence[str] = (),
    ) -> None:
        """``ws_ping``: seconds between pings to WebSocket clients (None: no pings); one that
        has not answered a ping within ``ws_ping_timeout`` s is dropped. A browser's WebSocket
        must come from the hub's own page (its Origin's host:port that of the Host header)
        or from one of ``allow_origins`` (``https://host[:port]``; ``*`` for any)."""
        if (ws_ping is not None and ws_ping <= 0) or ws_ping_timeout <= 0:
            raise ConfigError("ws_ping and ws_ping_timeout must be positive (ws_ping None: off)")
        self.allow_origins = frozenset(normalize_origin(o) for o in allow_origins)
        self.hub = hub or Hub(ChatOptions())
        self.http_idle = http_idle
        self.closing = False
        self.policy = policy or SlowClientPolicy()
        self.page = web.page() if page is None else page
        self.loop = asyncio.get_running_loop()
        self.clients: dict[int, RoutedClient] = {}
        self.native: list[Server] = []
        self.web_addresses: list[Address] = []
        self._web_servers: list[asyncio.Server] = []
        self._web_listeners: list[WebListener] = []
        self.web_conns: set[WebProtocol] = set()
        self._pinger = None if ws_ping is None else Pinger(self, ws_ping, ws_ping_timeout)
        self.output = Coalescer(self.loop)
        self._ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._backlog: set[RoutedClient] = set()
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
        limits: ServerLimits | None = None,
    ) -> None:
        """Serve ``/``, ``/ws`` and ``/metrics`` on ``url`` (http://, https://, unix://).

        ``limits`` protects the port as it protects native listeners: allow/deny lists,
        connections in total and per IP, new connections per second per IP.
        """
        addr = http_address(url)
        ctx: ssl.SSLContext | None = None
        if addr.is_tls:
            ctx = tlsmod.server_context(tls or TLSOptions())
        opts = options or SocketOptions()
        listener = WebListener(self, ctx, limits or ServerLimits())
        self._web_listeners.append(listener)
        for sock in bind_sockets(addr, opts):
            srv = await self.loop.create_server(
                partial(Acceptor, listener.accepted), sock=sock, backlog=opts.backlog
            )
            self._web_servers.append(srv)
            bound = from_sockaddr(addr.scheme, sock.getsockname())
            self.web_addresses.append(bound if bound.is_unix else bound.with_scheme(addr.scheme))
        if self._pinger is not None:
            self._pinger.start()

    def use_redis(
        self, target: RedisTarget | str = "redis://127.0.0.1:6379", *, tls: TLSOptions | None = None
    ) -> RedisLink:
        """Share rooms with other hubs through Redis (the hub needs a RedisBackplane).

        ``target`` is a RedisTarget or a ``redis://``/``rediss://`` URL (password and database
        number honoured); ``tls`` verifies a ``rediss://`` server (default: the system's CAs).
        """
        if not isinstance(self.hub.backplane, RedisBackplane):
            raise ConfigError("a Redis backplane needs Hub(options, RedisBackplane(), node=...)")
        if isinstance(target, str):
            target = parse_redis_url(target)
        try:
            from .chat_redis import RedisLink
        except ImportError as exc:
            raise ConfigError(
                f"a Redis backplane needs the redis client library ({exc}): "
                "pip install 'opensocket[redis]'"
            ) from None
        if target.tls and tls is None:
            tls = TLSOptions()
        self.link = RedisLink(
            self.hub,
            self.apply,
            target.host,
            target.port,
            db=target.db,
            username=target.username,
            password=target.password,
            tls=tls if target.tls else None,
        )
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
        self.closing = True
        if self._pinger is not None:
            self._pinger.stop()
        for srv in self._web_servers:
            srv.close()
        for listener in self._web_listeners:
            listener.close()
        clients = list(self.clients.values())
        for client in clients:
            client.close(CloseCode.GOING_AWAY, "server shutting down")
        for client in clients:  # after the closes: nobody gets quit notices for the others
            self.gone(client, "server shutting down")  # memberships leave the backplane too
        if self.link is not None:
            await self.link.aclose()
        for server in self.native:
            await server.close(timeout=1.0)
        for conn in list(self.web_conns):
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
        cid = next(self._ids)
        client = _NativeClient(self, cid, conn)
        self.clients[cid] = client
        peer = conn.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else None
        self.apply(self.hub.connect(cid, time.time(), ip, "native"))
        # Raw payloads straight to the hub: it checks UTF-8 and JSON and answers bad input
        # with an error event (the connection's json codec would close on it instead).
        conn.set_receiver(lambda items: self.received(client, items), raw=True)
        try:
            await conn.wait_closed()
        finally:
            self.gone(client, conn.close_reason or "connection closed")

    def ws_joined(self, proto: WebProtocol) -> WsClient:
        """A WebSocket handshake completed."""
        client = WsClient(self, next(self._ids), proto)
        self.clients[client.cid] = client
        self.apply(self.hub.connect(client.cid, time.time(), proto.ip, "websocket"))
        return client

    def received(self, client: RoutedClient, items: list[Any]) -> None:
        """Commands from a client, in order."""
        hub = self.hub
        for item in items:
            if client.cid not in self.clients:
                return
            data = item if isinstance(item, (bytes, str)) else item.payload
            self.apply(hub.receive(client.cid, data, time.time()))

    def gone(self, client: RoutedClient, reason: str) -> None:
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

    def slow(self, client: RoutedClient, reason: str) -> None:
        """A client fell too far behind: drop it, tell the others why."""
        log.warning("client %s is too slow, disconnecting: %s", client.cid, reason)
        self.hub.record_drop("slow")
        client.close(CloseCode.SLOW_CONSUMER, reason)
        self.gone(client, reason)

    def unresponsive(self, client: RoutedClient, reason: str) -> None:
        """A client stopped answering pings (a vanished browser): drop it now."""
        log.info("client %s is unresponsive, dropping: %s", client.cid, reason)
        self.hub.record_drop("ping timeout")
        client.close(CloseCode.HEARTBEAT_TIMEOUT, reason)
        self.gone(client, reason)

    def backlogged(self, client: RoutedClient) -> None:
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
            elif (reason := client.queue.check(now) or client.stalled(now)) is not None:
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
    redis: str | RedisTarget | None = None,
    redis_tls: TLSOptions | None = None,
    node: str | None = None,
    ws_ping: float | None = WS_PING,
    ws_ping_timeout: float = WS_PING_TIMEOUT,
    allow_origins: Sequence[str] = (),
) -> ChatServer:
    """Start a chat hub on native addresses ``listen`` and web addresses ``web``.

    ``redis`` (``redis://[:PASSWORD@]HOST:PORT/DB``, ``rediss://`` for TLS verified with
    ``redis_tls``) shares rooms, nicks and history with other hubs; ``node`` names this hub
    in the cluster (default: host name and process id). ``limits`` protects native and web
    listeners alike; WebSocket clients are pinged every ``ws_ping`` s and dropped when one goes
    unanswered for ``ws_ping_timeout`` s. ``socket_options.reuse_port`` lets
    several hub processes listen on the same ports (SO_REUSEPORT; give each the same
    ``redis`` so that they share rooms). ``allow_origins`` lists the other sites whose pages
    may open a WebSocket to the hub (``*``: any); the hub's own page always may.
    """
    if hub is None:
        options = options or ChatOptions()
        if redis is None:
            hub = Hub(options)
        else:
            hub = Hub(
                options, RedisBackplane(), node=node or f"{socket.gethostname()}-{os.getpid()}"
            )
    server = ChatServer(
        hub,
        policy=policy,
        ws_ping=ws_ping,
        ws_ping_timeout=ws_ping_timeout,
        allow_origins=allow_origins,
    )
    try:
        if redis is not None:
            server.use_redis(redis, tls=redis_tls)
        for url in listen:
            await server.listen(url, tls=tls, options=socket_options, limits=limits)
        for url in web:
            await server.listen_web(url, tls=tls, options=socket_options, limits=limits)
    except BaseException:
        await server.close()
        raise
    for url in server.urls + server.web_urls:
        log.info("chat hub on %s", url)
    return server
