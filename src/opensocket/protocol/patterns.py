"""Sending messaging-pattern frames (types 0x21-0x3F): checks and encoding of a batch.

The frames themselves are defined by ``opensocket.messaging.envelope``; this layer only
frames ``(type, metadata, payload)`` triples, without copying the payloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from ..errors import CodecError, ConfigError, FrameTooLarge, OpenSocketError
from .frame import PATTERN_FIRST, PATTERN_LAST, frame_head

__all__ = ["MAX_META", "PatternFrame", "bad_frame", "pattern_parts"]

MAX_META: Final = 0xFFFF  # the header's meta length is a u16

Buffer = bytes | bytearray | memoryview
PatternFrame = tuple[int, bytes, Buffer]  # (frame type, metadata, payload)


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
    head = frame_head
    total = 0
    for frame_type, meta, payload in frames:
        if not PATTERN_FIRST <= frame_type <= PATTERN_LAST:
            raise not_pattern(frame_type)
        meta_len = len(meta)
        size = meta_len + len(payload)
        if size > limit:
            raise too_large(size, limit)
        if meta_len > MAX_META:
            raise FrameTooLarge(
                f"frame metadata of {meta_len} bytes exceeds {MAX_META} bytes "
                "(the header's meta length is 16 bits)"
            )
        append(head(frame_type, meta, payload, checksum))
        if meta_len:
            append(meta)
        append(payload)
        total += size
    return parts, total


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
