"""Test vectors of the framed protocol: how they are built, replayed and shown.

``tests/vectors/frames.json`` is the source of truth; the tests encode the inputs it lists
and compare with its bytes, and decode its bytes and compare with its fields. To regenerate
it after a deliberate wire change, run ``python -m tests.protocol.vectors`` from the project
root and review the diff (docs/protocol.md shows the same dumps; a test keeps them equal).
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from opensocket.errors import CloseCode
from opensocket.options import ProtocolOptions
from opensocket.protocol import FramedConnection, Role
from opensocket.protocol.connection import encode_close
from opensocket.protocol.events import (
    ConnectionTerminated,
    Event,
    HandshakeComplete,
    PongReceived,
)
from opensocket.protocol.frame import Frame, FrameType, frame_bytes
from opensocket.protocol.handshake import build_hello, dump

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "frames.json"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

SECRET = "correct horse battery staple"
CLIENT_NONCE = bytes(16)
SERVER_NONCE = bytes([0x11]) * 16

# The options both transcripts use (the auth transcript adds SECRET on both sides).
CLIENT_OPTIONS: dict[str, Any] = {
    "codecs": ["json", "bytes"],
    "heartbeat": 10.0,
    "max_frame_size": 1048576,
    "name": "client",
    "checksum": "auto",
}
SERVER_OPTIONS: dict[str, Any] = {
    "codecs": ["bytes", "json"],
    "heartbeat": 15.0,
    "max_frame_size": 16777216,
    "name": "server",
    "checksum": "auto",
}


def options(spec: dict[str, Any], secret: str | None) -> ProtocolOptions:
    """ProtocolOptions from a JSON description."""
    return ProtocolOptions(
        codecs=tuple(spec["codecs"]),
        heartbeat=spec["heartbeat"],
        max_frame_size=spec["max_frame_size"],
        name=spec["name"],
        checksum=spec["checksum"],
        secret=secret.encode() if secret is not None else None,
        pattern=spec.get("pattern"),
    )


# ---- single frames ----------------------------------------------------------------------


def _frame(
    name: str, ftype: FrameType, payload: bytes, *, checksum: bool = True, meta: bytes = b""
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "type": ftype.name,
        "checksum": checksum,
        "meta": meta.hex(),
        "payload": payload.hex(),
    }
    if ftype in (FrameType.HELLO, FrameType.WELCOME, FrameType.AUTH):
        entry["json"] = json.loads(payload)
    entry["hex"] = frame_bytes(ftype, payload, checksum=checksum, meta=meta).hex()
    return entry


def single_frames() -> list[dict[str, Any]]:
    """One example of every frame type (handshake bodies as a plain connection sends them)."""
    hello = build_hello(options(CLIENT_OPTIONS, None), tls=False, nonce=CLIENT_NONCE)
    welcome = dump(
        {
            "checksum": True,
            "codec": "json",
            "heartbeat": 10.0,
            "max_frame": 16777216,
            "name": "server",
            "version": 1,
        }
    )
    stamp = struct.pack(">d", 1.5)
    pattern_options = options({**CLIENT_OPTIONS, "pattern": "request"}, None)
    hello_pattern = build_hello(pattern_options, tls=False, nonce=CLIENT_NONCE)
    return [
        _frame("hello", FrameType.HELLO, hello),
        _frame("welcome", FrameType.WELCOME, welcome),
        _frame("auth", FrameType.AUTH, dump({"proof": "ab" * 32})),
        _frame("auth_ok", FrameType.AUTH_OK, b""),
        _frame("ping", FrameType.PING, stamp),
        _frame("pong", FrameType.PONG, stamp),
        _frame("close", FrameType.CLOSE, encode_close(CloseCode.NORMAL, "bye")),
        _frame("error", FrameType.ERROR, encode_close(CloseCode.BAD_MAGIC, "not opensocket")),
        _frame("data_checksum", FrameType.DATA, b"hello"),
        _frame("data_no_checksum", FrameType.DATA, b"hello", checksum=False),
        _frame("data_empty", FrameType.DATA, b""),
        _frame("data_meta", FrameType.DATA, b"payload", meta=b"\x01\x02\x03"),
        _frame("data_meta_no_checksum", FrameType.DATA, b"payload", checksum=False, meta=b"\x09"),
        _frame("hello_pattern", FrameType.HELLO, hello_pattern),
    ]


# ---- transcripts ------------------------------------------------------------------------

# Each step: who acts, what it does, and when; the bytes it then has to send go to the peer.
AUTH_SCRIPT: list[dict[str, Any]] = [
    {"from": "client", "action": "start", "now": 0.0},
    {"from": "server", "action": "reply", "now": 0.0},
    {"from": "client", "action": "reply", "now": 0.0},
    {"from": "server", "action": "reply", "now": 0.0},
    {"from": "client", "action": "send", "payload": b'{"op":"hi"}'.hex(), "now": 1.0},
    {"from": "server", "action": "send", "payload": b'{"op":"hello"}'.hex(), "now": 1.0},
    {"from": "client", "action": "ping", "now": 100.0},
    {"from": "server", "action": "reply", "now": 100.25},
    {"from": "client", "action": "close", "code": 1000, "reason": "done", "now": 101.0},
    {"from": "server", "action": "reply", "now": 101.0},
]
PLAIN_SCRIPT: list[dict[str, Any]] = [
    {"from": "client", "action": "start", "now": 0.0},
    {"from": "server", "action": "reply", "now": 0.0},
    {"from": "client", "action": "send", "payload": b"[1,2,3]".hex(), "now": 1.0},
    {"from": "server", "action": "close", "code": 1001, "reason": "restart", "now": 2.0},
    {"from": "client", "action": "reply", "now": 2.0},
]


def event_json(event: Event) -> dict[str, Any]:
    """A JSON form of an event (the error as its class name)."""
    if isinstance(event, HandshakeComplete):
        return {
            "event": "HandshakeComplete",
            "peer_name": event.peer_name,
            "codec": event.codec,
            "heartbeat": event.heartbeat,
            "checksum": event.checksum,
            "authenticated": event.authenticated,
        }
    if isinstance(event, PongReceived):
        return {"event": "PongReceived", "rtt": event.rtt}
    assert isinstance(event, ConnectionTerminated)
    return {
        "event": "ConnectionTerminated",
        "code": event.code,
        "reason": event.reason,
        "by_peer": event.by_peer,
        "error": type(event.error).__name__ if event.error is not None else None,
    }


def message_json(message: bytes | Frame) -> str:
    """A received message as hex."""
    assert isinstance(message, bytes)
    return message.hex()


class Replay:
    """Runs a transcript script; sides not in ``real`` replay their bytes from ``recorded``."""

    def __init__(
        self,
        spec: dict[str, Any],
        real: Iterable[str] = ("client", "server"),
        recorded: list[dict[str, Any]] | None = None,
    ) -> None:
        self.spec = spec
        self.real = set(real)
        self.recorded = recorded
        self.conns: dict[str, FramedConnection] = {}
        self.events: dict[str, list[Event]] = {"client": [], "server": []}
        self.messages: dict[str, list[bytes | Frame]] = {"client": [], "server": []}

    def _make(self, side: str, now: float) -> None:
        role = Role.CLIENT if side == "client" else Role.SERVER
        nonce = bytes.fromhex(self.spec[f"{side}_nonce"])
        opts = options(self.spec[f"{side}_options"], self.spec["secret"])
        self.conns[side] = FramedConnection(role, opts, now=now, nonce=nonce)

    def _act(self, step: dict[str, Any]) -> None:
        conn, action, now = self.conns[step["from"]], step["action"], step["now"]
        if action == "send":
            conn.send(bytes.fromhex(step["payload"]))
        elif action == "ping":
            conn.ping(now)
        elif action == "close":
            conn.close(now, step["code"], step["reason"])
        else:
            assert action in ("start", "reply")

    def _collect(self, side: str) -> None:
        if side in self.conns:
            self.events[side] += self.conns[side].events()
            self.messages[side] += self.conns[side].take_messages()

    def run(self, script: list[dict[str, Any]]) -> list[bytes]:
        """Play the script; return the bytes each step sent."""
        sent: list[bytes] = []
        for index, step in enumerate(script):
            side = step["from"]
            peer = "server" if side == "client" else "client"
            if not self.conns:
                for name in self.real:
                    self._make(name, step["now"])
            if side in self.real:
                self._act(step)
                data = bytes(self.conns[side].data_to_send())
            else:
                assert self.recorded is not None
                data = bytes.fromhex(self.recorded[index]["hex"])
            sent.append(data)
            if peer in self.real:
                self.conns[peer].receive_data(data, step["now"])
            self._collect("client")
            self._collect("server")
        return sent


def transcript(name: str, script: list[dict[str, Any]], secret: str | None) -> dict[str, Any]:
    """A transcript entry: the setup, every step with its bytes, and what each side saw."""
    spec: dict[str, Any] = {
        "name": name,
        "secret": secret,
        "client_nonce": CLIENT_NONCE.hex(),
        "server_nonce": SERVER_NONCE.hex(),
        "client_options": CLIENT_OPTIONS,
        "server_options": SERVER_OPTIONS,
    }
    replay = Replay(spec)
    sent = replay.run(script)
    spec["steps"] = [
        {**step, "frames": [f.type for f in describe(data)], "hex": data.hex()}
        for step, data in zip(script, sent, strict=True)
    ]
    for side in ("client", "server"):
        spec[f"{side}_events"] = [event_json(e) for e in replay.events[side]]
        spec[f"{side}_messages"] = [message_json(m) for m in replay.messages[side]]
    return spec


class Decoded:
    """One frame split out of a byte string, for display and checks."""

    def __init__(self, ftype: str, flags: int, meta: bytes, payload: bytes, raw: bytes) -> None:
        self.type, self.flags, self.meta, self.payload, self.raw = ftype, flags, meta, payload, raw


def describe(data: bytes) -> list[Decoded]:
    """Split well-formed frames (independent of the decoder, for cross-checking it)."""
    out, pos = [], 0
    while pos < len(data):
        ftype, flags, meta_len, length = struct.unpack_from(">BBHI", data, pos + 8)
        body = data[pos + 16 : pos + 16 + length]
        name = FrameType(ftype).name
        out.append(
            Decoded(name, flags, body[:meta_len], body[meta_len:], data[pos : pos + 16 + length])
        )
        pos += 16 + length
    return out


def build() -> dict[str, Any]:
    """The whole vectors file."""
    return {
        "about": (
            "opensocket framed protocol v1 test vectors; see docs/protocol.md. "
            "Hex strings are exact bytes. Regenerate with: python -m tests.protocol.vectors"
        ),
        "frames": single_frames(),
        "transcripts": [
            transcript("authenticated", AUTH_SCRIPT, SECRET),
            transcript("plain", PLAIN_SCRIPT, None),
        ],
    }


def hexdump(data: bytes, indent: str = "") -> str:
    """Offsets and 16 bytes per line, as docs/protocol.md shows frames."""
    lines = []
    for pos in range(0, len(data), 16):
        chunk = data[pos : pos + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{indent}{pos:04x}  {chunk.hex(' '):<47}  {text}")
    return "\n".join(lines)


def load() -> dict[str, Any]:
    """The vectors file as stored."""
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


if __name__ == "__main__":
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(json.dumps(build(), indent=2) + "\n")
    sys.stdout.write(f"wrote {VECTORS}\n")
