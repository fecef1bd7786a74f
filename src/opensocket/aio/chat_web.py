"""The chat hub's web port: the page at ``/``, WebSocket clients at ``/ws``, ``/metrics``.

HTTP is parsed by h11 and WebSocket by wsproto (both sans-IO); this module only moves bytes.
``WebListener`` admits connections as the framed servers do (``aio._accept.screen``: ACL,
connection caps, per-IP rate) before any TLS work, and ``Pinger`` pings WebSocket clients so
that a browser that vanished without a close (a laptop lid, a lost network) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, cast

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from ..admission import Admission, Refusal
from ..chat.metrics import render_metrics
from ..chat.outgoing import Payload
from ..errors import CloseCode
from ..options import ServerLimits
from ..stats import ServerStats
from ._accept import Early, detach_socket, screen
from ._chat_route import TRANSPORT_HIGH, WRITE_CHUNK, RoutedClient

if TYPE_CHECKING:
    from .chat_server import ChatServer

__all__ = [
    "HTTP_IDLE",
    "Pinger",
    "WebListener",
    "WebProtocol",
    "WsClient",
    "ws_text_frame",
]

log = logging.getLogger("opensocket.chat")
CLOSE_GRACE: Final = 5.0  # a closing client that does not read is aborted after this
HTTP_IDLE: Final = 15.0  # an HTTP connection (not yet a WebSocket) must send a request by then
LINGER: Final = 1.0  # a refused client has this long to read why before its socket closes
MAX_LINGERING: Final = 256  # beyond this many, refused sockets are closed at once (a flood)


def ws_text_frame(data: bytes) -> bytes:
    """A complete unmasked WebSocket text frame (server to client), built once per event."""
    n = len(data)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + data


class WebProtocol(asyncio.Protocol):
    """One HTTP connection: ``/``, ``/metrics``, or the upgrade to WebSocket at ``/ws``."""

    def __init__(
        self, server: ChatServer, ip: str | None = None, admission: Admission | None = None
    ) -> None:
        self.server = server
        self.ip = ip
        self.admission = admission  # released when the connection ends
        self.transport: asyncio.Transport | None = None
        self.http = h11.Connection(h11.SERVER)
        self.ws: WSConnection | None = None
        self.client: WsClient | None = None
        self.request: h11.Request | None = None
        self.write_paused = False
        self.abort_later: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they behave as one.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH)
        self.server.web_conns.add(self)
        self._arm_idle()

    def _arm_idle(self) -> None:
        if self.abort_later is not None:
            self.abort_later.cancel()
        transport = self.transport
        if transport is not None:
            self.abort_later = self.server.loop.call_later(self.server.http_idle, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.web_conns.discard(self)
        if self.admission is not None:
            self.admission.release(self.ip)
            self.admission = None
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
            self.close()

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
                    self.close()
                    return
                self.http.start_next_cycle()
                self._arm_idle()
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
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

    def close(self) -> None:
        """Close after what is written (aborted if the peer does not read it in time)."""
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
                self.close()
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
                elif isinstance(event, Pong) and client is not None:
                    client.ping_sent = None
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(Exception):
                        self.transport.write(ws.send(event.response()))
                    self.close()
                    return
        except RemoteProtocolError as exc:
            # The peer broke the WebSocket protocol (e.g. invalid UTF-8 in a text frame).
            code = int(getattr(exc.event_hint, "code", CloseCode.PROTOCOL_ERROR) or 1002)
            if client is not None:
                client.close(code, str(exc))
            else:
                self.close()


class WsClient(RoutedClient):
    """A WebSocket client: events go out as text frames built once per event, and a client's
    frames of one loop iteration leave in one ``transport.write`` (one system call), as the
    framed runtime coalesces a native client's output."""

    __slots__ = ("buffer", "limit", "overflow", "pending", "ping_sent", "pinged", "proto")

    def __init__(self, server: ChatServer, cid: int, proto: WebProtocol) -> None:
        super().__init__(server, cid)
        self.proto = proto
        self.pending: list[bytes] | None = None  # frames written at the end of this iteration
        self.pinged = server.loop.time()  # when the last ping went out
        self.ping_sent: float | None = None  # set while a ping waits for its pong
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
        return payload.memo("ws", ws_text_frame)

    def paused(self) -> bool:
        return self.proto.write_paused

    def write(self, chunks: list[bytes]) -> None:
        pending = self.pending
        if pending is None:
            self.pending = list(chunks)
            self.server.output.add(self)
        else:
            pending.extend(chunks)

    def send_pending(self) -> None:
        """Hand this iteration's frames to the transport in one write."""
        pending, self.pending = self.pending, None
        transport = self.proto.transport
        if pending and transport is not None and not transport.is_closing():
            transport.write(b"".join(pending) if len(pending) > 1 else pending[0])

    def flush(self) -> None:
        """Move queued frames to the transport while it accepts them (after what is pending:
        the order of events is kept)."""
        self.send_pending()
        queue = self.queue
        while len(queue) and not self.paused() and not self.closing:
            self.pending = queue.pop(WRITE_CHUNK)
            self.send_pending()

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        ws = self.proto.ws
        reason = reason.encode()[:120].decode(errors="ignore")  # a close frame holds 123 bytes
        if ws is not None:
            with contextlib.suppress(Exception):
                self.write([ws.send(CloseConnection(code=code, reason=reason))])
        self.send_pending()
        self.proto.close()

    def ping(self, now: float) -> None:
        """Send a ping; its pong clears ``ping_sent``."""
        ws = self.proto.ws
        if ws is None or self.closing:
            return
        self.pinged = now
        if self.ping_sent is None:
            self.ping_sent = now
        self.write([ws.send(Ping(b"hub"))])


class Pinger:
    """Pings every WebSocket client each ``interval`` s; one silent ``timeout`` s is dropped.

    One timer for all clients (a scan per tick), not one per client: ten thousand idle
    browsers cost one callback per tick.
    """

    def __init__(self, server: ChatServer, interval: float, timeout: float) -> None:
        self.server = server
        self.interval = interval
        self.timeout = timeout
        self.tick = min(interval, timeout) / 2
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start ticking (once)."""
        if self.handle is None:
            self.handle = self.server.loop.call_later(self.tick, self._tick)

    def stop(self) -> None:
        """Stop ticking."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _tick(self) -> None:
        server = self.server
        now = server.loop.time()
        for client in [c for c in server.clients.values() if isinstance(c, WsClient)]:
            if client.ping_sent is not None and now - client.ping_sent >= self.timeout:
                server.unresponsive(client, f"no answer to a ping for {self.timeout:g}s")
            elif now - client.pinged >= self.interval:
                client.ping(now)
        self.handle = server.loop.call_later(self.tick, self._tick)


class WebListener:
    """Accepts HTTP connections for a hub: admission (ACL, caps, per-IP rate) on the plain
    socket, then TLS for admitted clients only, then ``WebProtocol``."""

    def __init__(
        self, server: ChatServer, ctx: ssl.SSLContext | None, limits: ServerLimits
    ) -> None:
        self.server = server
        self.ctx = ctx
        self.limits = limits
        self.admission = Admission(limits)
        self.stats = ServerStats()
        self.handshakes: set[asyncio.Task[None]] = set()
        self.lingering: set[_Refused] = set()

    def accepted(self, transport: asyncio.Transport) -> None:
        """A new socket: refuse it (403/429/503 in plain HTTP) or start serving it."""
        server = self.server
        _, ip, refusal = screen(transport, self.admission, self.stats, closing=server.closing)
        if refusal is not None:
            server.hub.record_drop(f"web {CloseCode.describe(refusal.code)}")
            if self.ctx is None and len(self.lingering) < MAX_LINGERING:
                refused = _Refused(_refusal_response(refusal), self.lingering)
                transport.set_protocol(refused)
                refused.connection_made(transport)
            else:
                transport.abort()  # no TLS yet, so no way to say why: just close
            return
        if self.ctx is None:
            self._attach(transport, ip)
            return
        task = server.loop.create_task(self._start_tls(detach_socket(transport), ip))
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)

    async def _start_tls(self, sock: socket.socket, ip: str | None) -> None:
        try:
            transport, _ = await self.server.loop.connect_accepted_socket(
                Early, sock, ssl=self.ctx, ssl_handshake_timeout=self.limits.handshake_timeout
            )
        except BaseException as exc:  # a failed handshake, or cancelled by close()
            sock.close()
            self.admission.release(ip)
            self.stats.handshakes_failed += 1
            if not isinstance(exc, Exception):
                raise
            log.debug("TLS handshake with a web client failed: %s", exc)
            return
        self._attach(transport, ip)

    def _attach(self, transport: asyncio.BaseTransport, ip: str | None) -> None:
        proto = WebProtocol(self.server, ip, self.admission)
        early = transport.get_protocol()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if isinstance(early, Early):
            early.replay(proto)

    def close(self) -> None:
        """Cancel TLS handshakes in progress, drop refused sockets still lingering."""
        for task in list(self.handshakes):
            task.cancel()
        for refused in list(self.lingering):
            refused.transport.abort()


class _Refused(asyncio.Protocol):
    """A refused plain-HTTP socket: answer its request with why, half-close, and drop the
    rest unread until the client closes (briefly): closing with unread input would reset the
    connection and could destroy the answer before the client reads it."""

    def __init__(self, response: bytes, lingering: set[_Refused]) -> None:
        self.response = response
        self.lingering = lingering
        self.transport = cast(asyncio.Transport, None)
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.lingering.add(self)
        self.timer = asyncio.get_running_loop().call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        response, self.response = self.response, b""  # the request itself is not parsed
        if response and not self.transport.is_closing():
            self.transport.write(response)
            if self.transport.can_write_eof():
                self.transport.write_eof()

    def eof_received(self) -> bool:
        return False  # the client is done too: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lingering.discard(self)
        if self.timer is not None:
            self.timer.cancel()


_STATUS: Final[dict[int, int]] = {CloseCode.ACCESS_DENIED: 403, CloseCode.RATE_LIMITED: 429}
_REASONS: Final = {403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}


def _refusal_response(refusal: Refusal) -> bytes:
    """A complete HTTP response that says why a connection is refused."""
    status = _STATUS.get(refusal.code, 503)
    body = f"{refusal.reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body
