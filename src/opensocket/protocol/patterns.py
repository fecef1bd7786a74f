"""Sending messaging-pattern frames (types 0x21-0x3F): checks and encoding of a batch.

The frames themselves are defined by ``opensocket.messaging.envelope``; this layer only
frames ``(type, metadata, payload)`` triples, without copying the payloads.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from crc32c import crc32c

from ..errors import CodecError, ConfigError, FrameTooLarge, OpenSocketError
from .frame import CHECKSUM, DATA_HEADER, HEADER, MAGIC_VERSION, PATTERN_FIRST, PATTERN_LAST, TAIL

__all__ = [
    "MAX_META",
    "EncodedFrames",
    "PatternFrame",
    "bad_frame",
    "encode_frames",
    "pattern_parts",
]

MAX_META: Final = 0xFFFF  # the header's meta length is a u16

Buffer = bytes | bytearray | memoryview
PatternFrame = tuple[int, bytes, Buffer]  # (frame type, metadata, payload)

# (type, metadata, payload size) -> (header bytes 8-15, the CRC-32C of them and of the
# metadata, the whole unchecksummed header, the body size). Types, metadata and sizes repeat,
# so a frame then costs one dict lookup, one CRC call over its payload and one struct pack;
# an entry exists only for a frame that passed the checks (type range, metadata size).
_MAX_HEADS: Final = 4096
# Metadata cached at most this long: the cache is process-wide and metadata (a topic) may
# come from a peer, which must not make it hold up to 4096 x 64 KiB.
MAX_CACHED_META: Final = 256
# Envelope flags (byte 1 of the metadata) of a seq, ack or id field: such metadata never
# repeats, so caching its header would only churn the cache.
NUMBERED: Final = 0x70
Head = tuple[bytes, int, bytes, int]
_heads: dict[tuple[int, bytes, int], Head] = {}


def _new_head(frame_type: int, meta: bytes, size: int) -> Head:
    if not PATTERN_FIRST <= frame_type <= PATTERN_LAST:
        raise not_pattern(frame_type)
    meta_len = len(meta)
    if meta_len > MAX_META:
        raise FrameTooLarge(
            f"frame metadata of {meta_len} bytes exceeds {MAX_META} bytes "
            "(the header's meta length is 16 bits)"
        )
    body = meta_len + size
    tail = TAIL.pack(frame_type, CHECKSUM, meta_len, body)
    plain = HEADER.pack(MAGIC_VERSION, 0, frame_type, 0, meta_len, body)
    entry = (tail, crc32c(meta, crc32c(tail)), plain, body)
    if meta_len <= MAX_CACHED_META and (meta_len < 2 or not meta[1] & NUMBERED):
        if len(_heads) >= _MAX_HEADS:
            _heads.clear()
        _heads[(frame_type, bytes(memoryview(meta)), size)] = entry  # hashable key
    return entry


def not_pattern(frame_type: int) -> ConfigError:
    """The error for a frame type outside the messaging-pattern range."""
    return ConfigError(
        f"frame type 0x{frame_type:02x} is not a messaging-pattern type "
        f"(0x{PATTERN_FIRST:02x}-0x{PATTERN_LAST:02x}): use send() for DATA"
    )


def too_large(size: int, limit: int) -> FrameTooLarge:
    """The error for a frame body over the peer's limit (worded like ``send``'s)."""
    return FrameTooLarge(
        f"a message of {size} bytes exceeds the peer's maximum frame size of {limit} bytes"
    )


def pattern_parts(
    frames: Sequence[PatternFrame], *, checksum: bool, limit: int
) -> tuple[list[Buffer], int]:
    """Headers, metadata and payloads of ``frames`` in wire order, and their body bytes.

    Raises before anything is returned, so a caller queues all frames or none.
    """
    parts: list[Buffer] = []
    append = parts.append
    total = 0
    pack = DATA_HEADER.pack
    known = _heads.get
    last: tuple[object, object, int] = (None, None, -1)
    tail, crc, plain, body = b"", 0, b"", 0
    for frame_type, meta, payload in frames:
        size = len(payload)
        key = (frame_type, meta, size)
        if key != last:  # runs of alike frames (a batch of messages) share one header
            entry = known(key) if type(meta) is bytes else None
            if entry is None:
                entry = _new_head(frame_type, meta, size)
            tail, crc, plain, body = entry
            last = key
        if body > limit:
            raise too_large(body, limit)
        append(pack(MAGIC_VERSION, crc32c(payload, crc), tail) if checksum else plain)
        append(meta)
        append(payload)
        total += body
    return parts, total


@dataclass(frozen=True, slots=True)
class EncodedFrames:
    """Pattern frames framed once, to queue on several connections (``send_encoded``): a
    message published to many subscribers costs one framing and one CRC per frame."""

    data: bytes
    count: int  # frames
    largest: int  # the largest frame body, checked against each connection's peer limit
    checksum: bool  # framed with checksums: only for connections that agreed on them


def encode_frames(frames: Sequence[PatternFrame], *, checksum: bool) -> EncodedFrames:
    """Frame ``frames`` once (raises like ``send_frames`` for a bad frame)."""
    try:
        parts, _ = pattern_parts(frames, checksum=checksum, limit=0xFFFFFFFF)
        data = b"".join(parts)
    except (TypeError, struct.error):
        raise bad_frame(frames) from None
    largest = max((len(meta) + len(payload) for _, meta, payload in frames), default=0)
    return EncodedFrames(data, len(frames), largest, checksum)


def bad_frame(frames: Sequence[PatternFrame]) -> OpenSocketError:
    """Say which part of which frame is not what ``send_frames`` takes (after a TypeError)."""
    for index, (frame_type, meta, payload) in enumerate(frames):
        if not isinstance(frame_type, int):
            kind = type(frame_type).__name__
            return ConfigError(f"frame {index}: the frame type must be an int, not {kind}")
        if not isinstance(meta, bytes | bytearray | memoryview):
            kind = type(meta).__name__
            return CodecError(f"frame {index}: the metadata must be bytes-like, not {kind}")
        if not isinstance(payload, bytes | bytearray | memoryview):
            return CodecError(
                f"frame {index}: a payload must be bytes-like, not {type(payload).__name__}: "
                "encode it first"
            )
    return CodecError("a pattern frame could not be encoded")
