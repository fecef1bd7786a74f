"""The wire format of messaging-pattern frames (frame types 0x21-0x3F).

A pattern message travels as one framed-protocol frame: the frame type says what it is
(``Kind``), the metadata section carries the envelope fields, the payload is the
application's bytes. Metadata, big-endian::

    0  1  version   1
    1  1  flags     ACK_REQUESTED 0x01, RETRYABLE 0x02, ERROR 0x04, REDELIVERED 0x08,
                    HAS_SEQ 0x10, HAS_ACK 0x20, HAS_ID 0x40, HAS_TOPIC 0x80
    then, each only when its HAS_ bit is set, in this order:
       8  seq    u64  session sequence number of this frame (1, 2, ...)
       8  ack    u64  cumulative ack: every peer frame up to this seq arrived
       8  id     u64  correlation id (request/reply) or delivery id (push/pull)
       2+n topic u16 length, then n bytes

The metadata length must be exactly what the flags announce. Which fields a kind requires
or allows is in ``RULES``. SESSION and SESSION_OK carry fixed bodies (``SessionHello``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final, NamedTuple

from ..errors import MalformedEnvelope

__all__ = [
    "META_VERSION",
    "RULES",
    "Envelope",
    "Kind",
    "MetaFlags",
    "SessionHello",
    "SessionStatus",
    "WireFrame",
    "decode",
    "decode_credit",
    "decode_hello",
    "encode",
    "encode_credit",
    "encode_hello",
]

META_VERSION: Final = 1
MAX_U64: Final = (1 << 64) - 1
WireFrame = tuple[int, bytes, bytes]  # (frame type, metadata, payload)

_HEAD: Final = struct.Struct(">BB")
_U64: Final = struct.Struct(">Q")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_HELLO: Final = struct.Struct(">16sQQQ")
_HELLO_OK: Final = struct.Struct(">B16sQQQ")


class Kind(IntEnum):
    """Frame types of the messaging patterns."""

    MESSAGE = 0x21  # a plain message (push/pull, pair)
    REQUEST = 0x22
    REPLY = 0x23
    PUBLISH = 0x24
    SUBSCRIBE = 0x25
    UNSUBSCRIBE = 0x26
    SUBSCRIBED = 0x27  # the publisher holds the subscription now
    ACK = 0x28  # an explicit cumulative session ack
    SESSION = 0x29  # open or resume a session (connecting side)
    SESSION_OK = 0x2A  # the answer (accepting side)
    CREDIT = 0x2B  # a puller grants the pusher more messages (u32 body)
    DONE = 0x2C  # a puller acknowledges a delivery id


class MetaFlags(IntFlag):
    """Bits of the metadata flags byte."""

    NONE = 0
    ACK_REQUESTED = 0x01
    RETRYABLE = 0x02
    ERROR = 0x04
    REDELIVERED = 0x08
    HAS_SEQ = 0x10
    HAS_ACK = 0x20
    HAS_ID = 0x40
    HAS_TOPIC = 0x80


SEMANTIC: Final = 0x0F  # the flags an Envelope carries; the HAS_ bits follow its fields
_SEQ, _ACK, _ID, _TOPIC = 0x10, 0x20, 0x40, 0x80
_SESSIONED = _SEQ | _ACK


@dataclass(frozen=True, slots=True)
class Rule:
    """What one kind must and may carry."""

    required: int
    allowed: int
    payload: bool


RULES: Final[dict[int, Rule]] = {
    Kind.MESSAGE: Rule(0, _SESSIONED | _ID | 0x01 | 0x08, True),
    Kind.REQUEST: Rule(_ID, _SESSIONED | _ID | 0x01 | 0x02, True),
    Kind.REPLY: Rule(_ID, _SESSIONED | _ID | 0x04, True),
    Kind.PUBLISH: Rule(_TOPIC, _SESSIONED | _TOPIC, True),
    Kind.SUBSCRIBE: Rule(_TOPIC, _SESSIONED | _TOPIC, False),
    Kind.UNSUBSCRIBE: Rule(_TOPIC, _SESSIONED | _TOPIC, False),
    Kind.SUBSCRIBED: Rule(_TOPIC, _SESSIONED | _TOPIC, False),
    Kind.ACK: Rule(_ACK, _ACK, False),
    Kind.SESSION: Rule(0, 0, True),
    Kind.SESSION_OK: Rule(0, 0, True),
    Kind.CREDIT: Rule(0, _SESSIONED, True),
    Kind.DONE: Rule(_ID, _SESSIONED | _ID, False),
}


class Envelope(NamedTuple):
    """One pattern message: kind, fields and payload (``flags`` holds the SEMANTIC bits).

    A named tuple rather than a frozen dataclass: one is built per message, and a tuple is
    built several times faster.
    """

    kind: Kind
    payload: bytes = b""
    id: int | None = None
    topic: bytes | None = None
    flags: int = 0
    seq: int | None = None
    ack: int | None = None

    @property
    def size(self) -> int:
        """Bytes the message counts for in queues and windows."""
        topic = self.topic
        return len(self.payload) + len(topic) if topic else len(self.payload)


_FIXED: Final = _SEQ | _ACK | _ID
# Per combination of HAS_SEQ/HAS_ACK/HAS_ID: one struct for version, flags and the u64s, and
# where seq, ack and id sit in its unpacked tuple (0: absent; 0 and 1 are version and flags).
_LAYOUTS: Final[dict[int, tuple[struct.Struct, int, int, int]]] = {}
for _bits in range(0, _FIXED + 1, _SEQ):
    _present = [bit for bit in (_SEQ, _ACK, _ID) if _bits & bit]
    _where = [2 + _present.index(bit) if bit in _present else 0 for bit in (_SEQ, _ACK, _ID)]
    _LAYOUTS[_bits] = (struct.Struct(">BB" + "Q" * len(_present)), *_where)  # type: ignore[assignment]
_TABLE: Final = {int(kind): (kind, RULES[kind]) for kind in Kind}
# Metadata of an envelope with no seq, ack, id or topic, by its SEMANTIC flags: the common
# frames (push/pull without acks, pair, CREDIT) then need no packing at all.
BARE_METAS: Final = tuple(_HEAD.pack(META_VERSION, flags) for flags in range(SEMANTIC + 1))
_BARE: Final = BARE_METAS
BARE_META: Final = _BARE[0]  # a MESSAGE without fields: b"\x01\x00"
_TOPIC_METAS: dict[bytes, bytes] = {}  # topic -> metadata of a bare PUBLISH (bounded)
_MAX_TOPIC_METAS: Final = 1024
# Topics cached at most this long: a topic may come from a peer (a broker forwards them),
# and 1024 entries of 64 KiB would be a lot of memory for a cache.
MAX_CACHED_TOPIC: Final = 256


def encode(env: Envelope, seq: int | None = None, ack: int | None = None) -> WireFrame:
    """Return ``(frame type, metadata, payload)``; ``seq``/``ack`` override the envelope's."""
    kind, payload, ident, topic, flags, env_seq, env_ack = env
    if seq is None:
        seq = env_seq
    if ack is None:
        ack = env_ack
    if seq is None and ack is None and ident is None:
        if topic is None:  # the most common frames: nothing to pack
            return kind, _BARE[flags & SEMANTIC], payload
        return _encode_bare(env)
    bits = 0
    values = []
    if seq is not None:
        bits = _SEQ
        values.append(seq)
    if ack is not None:
        bits |= _ACK
        values.append(ack)
    if ident is not None:
        bits |= _ID
        values.append(ident)
    flags = (flags & SEMANTIC) | bits
    pack = _LAYOUTS[bits][0].pack
    if topic is None:
        return kind, pack(META_VERSION, flags, *values), payload
    meta = pack(META_VERSION, flags | _TOPIC, *values) + _U16.pack(len(topic)) + topic
    return kind, meta, payload


def _encode_bare(env: Envelope) -> WireFrame:
    topic = env.topic
    flags = env.flags & SEMANTIC
    if topic is None:
        return env.kind, _BARE[flags], env.payload
    meta = _TOPIC_METAS.get(topic) if not flags else None
    if meta is None:
        meta = _HEAD.pack(META_VERSION, flags | _TOPIC) + _U16.pack(len(topic)) + topic
        if not flags and len(topic) <= MAX_CACHED_TOPIC:
            if len(_TOPIC_METAS) >= _MAX_TOPIC_METAS:
                _TOPIC_METAS.clear()
            _TOPIC_METAS[topic] = meta
    return env.kind, meta, env.payload


def decode(frame_type: int, meta: bytes, payload: bytes) -> Envelope:
    """Parse one pattern frame; raises MalformedEnvelope for anything invalid."""
    entry = _TABLE.get(frame_type)
    if entry is None:
        raise MalformedEnvelope(f"frame type 0x{frame_type:02x} is not a messaging frame")
    kind, rule = entry
    size = len(meta)
    if size < 2:
        raise MalformedEnvelope(f"{kind.name} metadata is {size} bytes, at least 2 needed")
    version, flags = meta[0], meta[1]
    if version != META_VERSION:
        raise MalformedEnvelope(f"{kind.name} metadata version {version}, expected 1")
    if flags & ~rule.allowed or rule.required & ~flags:
        _flag_error(kind, rule, flags)
    if payload and not rule.payload:
        raise MalformedEnvelope(f"{kind.name} must have an empty payload, got {len(payload)}")
    layout, at_seq, at_ack, at_id = _LAYOUTS[flags & _FIXED]
    end = layout.size
    if size < end:
        raise MalformedEnvelope(f"{kind.name} metadata ends inside a u64 field")
    values = layout.unpack_from(meta)
    topic = None
    if flags & _TOPIC:
        topic, end = _topic(kind, meta, end)
    if end != size:
        raise MalformedEnvelope(f"{kind.name} metadata is {size} bytes, its flags announce {end}")
    return Envelope(
        kind,
        payload if type(payload) is bytes else bytes(payload),
        values[at_id] if at_id else None,
        topic,
        flags & SEMANTIC,
        values[at_seq] if at_seq else None,
        values[at_ack] if at_ack else None,
    )


def _flag_error(kind: Kind, rule: Rule, flags: int) -> None:
    extra = flags & ~rule.allowed
    if extra:
        raise MalformedEnvelope(f"{kind.name} does not allow flags 0x{extra:02x}")
    missing = rule.required & ~flags
    raise MalformedEnvelope(f"{kind.name} requires flags 0x{missing:02x}")


def _topic(kind: Kind, meta: bytes, pos: int) -> tuple[bytes, int]:
    if len(meta) < pos + 2:
        raise MalformedEnvelope(f"{kind.name} metadata ends inside the topic length")
    start = pos + 2
    stop = start + ((meta[pos] << 8) | meta[pos + 1])
    return bytes(meta[start:stop]), stop


class SessionStatus(IntEnum):
    """The accepting side's verdict in SESSION_OK."""

    NEW = 0  # a fresh session (none asked for)
    RESUMED = 1  # the session goes on: replay what the other side lacks
    LOST = 2  # the session could not be resumed: a fresh one starts (counts say what was lost)
    UNKNOWN = 3  # the accepting side does not know the id (expired, restarted): a fresh one


@dataclass(frozen=True, slots=True)
class SessionHello:
    """Body of SESSION and SESSION_OK (``status`` only in SESSION_OK).

    ``last_received`` is the highest seq received in order, ``last_sent`` the highest seq
    sent, ``first_held`` the oldest seq still in the replay buffer (``last_sent + 1`` when
    empty). SESSION_OK with status LOST reports the old session's numbers and the new id.
    """

    session_id: bytes
    last_received: int = 0
    last_sent: int = 0
    first_held: int = 1
    status: SessionStatus | None = None


def encode_hello(hello: SessionHello) -> WireFrame:
    """SESSION (no status) or SESSION_OK (with status) as a wire frame."""
    fields = (hello.session_id, hello.last_received, hello.last_sent, hello.first_held)
    meta = _HEAD.pack(META_VERSION, 0)
    if hello.status is None:
        return int(Kind.SESSION), meta, _HELLO.pack(*fields)
    return int(Kind.SESSION_OK), meta, _HELLO_OK.pack(hello.status, *fields)


def decode_hello(env: Envelope) -> SessionHello:
    """Parse the body of a decoded SESSION or SESSION_OK envelope."""
    body = env.payload
    if env.kind is Kind.SESSION:
        if len(body) != _HELLO.size:
            raise MalformedEnvelope(f"SESSION body is {len(body)} bytes, expected 40")
        hello = SessionHello(*_HELLO.unpack(body))
    elif env.kind is Kind.SESSION_OK:
        if len(body) != _HELLO_OK.size:
            raise MalformedEnvelope(f"SESSION_OK body is {len(body)} bytes, expected 41")
        status, sid, received, sent, held = _HELLO_OK.unpack(body)
        if status not in SessionStatus._value2member_map_:
            raise MalformedEnvelope(f"SESSION_OK status {status} is unknown")
        hello = SessionHello(sid, received, sent, held, SessionStatus(status))
    else:
        raise MalformedEnvelope(f"{env.kind.name} is not a session frame")
    _check_numbers(hello)
    return hello


def _check_numbers(hello: SessionHello) -> None:
    if hello.first_held < 1 or hello.first_held > hello.last_sent + 1:
        raise MalformedEnvelope(
            f"session first_held {hello.first_held} is outside 1..last_sent+1 "
            f"({hello.last_sent + 1})"
        )


def encode_credit(credit: int) -> bytes:
    """CREDIT body: a u32 count of further messages the puller accepts."""
    return _U32.pack(credit)


def decode_credit(env: Envelope) -> int:
    """Parse a CREDIT body (1 .. 2**32-1)."""
    if len(env.payload) != 4:
        raise MalformedEnvelope(f"CREDIT body is {len(env.payload)} bytes, expected 4")
    (credit,) = _U32.unpack(env.payload)
    if credit == 0:
        raise MalformedEnvelope("CREDIT of 0 grants nothing")
    return int(credit)
