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
import time
from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import urlsplit

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
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
from ..errors import CloseCode, ConfigError
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
    "normalize_origin",
    "origin_allowed",
    "ws_text_frame",
]

log = logging.getLogger("opensocket.chat")
_STATUSES: Final = frozenset(s.value for s in HTTPStatus)  # reason phrases h11 leaves out
CLOSE_GRACE: Final = 5.0  # a closing client that does not read is aborted after this
HTTP_IDLE: Final = 15.0  # an HTTP connection (not yet a WebSocket) must send a request by then
LINGER: Final = 1.0  # a refused client has this long to read why before its socket closes
MAX_LINGERING: Final = 256  # beyond this many, refused sockets are closed at once (a flood)
# The page's own headers: no MIME sniffing, no referrer, and no framing by other sites
# (clickjacking: the page sends messages in the user's name).
PAGE_HEADERS: Final = (
    ("content-type", "text/html; charset=utf-8"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("content-security-policy", "frame-ancestors 'none'"),
)
_DEFAULT_PORTS: Final = {"http": 80, "ws": 80, "https": 443, "wss": 443}


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
        self.paused_at = 0.0  # time.time() when writing last paused
        self.pong: bytes | None = None  # the answer to the latest ping, held while paused
        self.draining = False  # our close frame is out: reading until the peer's
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
        # Input makes output (pongs, HTTP answers): a peer that does not read must not make
        # the hub buffer without bound, so stop reading until it catches up.
        self.write_paused = True
        self.paused_at = time.time()
        if self.transport is not None and not self.draining:
            self.transport.pause_reading()
        if self.client is not None:
            self.server.backlogged(self.client)  # stuck longer than max_lag: dropped as slow

    def resume_writing(self) -> None:
        self.write_paused = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        pong, self.pong = self.pong, None
        if pong is not None and self.ws is not None and self.ws.state is ConnectionState.OPEN:
            transport.write(pong)  # never after our close frame
        if self.client is not None:
            self.client.flush()
        if not self.write_paused:
            transport.resume_reading()

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
            self._respond(200, self.server.page, PAGE_HEADERS)
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
        reason = HTTPStatus(status).phrase.encode() if status in _STATUSES else b""
        out = self.http.send(h11.Response(status_code=status, headers=head, reason=reason)) or b""
        if not is_head:
            out += self.http.send(h11.Data(data=body)) or b""
        out += self.http.send(h11.EndOfMessage()) or b""
        self.transport.write(out)

    def close(self) -> None:
        """Close after what is written (aborted if the peer does not read it in time); a
        WebSocket that had to stop reading first waits for the peer's close frame."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        ws = self.ws
        if ws is not None and ws.state is ConnectionState.LOCAL_CLOSING and self.write_paused:
            # Reading was paused, so input waits unread: a socket closed so is reset, and the
            # reset can destroy our close frame (and the reason in it) before the peer reads
            # it. Read (and drop) what the peer sends until its close frame instead.
            if not self.draining:
                self.draining = True
                self._abort_in(CLOSE_GRACE)
                transport.resume_reading()
            return
        transport.close()
        if not self.draining:
            self._abort_in(CLOSE_GRACE)

    def _abort_in(self, delay: float) -> None:
        assert self.transport is not None
        if self.abort_later is not None:
            self.abort_later.cancel()
        self.abort_later = self.server.loop.call_later(delay, self.transport.abort)

    # --- WebSocket --------------------------------------------------------------------------

    def _upgrade(self, request: h11.Request) -> None:
        assert self.transport is not None
        path = request.target.split(b"?", 1)[0]
        trailing, _ = self.http.trailing_data
        if self.abort_later is not None:
            self.abort_later.cancel()  # a WebSocket may idle; the hub and TCP watch it
            self.abort_later = None
        origin = _header(request, b"origin")
        if origin is not None and not origin_allowed(
            origin, _header(request, b"host"), self.server.allow_origins
        ):
            # A browser page from another site (cross-site WebSocket hijacking): the
            # browser sends the user's cookies and network position with it, so refuse.
            log.info("refused a WebSocket from origin %r", origin.decode("latin-1")[:200])
            self.server.hub.record_drop("web origin refused")
            self._respond(403, b"origin not allowed: see --allow-origin\n")
            self.close()
            return
        ws = self.ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.initiate_upgrade_connection(list(request.headers), request.target)
        except RemoteProtocolError as exc:  # e.g. no Sec-WebSocket-Key or -Version
            self.ws = None
            version = _header(request, b"sec-websocket-version")
            if version is not None and version.strip() != b"13":  # RFC 6455 4.4
                body = b"bad websocket handshake: this hub speaks WebSocket version 13\n"
                self._respond(426, body, (("sec-websocket-version", "13"),))
            else:
                self._respond(400, f"bad websocket handshake: {exc}\n".encode())
            self.close()
            return
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
                if isinstance(event, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:  # else it answers ours
                        self.transport.write(ws.send(event.response()))
                    self.close()
                    return
                if ws.state is not ConnectionState.OPEN:
                    continue  # we closed: the rest is dropped until the peer's close frame
                if isinstance(event, (TextMessage, BytesMessage)) and client is not None:
                    client.fragment(event.data, event.message_finished)
                elif isinstance(event, Ping):
                    self._answer_ping(ws.send(event.response()))
                elif isinstance(event, Pong) and client is not None:
                    client.ping_sent = None
        except RemoteProtocolError as exc:
            # The peer broke the WebSocket protocol (e.g. invalid UTF-8 in a text frame).
            code = int(getattr(exc.event_hint, "code", CloseCode.PROTOCOL_ERROR) or 1002)
            if client is not None and not client.closing and ws.state is ConnectionState.OPEN:
                client.close(code, str(exc))
            else:
                self.transport.close()  # broken again while closing: no more waiting

    def _answer_ping(self, pong: bytes) -> None:
        assert self.transport is not None
        if self.write_paused:
            # RFC 6455 5.5.3: answering only the latest ping is enough; a ping flood from a
            # peer that does not read costs one pong, not a pong per ping.
            self.pong = pong
        else:
            self.transport.write(pong)


def _header(request: h11.Request, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in request.headers:
        if key == name:  # h11 lower-cases header names
            return bytes(value)
    return None


def _host_port(scheme: str, netloc: str) -> tuple[str, int] | None:
    """``host[:port]`` as (host, port), the port defaulting to the scheme's (None if bad)."""
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.path:
        return None
    default = _DEFAULT_PORTS.get(scheme)
    if port is None and default is None:
        return None
    return parts.hostname.lower(), port if port is not None else cast(int, default)


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in one canonical form (lower case, explicit port), or ``*``.

    Raises ConfigError for anything else (a path, a user name, an unknown scheme).
    """
    if origin == "*":
        return origin
    scheme, sep, netloc = origin.strip().rstrip("/").partition("://")
    scheme = scheme.lower()
    where = _host_port(scheme, netloc) if sep and scheme in ("http", "https") else None
    if where is None:
        raise ConfigError(
            f"{origin!r} is not an origin: give SCHEME://HOST[:PORT] as a browser sends it "
            "(e.g. https://chat.example.com or http://127.0.0.1:8080), or * for any"
        )
    host = f"[{where[0]}]" if ":" in where[0] else where[0]
    return f"{scheme}://{host}:{where[1]}"


def origin_allowed(origin: bytes, host: bytes | None, allowed: frozenset[str]) -> bool:
    """True if a WebSocket upgrade from ``origin`` may go on: the same host:port as the
    request's Host header (a missing port is the origin scheme's default), or listed in
    ``allowed`` (normalized origins, ``*`` for any)."""
    if "*" in allowed:
        return True
    text = origin.decode("latin-1")
    try:
        canonical = normalize_origin(text)
    except ConfigError:
        return False  # "null" (sandboxed frames, file: pages) and garbage
    if canonical in allowed:
        return True
    scheme, _, netloc = text.partition("://")
    scheme = scheme.lower()
    mine = _host_port(scheme, host.decode("latin-1")) if host else None
    return mine is not None and mine == _host_port(scheme, netloc.rstrip("/"))


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

    def stalled(self, now: float) -> str | None:
        proto = self.proto
        if not proto.write_paused:
            return None
        return self.server.policy.decide(0, 0, now - proto.paused_at)

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
