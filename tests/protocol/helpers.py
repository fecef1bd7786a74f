"""Shared helpers of the sans-IO core tests: an in-memory pair, feeders and frame builders."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable
from typing import Any

from crc32c import crc32c

from opensocket.options import ProtocolOptions
from opensocket.protocol import FramedConnection, FrameType, Role, State
from opensocket.protocol.decoder import FrameDecoder
from opensocket.protocol.events import ConnectionTerminated, Event, HandshakeComplete
from opensocket.protocol.frame import Frame, frame_bytes
from opensocket.protocol.handshake import dump

SECRET = b"correct horse battery staple"


def client(opts: ProtocolOptions | None = None, *, now: float = 0.0, **kw: Any) -> FramedConnection:
    """A client connection with a fixed nonce."""
    kw.setdefault("nonce", bytes(16))
    return FramedConnection(Role.CLIENT, opts, now=now, **kw)


def server(opts: ProtocolOptions | None = None, *, now: float = 0.0, **kw: Any) -> FramedConnection:
    """A server connection with a fixed nonce."""
    kw.setdefault("nonce", bytes([0x11]) * 16)
    return FramedConnection(Role.SERVER, opts, now=now, **kw)


def transfer(src: FramedConnection, dst: FramedConnection, now: float) -> bytes:
    """Move everything ``src`` has to send into ``dst``; return the bytes moved."""
    data = bytes(src.data_to_send())
    if data:
        dst.receive_data(data, now)
    return data


class Pair:
    """A client and a server joined in memory; every byte sent is recorded per direction."""

    def __init__(
        self,
        copts: ProtocolOptions | None = None,
        sopts: ProtocolOptions | None = None,
        *,
        now: float = 0.0,
        **kw: Any,
    ) -> None:
        ckw = {k[2:]: v for k, v in kw.items() if k.startswith("c_")}
        skw = {k[2:]: v for k, v in kw.items() if k.startswith("s_")}
        common = {k: v for k, v in kw.items() if not k.startswith(("c_", "s_"))}
        self.client = client(copts, now=now, **common, **ckw)
        self.server = server(sopts, now=now, **common, **skw)
        self.wire: dict[str, bytearray] = {"c2s": bytearray(), "s2c": bytearray()}
        self.events: dict[str, list[Event]] = {"client": [], "server": []}

    def c2s(self, now: float = 0.0) -> bytes:
        """Deliver the client's output to the server."""
        data = transfer(self.client, self.server, now)
        self.wire["c2s"] += data
        return data

    def s2c(self, now: float = 0.0) -> bytes:
        """Deliver the server's output to the client."""
        data = transfer(self.server, self.client, now)
        self.wire["s2c"] += data
        return data

    def exchange(self, now: float = 0.0, rounds: int = 10) -> None:
        """Deliver in both directions until both sides are quiet (bounded)."""
        for _ in range(rounds):
            moved = self.c2s(now) + self.s2c(now)
            if not moved:
                break
        self.collect()

    def collect(self) -> None:
        """Move new events of both sides into ``events``."""
        self.events["client"] += self.client.events()
        self.events["server"] += self.server.events()

    def open(self, now: float = 0.0) -> Pair:
        """Run the handshake; assert both sides are open."""
        self.exchange(now)
        assert self.client.state is State.OPEN, self.events
        assert self.server.state is State.OPEN, self.events
        return self

    def terminal(self, side: str) -> ConnectionTerminated:
        """The one ConnectionTerminated of a side (asserts there is exactly one)."""
        self.collect()
        found = [e for e in self.events[side] if isinstance(e, ConnectionTerminated)]
        assert len(found) == 1, self.events[side]
        return found[0]

    def handshake(self, side: str) -> HandshakeComplete:
        """The HandshakeComplete of a side."""
        self.collect()
        found = [e for e in self.events[side] if isinstance(e, HandshakeComplete)]
        assert len(found) == 1, self.events[side]
        return found[0]


def terminated(conn: FramedConnection) -> ConnectionTerminated:
    """The single ConnectionTerminated among the connection's pending events."""
    found = [e for e in conn.events() if isinstance(e, ConnectionTerminated)]
    assert len(found) == 1, found
    return found[0]


def decode_all(data: bytes | bytearray, *, require_checksum: bool = False) -> list[Frame | bytes]:
    """Every complete frame in ``data`` in order: DATA payloads as bytes, the rest as Frame."""
    decoder = FrameDecoder(1 << 30)
    decoder.require_checksum = require_checksum
    decoder.feed(data)
    out: list[Frame | bytes] = []
    while decoder.frames or decoder.messages:
        taken = 0
        for index, frame in decoder.frames:
            out += decoder.messages[taken:index]
            out.append(frame)
            taken = index
        out += decoder.messages[taken:]
        decoder.messages, decoder.frames = [], []
        decoder.decode_pending()
    return out


def error_frame(data: bytes | bytearray) -> tuple[int, str]:
    """The (code, reason) of the ERROR frame that must end ``data``."""
    frames = decode_all(data)
    last = frames[-1]
    assert isinstance(last, Frame), frames
    assert last.type == FrameType.ERROR, frames
    return int.from_bytes(last.payload[:2], "big"), last.payload[2:].decode()


def hello_body(**changes: Any) -> bytes:
    """A valid HELLO body with some fields changed (``None`` removes a field)."""
    body: dict[str, Any] = {
        "checksum": True,
        "codecs": ["bytes"],
        "heartbeat": 15.0,
        "max_frame": 1 << 20,
        "name": "",
        "versions": [1],
    }
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return dump(body)


def welcome_body(**changes: Any) -> bytes:
    """A valid WELCOME body (for a default client) with some fields changed."""
    body: dict[str, Any] = {
        "checksum": True,
        "codec": "bytes",
        "heartbeat": 15.0,
        "max_frame": 1 << 20,
        "name": "",
        "version": 1,
    }
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return dump(body)


def hello(**changes: Any) -> bytes:
    """A HELLO frame."""
    return frame_bytes(FrameType.HELLO, hello_body(**changes))


def welcome(**changes: Any) -> bytes:
    """A WELCOME frame."""
    return frame_bytes(FrameType.WELCOME, welcome_body(**changes))


def chunks_of(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (out-of-range and repeated cuts are ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def feed_receive(conn: FramedConnection, chunk: bytes, now: float) -> None:
    """Deliver through receive_data."""
    conn.receive_data(chunk, now)


def feed_buffer(conn: FramedConnection, chunk: bytes, now: float) -> None:
    """Deliver through get_buffer/buffer_updated, as a BufferedProtocol does."""
    view = memoryview(chunk)
    while view:
        buf = conn.get_buffer(-1)
        count = min(len(buf), len(view))
        buf[:count] = view[:count]
        del buf
        conn.buffer_updated(count, now)
        view = view[count:]


def raw_frame(
    ftype: int,
    body: bytes = b"",
    *,
    flags: int = 1,
    meta_len: int = 0,
    length: int | None = None,
    head: bytes = b"OS\x01\x00",
    crc: int | None = None,
) -> bytes:
    """A frame with any header fields; the CRC is computed over bytes 8.. unless given."""
    tail = struct.pack(">BBHI", ftype, flags, meta_len, len(body) if length is None else length)
    if crc is None:
        crc = crc32c(tail + body) if flags & 1 else 0
    return head + struct.pack(">I", crc) + tail + body


def state(conn: FramedConnection) -> State:
    """The connection's state (a call, so type checkers do not narrow it across actions)."""
    return conn.state
