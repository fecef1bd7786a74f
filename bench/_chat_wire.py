"""Lean chat load-generator clients: the native framed protocol and WebSocket (hub or Socket.IO).

Every client is an ``asyncio.Protocol`` that does its setup (handshake, hello, join) with
ordinary JSON parsing, then switches to a counting mode that is as cheap for each protocol:
the receive path walks the frame headers of a read (one ``unpack_from`` per frame, to find
the end of the last complete frame and to answer pings), then counts the benchmark's marker
(``"text":"@@``) in the complete part with one ``bytes.count`` and, on the clients that sample
latency, reads the send timestamps with one ``re.findall``. Payloads are not validated (no
CRC-32C check, no UTF-8 check, no JSON parsing) on either protocol, so neither side pays
for client work the other skips.

Timestamps are ``CLOCK_MONOTONIC`` nanoseconds, which one Linux machine shares across
processes. Client-to-server WebSocket frames are masked with the all-zero key (valid per
RFC 6455, 5.3: the server unmasks as usual; the payload bytes stay as they are).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
import time
from array import array
from collections.abc import Callable
from typing import Any

from opensocket.options import ProtocolOptions
from opensocket.protocol.connection import FramedConnection, Role, State
from opensocket.protocol.frame import HEADER, FrameType, frame_bytes

# A marker no frame header can contain: CRC-32C and length bytes are binary and may hold "@@".
MARK = b'"text":"@@'
STAMP = re.compile(rb'"text":"@@(\d+) ')
CLOCK = time.CLOCK_MONOTONIC
ROOM = "bench"
NATIVE_OPTIONS = ProtocolOptions(codecs=("json",), heartbeat=0.0, checksum="off")
_DATA = int(FrameType.DATA)
_PING = int(FrameType.PING)
_PONG = int(FrameType.PONG)
_CLOSING = (int(FrameType.CLOSE), int(FrameType.ERROR))
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


def now_ns() -> int:
    """The shared clock (system-wide on Linux), in nanoseconds."""
    return time.clock_gettime_ns(CLOCK)


def marker_text(sender: int, size: int) -> str:
    """A message text carrying the send time and the sender, padded to ``size`` characters."""
    text = f"@@{now_ns()} s{sender}x "
    return text + "." * max(size - len(text), 0)


class Stats:
    """What one client saw while counting: messages, its own echoes, latency samples."""

    __slots__ = ("count", "last_ns", "lat", "own", "own_tag", "wake")

    def __init__(self, sample: bool, own_tag: bytes | None) -> None:
        self.count = 0
        self.own = 0
        self.last_ns = 0
        self.lat: array[int] | None = array("q") if sample else None
        self.own_tag = own_tag
        self.wake: asyncio.Event | None = asyncio.Event() if own_tag else None

    def reset(self) -> None:
        """Start a new round from zero."""
        self.count = self.own = self.last_ns = 0
        if self.lat is not None:
            self.lat = array("q")

    def feed(self, chunk: bytes) -> None:
        """Count markers in a run of complete frames (and sample their latency)."""
        k = chunk.count(MARK)
        if not k:
            return
        now = now_ns()
        self.count += k
        self.last_ns = now
        if self.lat is not None:
            append = self.lat.append
            for stamp in STAMP.findall(chunk):
                append(now - int(stamp))
        if self.own_tag is not None:
            self.own += chunk.count(self.own_tag)
            assert self.wake is not None
            self.wake.set()


class ChatClient(asyncio.Protocol):
    """Common parts: the ready future, failures, the counting switch."""

    def __init__(self, nick: str, room: str, stats: Stats) -> None:
        self.nick = nick
        self.room = room
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.counting = False
        self.closed: str | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.closed or (str(exc) if exc else "closed by the server")
        self._fail(self.closed)

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.nick}: {reason}"))

    def _ready(self) -> None:
        self.counting = True
        if not self.ready.done():
            self.ready.set_result(None)

    def say(self, text: str) -> None:
        """Send one room message."""
        raise NotImplementedError

    def ping(self) -> None:
        """Send something the server answers (used to check a fresh client)."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop the connection."""
        if self.transport is not None:
            self.transport.abort()

    def _split(self, data: bytes, walk: Callable[[bytes], int]) -> None:
        """Process the complete frames of buffered + new bytes; keep the rest."""
        buf = self.buf
        if buf:
            buf += data
            view = bytes(buf)
        else:
            view = data
        end = walk(view)
        if end == len(view):
            if buf:
                buf.clear()
        else:
            self.buf = bytearray(view[end:])
        if self.counting and end:
            self.stats.feed(view[:end] if end != len(view) else view)


class NativeClient(ChatClient):
    """The framed protocol with codec json; the handshake through the library's sans-IO core."""

    def __init__(self, nick: str, room: str, stats: Stats) -> None:
        super().__init__(nick, room, stats)
        self.core: FramedConnection | None = None
        self.checksum = True
        self.pong: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.core = FramedConnection(Role.CLIENT, NATIVE_OPTIONS, now=time.monotonic())
        self._flush_core()

    def _flush_core(self) -> None:
        assert self.core is not None
        assert self.transport is not None
        out = self.core.data_to_send()
        if out:
            self.transport.write(bytes(out))

    def data_received(self, data: bytes) -> None:
        core = self.core
        if core is None:
            self._split(data, self._walk)
            return
        core.receive_data(data, time.monotonic())
        self._flush_core()
        if core.state is State.OPEN:
            assert core.agreement is not None
            self.checksum = core.agreement.checksum
            self.core = None  # the hub sends nothing after WELCOME until we speak
            self.send({"type": "hello", "nick": self.nick})
        elif core.state is State.CLOSED:
            self._fail(f"handshake failed: {core.close_reason}")

    def send(self, obj: dict[str, Any]) -> None:
        """One chat command as a DATA frame."""
        payload = json.dumps(obj, separators=(",", ":")).encode()
        assert self.transport is not None
        self.transport.write(frame_bytes(_DATA, payload, checksum=self.checksum))

    def say(self, text: str) -> None:
        self.send({"type": "say", "room": self.room, "text": text})

    def ping(self) -> None:
        self.pong = asyncio.get_running_loop().create_future()
        self.send({"type": "ping", "data": "fresh"})

    def _walk(self, view: bytes) -> int:
        pos, n = 0, len(view)
        unpack = HEADER.unpack_from
        while pos + 16 <= n:
            _, _, ftype, _, meta, length = unpack(view, pos)
            end = pos + 16 + length
            if end > n:
                break
            if ftype != _DATA:
                self._control(ftype, view[pos + 16 + meta : end])
            elif not self.counting or self.pong is not None:
                self._event(view[pos + 16 + meta : end])
            pos = end
        return pos

    def _control(self, ftype: int, body: bytes) -> None:
        assert self.transport is not None
        if ftype == _PING:
            self.transport.write(frame_bytes(_PONG, body[:64]))
        elif ftype in _CLOSING:
            code = _U16.unpack_from(body)[0] if len(body) >= 2 else 1005
            self.closed = f"closed by the hub: {code} {body[2:].decode(errors='replace')}"
            self._fail(self.closed)

    def _event(self, payload: bytes) -> None:
        event = json.loads(payload)
        kind = event.get("type")
        if kind == "welcome":
            self.send({"type": "join", "room": self.room})
        elif kind == "who":
            self._ready()
        elif kind == "pong" and self.pong is not None and not self.pong.done():
            self.pong.set_result(None)
        elif kind == "error":
            self._fail(f"hub error {event.get('code')}: {event.get('message')}")


class WsClient(ChatClient):
    """A WebSocket client; the application protocol (hub JSON or Socket.IO) in subclasses."""

    path = "/ws"

    def __init__(self, nick: str, room: str, stats: Stats, host: str) -> None:
        super().__init__(nick, room, stats)
        self.host = host
        self.upgraded = False
        self.pong: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        key = base64.b64encode(self.nick.encode().ljust(16, b"-")[:16]).decode()
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert self.transport is not None
        self.transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self._split(data, self._walk)
            return
        self.buf += data
        head, sep, rest = bytes(self.buf).partition(b"\r\n\r\n")
        if not sep:
            return
        self.buf = bytearray()
        if not head.startswith(b"HTTP/1.1 101"):
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            self._fail(f"upgrade refused: {status}")
            return
        self.upgraded = True
        self.on_open()
        if rest:
            self._split(rest, self._walk)

    def send_text(self, text: str) -> None:
        """One masked text frame (zero masking key: the payload goes out as is)."""
        data = text.encode()
        n = len(data)
        if n < 126:
            head = bytes((0x81, 0x80 | n))
        elif n < 65536:
            head = bytes((0x81, 0x80 | 126)) + _U16.pack(n)
        else:
            head = bytes((0x81, 0x80 | 127)) + _U64.pack(n)
        assert self.transport is not None
        self.transport.write(head + b"\0\0\0\0" + data)

    def _walk(self, view: bytes) -> int:
        pos, n = 0, len(view)
        while pos + 2 <= n:
            b0, b1 = view[pos], view[pos + 1]
            size, head = b1 & 0x7F, 2
            if size == 126:
                if pos + 4 > n:
                    break
                size, head = _U16.unpack_from(view, pos + 2)[0], 4
            elif size == 127:
                if pos + 10 > n:
                    break
                size, head = _U64.unpack_from(view, pos + 2)[0], 10
            end = pos + head + size
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode == 1 and (not self.counting or self.pong is not None or size == 1):
                self.on_text(view[pos + head : end])
            elif opcode == 8:
                self.closed = "closed by the server (WebSocket close frame)"
                self._fail(self.closed)
            pos = end
        return pos

    def on_open(self) -> None:
        """The upgrade succeeded."""
        raise NotImplementedError

    def on_text(self, payload: bytes) -> None:
        """A text message during setup (or a short one while counting)."""
        raise NotImplementedError


class HubWsClient(WsClient):
    """The hub's browser path: JSON commands and events as WebSocket text at /ws."""

    def on_open(self) -> None:
        self.send_json({"type": "hello", "nick": self.nick})

    def send_json(self, obj: dict[str, Any]) -> None:
        """One chat command."""
        self.send_text(json.dumps(obj, separators=(",", ":")))

    def say(self, text: str) -> None:
        self.send_json({"type": "say", "room": self.room, "text": text})

    def ping(self) -> None:
        self.pong = asyncio.get_running_loop().create_future()
        self.send_json({"type": "ping", "data": "fresh"})

    def on_text(self, payload: bytes) -> None:
        if len(payload) < 2:
            return
        event = json.loads(payload)
        kind = event.get("type")
        if kind == "welcome":
            self.send_json({"type": "join", "room": self.room})
        elif kind == "who":
            self._ready()
        elif kind == "pong" and self.pong is not None and not self.pong.done():
            self.pong.set_result(None)
        elif kind == "error":
            self._fail(f"hub error {event.get('code')}: {event.get('message')}")


class SioClient(WsClient):
    """Engine.IO v4 / Socket.IO v5 over WebSocket only (no polling), namespace ``/``."""

    path = "/socket.io/?EIO=4&transport=websocket"

    def on_open(self) -> None:
        pass  # the server speaks first: the Engine.IO open packet

    def emit(self, event: str, data: Any) -> None:
        """A Socket.IO EVENT packet in an Engine.IO MESSAGE packet."""
        self.send_text("42" + json.dumps([event, data], separators=(",", ":")))

    def say(self, text: str) -> None:
        self.emit("say", {"room": self.room, "text": text})

    def ping(self) -> None:
        self.pong = asyncio.get_running_loop().create_future()
        self.emit("ping", {"data": "fresh"})

    def on_text(self, payload: bytes) -> None:
        if payload == b"2":  # Engine.IO ping from the server: answer pong
            self.send_text("3")
        elif payload.startswith(b"0{"):  # Engine.IO open: connect to namespace /
            self.send_text("40")
        elif payload.startswith(b"40"):
            self.emit("join", {"room": self.room, "nick": self.nick})
        elif payload.startswith(b"44"):
            self._fail(f"namespace connect refused: {payload[2:].decode(errors='replace')}")
        elif payload.startswith(b"42"):
            event, *_ = json.loads(payload[2:])
            if event == "joined":
                self._ready()
            elif event == "pong" and self.pong is not None and not self.pong.done():
                self.pong.set_result(None)


def client_class(kind: str) -> type[ChatClient]:
    """The client for a row: native, ws (the hub's WebSocket) or socketio."""
    return {"native": NativeClient, "ws": HubWsClient, "socketio": SioClient}[kind]


async def open_client(
    kind: str,
    host: str,
    port: int,
    nick: str,
    room: str,
    stats: Stats,
    timeout: float,
    local_addr: tuple[str, int] | None = None,
) -> ChatClient:
    """Connect one client and wait until it has joined its room."""
    loop = asyncio.get_running_loop()
    cls = client_class(kind)

    def factory() -> ChatClient:
        if cls is NativeClient:
            return NativeClient(nick, room, stats)
        return cls(nick, room, stats, f"{host}:{port}")  # type: ignore[call-arg]

    _, proto = await asyncio.wait_for(
        loop.create_connection(factory, host, port, local_addr=local_addr), timeout
    )
    try:
        await asyncio.wait_for(proto.ready, timeout)
    except BaseException:
        proto.close()
        raise
    return proto
