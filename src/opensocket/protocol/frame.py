"""The frame format: a 16-byte header and a body (see docs/protocol.md for every byte).

Header, big-endian::

    0  2  magic      0x4F 0x53 ("OS")
    2  1  version    1
    3  1  reserved   0
    4  4  checksum   CRC-32C of bytes 8 .. end of frame, valid when flag CHECKSUM is set
    8  1  type       FrameType
    9  1  flags      Flags
    10 2  meta       length of the metadata at the start of the body (0 for plain messages)
    12 4  length     body length (metadata + payload)

The checksum starts at byte 8 so that one CRC call covers type, flags, lengths and body in a
single contiguous slice on the receive side.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final

from crc32c import crc32c

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "PATTERN_FIRST",
    "PATTERN_LAST",
    "VERSION",
    "Flags",
    "Frame",
    "FrameType",
    "encode_frame",
]

MAGIC: Final = 0x4F53
VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)
HEADER_SIZE: Final = 16
MAGIC_VERSION: Final = (MAGIC << 16) | (VERSION << 8)
# Frame types of the messaging patterns (docs/protocol.md section 13): delivered like DATA
# once a connection opted in, rejected as unexpected otherwise.
PATTERN_FIRST: Final = 0x21
PATTERN_LAST: Final = 0x3F

HEADER: Final = struct.Struct(">IIBBHI")
HEADER5: Final = struct.Struct(">IIHHI")  # type and flags read together as one 16-bit kind
DATA_HEADER: Final = struct.Struct(">II8s")
HEAD: Final = struct.Struct(">II")
TAIL: Final = struct.Struct(">BBHI")


class FrameType(IntEnum):
    """What a frame carries. 0x21-0x3F are kept for messaging patterns, 0x40-0x7F for
    transports, 0x80-0xFF for applications."""

    HELLO = 0x01
    WELCOME = 0x02
    AUTH = 0x03
    AUTH_OK = 0x04
    PING = 0x10
    PONG = 0x11
    CLOSE = 0x12
    ERROR = 0x13
    DATA = 0x20


class Flags(IntFlag):
    """Frame flags. MORE and COMPRESSED are reserved: version 1 rejects them."""

    NONE = 0
    CHECKSUM = 0x01
    MORE = 0x02
    COMPRESSED = 0x04


KNOWN_FLAGS: Final = int(Flags.CHECKSUM)
CHECKSUM: Final = int(Flags.CHECKSUM)
DATA: Final = int(FrameType.DATA)
PING: Final = int(FrameType.PING)


DATA_CHECKED: Final = (DATA << 8) | CHECKSUM
DATA_PLAIN: Final = DATA << 8
_MAX_CACHED_SIZES: Final = 4096
_data_tails: dict[int, tuple[bytes, int, bytes]] = {}
cached_data_tail = _data_tails.get


def data_tail(size: int) -> tuple[bytes, int, bytes]:
    """Header pieces of a plain DATA frame of ``size`` bytes: the checksummed header's bytes
    8-15, their CRC-32C, and the whole unchecksummed header.

    Message sizes repeat, so these are cached (boundedly): the send hot path then packs one
    struct and makes one CRC call per message.
    """
    entry = _data_tails.get(size)
    if entry is None:
        tail = TAIL.pack(DATA, CHECKSUM, 0, size)
        entry = (tail, crc32c(tail), HEADER.pack(MAGIC_VERSION, 0, DATA, 0, 0, size))
        if len(_data_tails) >= _MAX_CACHED_SIZES:
            _data_tails.clear()
        _data_tails[size] = entry
    return entry


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded non-DATA frame, a DATA frame carrying metadata, or a messaging-pattern frame."""

    type: int
    flags: int
    meta: bytes
    payload: bytes

    def __len__(self) -> int:
        """Bytes the frame's body holds (so queues can count sizes with ``len``)."""
        return len(self.meta) + len(self.payload)


def encode_frame(
    out: bytearray,
    frame_type: int,
    payload: bytes | bytearray | memoryview,
    *,
    checksum: bool,
    meta: bytes = b"",
) -> None:
    """Append one frame to ``out``."""
    meta_len = len(meta)
    body_len = meta_len + len(payload)
    if checksum:
        tail = TAIL.pack(frame_type, CHECKSUM, meta_len, body_len)
        crc = crc32c(tail)
        if meta_len:
            crc = crc32c(meta, crc)
        out += HEAD.pack(MAGIC_VERSION, crc32c(payload, crc))
        out += tail
    else:
        out += HEADER.pack(MAGIC_VERSION, 0, frame_type, 0, meta_len, body_len)
    if meta_len:
        out += meta
    out += payload


def frame_head(
    frame_type: int, meta: bytes, payload: bytes | bytearray | memoryview, checksum: bool
) -> bytes:
    """The 16-byte header of one frame carrying ``meta`` and ``payload`` (the CRC covers
    header bytes 8-15, the metadata and the payload; nothing is copied)."""
    meta_len = len(meta)
    body_len = meta_len + len(payload)
    if checksum:
        tail = TAIL.pack(frame_type, CHECKSUM, meta_len, body_len)
        crc = crc32c(payload, crc32c(meta, crc32c(tail)))
        return DATA_HEADER.pack(MAGIC_VERSION, crc, tail)
    return HEADER.pack(MAGIC_VERSION, 0, frame_type, 0, meta_len, body_len)


def frame_bytes(
    frame_type: int, payload: bytes = b"", *, checksum: bool = True, meta: bytes = b""
) -> bytes:
    """Return one encoded frame (for tests, vectors and tools)."""
    out = bytearray()
    encode_frame(out, frame_type, payload, checksum=checksum, meta=meta)
    return bytes(out)
