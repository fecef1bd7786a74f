"""The wire inspector: decode opensocket frames crossing the proxy, in both directions.

Frames are decoded by the protocol's own sans-IO ``FrameDecoder`` (no second parser). Each
connection has one decoder per direction; the WELCOME the server sends tells the inspector
the codec (to show DATA payloads decoded) and whether frames carry checksums. A stream that
is not opensocket frames (TLS, HTTP, anything else) is reported once and then left alone.
The inspector sees the bytes as they are forwarded, after the faults: a corrupted frame
shows up as the checksum error the receiver will see.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ..codecs import Codec, get_codec
from ..errors import OpenSocketError
from ..protocol.connection import decode_close
from ..protocol.decoder import FrameDecoder
from ..protocol.frame import Flags, Frame, FrameType

__all__ = ["ConnectionInspector", "FrameRecord", "format_record"]

PREVIEW: Final = 48
MAX_BODY: Final = 1 << 30  # the inspector shows what the peers accept; it enforces nothing
_JSON_TYPES: Final = frozenset({FrameType.HELLO, FrameType.WELCOME, FrameType.AUTH})
_JSON_TYPES_ALL: Final = _JSON_TYPES | {FrameType.AUTH_OK}
FrameRecord = dict[str, Any]
Sink = Callable[[FrameRecord], None]


def type_name(ftype: int) -> str:
    """``HELLO``, ``DATA``... or ``0x85`` for types this version does not name."""
    try:
        return FrameType(ftype).name
    except ValueError:
        return f"0x{ftype:02x}"


def flag_names(flags: int) -> list[str]:
    """Names of the set flag bits (unknown bits as hex)."""
    names = [f.name or "" for f in Flags if f and flags & f]
    unknown = flags & ~sum(int(f) for f in Flags)
    return names + ([f"0x{unknown:02x}"] if unknown else [])


def preview(data: bytes) -> dict[str, Any]:
    """A short hex and ASCII view of bytes whose meaning is unknown."""
    head = data[:PREVIEW]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in head)
    return {"hex": head.hex(), "ascii": text, "truncated": len(data) > PREVIEW}


@dataclass(slots=True)
class _Link:
    """What one connection's handshake settled, learned from its WELCOME."""

    codec: Codec | None = None
    checksum: bool | None = None


class _Direction:
    """One direction of one connection: a decoder and the records it produced."""

    def __init__(self, conn: int, direction: str, link: _Link, sink: Sink) -> None:
        self.conn = conn
        self.direction = direction
        self.link = link
        self.sink = sink
        self.decoder = FrameDecoder(MAX_BODY)
        self.decoder.require_checksum = False
        self.stopped = False

    def feed(self, data: bytes, now: float) -> None:
        if self.stopped:
            return
        try:
            self.decoder.feed(data)
            self._drain(now)
        except OpenSocketError as exc:
            self.stopped = True
            self.sink(self._base(now) | {"note": f"not opensocket frames ({exc}): passed through"})

    def _drain(self, now: float) -> None:
        decoder = self.decoder
        while decoder.messages or decoder.frames:
            pos = 0
            for index, frame in decoder.frames:
                for message in decoder.messages[pos:index]:
                    self._data(message, now)
                pos = index
                self._frame(frame, now)
            for message in decoder.messages[pos:]:
                self._data(message, now)
            decoder.messages.clear()
            decoder.frames.clear()
            decoder.decode_pending()

    def _base(self, now: float) -> FrameRecord:
        return {"time": round(now, 6), "conn": self.conn, "dir": self.direction}

    def _data(self, message: bytes | Frame, now: float) -> None:
        if isinstance(message, Frame):
            self._frame(message, now)
            return
        flags = (
            ["CHECKSUM"] if self.link.checksum else ([] if self.link.checksum is False else None)
        )
        record = self._base(now) | {"type": "DATA", "flags": flags, "length": len(message)}
        self.sink(record | {"payload": self._payload(message)})

    def _frame(self, frame: Frame, now: float) -> None:
        record = self._base(now) | {
            "type": type_name(frame.type),
            "flags": flag_names(frame.flags),
            "length": len(frame),
        }
        if frame.meta:
            record["meta"] = preview(frame.meta)
        record["payload"] = self._decode(frame)
        self.sink(record)

    def _decode(self, frame: Frame) -> Any:
        body = frame.payload
        if frame.type in _JSON_TYPES_ALL and body:
            try:
                obj = json.loads(body)
            except ValueError:
                return preview(body)
            if frame.type == FrameType.WELCOME and isinstance(obj, dict):
                self._learn(obj)
            return obj
        if frame.type in (FrameType.CLOSE, FrameType.ERROR):
            try:
                code, reason = decode_close(body)
            except OpenSocketError:
                return preview(body)
            return {"code": code, "reason": reason}
        if frame.type == FrameType.DATA:
            return self._payload(body)
        return preview(body) if body else None

    def _learn(self, welcome: dict[str, Any]) -> None:
        if isinstance(welcome.get("checksum"), bool):
            self.link.checksum = welcome["checksum"]
        name = welcome.get("codec")
        if isinstance(name, str) and name != "bytes":
            try:
                self.link.codec = get_codec(name)
            except OpenSocketError:
                self.link.codec = None  # a codec this process does not know: show bytes

    def _payload(self, body: bytes) -> Any:
        codec = self.link.codec
        if codec is not None:
            try:
                return {"decoded": codec.loads(body), "codec": codec.name}
            except OpenSocketError:
                pass
        return preview(body)


class ConnectionInspector:
    """Both directions of one proxied connection; records go to ``sink``."""

    def __init__(self, conn: int, sink: Sink, origin: float = 0.0) -> None:
        self.origin = origin  # times in records count from here (the proxy's start)
        link = _Link()
        self.up = _Direction(conn, "up", link, sink)
        self.down = _Direction(conn, "down", link, sink)

    def feed(self, direction: str, data: bytes, now: float) -> None:
        """Bytes forwarded in ``direction`` at ``now``."""
        (self.up if direction == "up" else self.down).feed(data, now - self.origin)


def _shown(payload: Any) -> str:
    if isinstance(payload, dict) and "hex" in payload and "ascii" in payload:
        more = "..." if payload["truncated"] else ""
        return f"hex {payload['hex']}{more} |{payload['ascii']}|"
    if isinstance(payload, dict) and "decoded" in payload:
        payload = payload["decoded"]
    return json.dumps(payload, default=repr, ensure_ascii=False, separators=(",", ":"))


def format_record(record: FrameRecord) -> str:
    """One line of text for a record: seconds since the proxy started, connection, direction,
    type, flags, length, payload."""
    head = f"{record['time']:9.3f}s #{record['conn']} {record['dir']:<4}"
    if "note" in record:
        return f"{head} {record['note']}"
    flags = record["flags"]
    shown_flags = "?" if flags is None else ("|".join(flags) or "-")
    line = f"{head} {record['type']:<8} flags={shown_flags} len={record['length']}"
    if "meta" in record:
        line += f" meta={_shown(record['meta'])}"
    if record.get("payload") is not None:
        line += f" {_shown(record['payload'])}"
    return line
