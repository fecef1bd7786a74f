"""The reliable-UDP wire format (every byte is described in docs/rudp.md).

Every datagram: a 12-byte header, a payload, and a trailer (CRC-32C, or the AEAD tag)::

    0  2  magic    0x52 0x55 ("RU")
    2  1  version  1
    3  1  type     PacketType
    4  4  dcid     the receiver's connection id (0 in a client's INITIAL)
    8  4  pn       packet number (DATA: never reused; handshake packets: attempt number)

A DATA payload is a sequence of frames, each starting with a FrameType byte; a zero byte
(PADDING) ends the frame list.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final, NamedTuple

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "VERSION",
    "Fragment",
    "FrameType",
    "Header",
    "Malformed",
    "PacketType",
    "decode_ack",
    "encode_ack",
    "parse_header",
]

MAGIC: Final = 0x5255
VERSION: Final = 1
HEADER: Final = struct.Struct(">HBBII")
HEADER_SIZE: Final = HEADER.size
CRC: Final = struct.Struct(">I")
CRC_SIZE: Final = 4
TAG_SIZE: Final = 16
NONCE_SIZE: Final = 16
MAC_SIZE: Final = 16
MIN_INITIAL: Final = 512  # a client INITIAL is padded to this at least: anti-amplification

PN_LIMIT: Final = 0xFFFFFFFF


class PacketType(IntEnum):
    """What a datagram is."""

    INITIAL = 1
    RETRY = 2
    ACCEPT = 3
    DATA = 4
    REJECT = 5


class FrameType(IntEnum):
    """Frames inside a DATA packet."""

    PADDING = 0
    PING = 1
    ACK = 2
    MSG = 3
    CLOSE = 4
    FLOW = 5


FRAG: Final = 0x01  # MSG flag: fragment index and count follow

# Frame bodies (after the type byte).
ACK_HEAD: Final = struct.Struct(">BIHBI")  # type, largest, ack delay (8 µs units), ranges, first
ACK_RANGE: Final = struct.Struct(">II")  # gap, length
MSG_HEAD: Final = struct.Struct(">BBBIH")  # type, channel, flags, sequence, data length
MSG_FRAG: Final = struct.Struct(">BBBIHHH")  # ... + fragment index, fragment count
CLOSE_HEAD: Final = struct.Struct(">BHH")  # type, code, reason length
FLOW_FRAME: Final = struct.Struct(">BQ")  # type, max_data
ACK_DELAY_UNIT: Final = 8e-6
MAX_ACK_RANGES: Final = 32
MAX_REASON: Final = 256

# Handshake payloads.
PARAMS: Final = struct.Struct(">BHIB")  # flags, max_datagram, receive window, channel count
PARAM_SECURE: Final = 0x01
INITIAL_HEAD: Final = struct.Struct(">I16s")  # client's connection id, client nonce
ACCEPT_HEAD: Final = struct.Struct(">I16s")  # server's connection id, server nonce
REJECT_HEAD: Final = struct.Struct(">HB")  # code, reason length


class Malformed(Exception):
    """A datagram or frame does not parse (internal: it is dropped and counted)."""


class Header(NamedTuple):
    """A parsed packet header."""

    type: int
    dcid: int
    pn: int


class Fragment(NamedTuple):
    """One MSG frame's worth of a message (what the sender retransmits when lost)."""

    channel: int
    seq: int
    part: int
    parts: int
    data: bytes | memoryview


def parse_header(data: bytes | memoryview) -> Header:
    """Check magic and version; raise Malformed when they are wrong or the packet is short."""
    if len(data) < HEADER_SIZE + CRC_SIZE:
        raise Malformed("short")
    magic, version, ptype, dcid, pn = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise Malformed("magic")
    if version != VERSION:
        raise Malformed("version")
    return Header(ptype, dcid, pn)


def encode_params(flags: int, max_datagram: int, window: int, channels: bytes) -> bytes:
    """Transport parameters carried by INITIAL and ACCEPT."""
    return PARAMS.pack(flags, max_datagram, min(window, 0xFFFFFFFF), len(channels)) + channels


def decode_params(data: memoryview, pos: int) -> tuple[int, int, int, bytes, int]:
    """Parse parameters at ``pos``: flags, max_datagram, window, channel kinds, end."""
    if len(data) < pos + PARAMS.size:
        raise Malformed("params")
    flags, max_dgram, window, count = PARAMS.unpack_from(data, pos)
    pos += PARAMS.size
    end = pos + count
    if len(data) < end or count == 0:
        raise Malformed("params")
    return flags, max_dgram, window, bytes(data[pos:end]), end


def encode_ack(ranges: list[list[int]], delay: float) -> bytes:
    """An ACK frame for the received ``ranges`` (ascending [lo, hi] pairs), newest first."""
    lo, hi = ranges[-1]
    extra = ranges[-1 - MAX_ACK_RANGES : -1] if len(ranges) > 1 else []
    units = min(int(delay / ACK_DELAY_UNIT), 0xFFFF)
    parts = [ACK_HEAD.pack(FrameType.ACK, hi, units, len(extra), hi - lo)]
    prev_lo = lo
    for rlo, rhi in reversed(extra):
        parts.append(ACK_RANGE.pack(prev_lo - rhi - 2, rhi - rlo))
        prev_lo = rlo
    return b"".join(parts)


def decode_ack(data: memoryview, pos: int) -> tuple[list[tuple[int, int]], float, int]:
    """Parse an ACK frame at ``pos``: ranges (newest first, as (lo, hi)), delay, end."""
    if len(data) < pos + ACK_HEAD.size:
        raise Malformed("ack")
    _, largest, units, count, first = ACK_HEAD.unpack_from(data, pos)
    pos += ACK_HEAD.size
    lo = largest - first
    if lo < 0 or len(data) < pos + count * ACK_RANGE.size:
        raise Malformed("ack")
    ranges = [(lo, largest)]
    for _ in range(count):
        gap, length = ACK_RANGE.unpack_from(data, pos)
        pos += ACK_RANGE.size
        hi = lo - gap - 2
        lo = hi - length
        if lo < 0:
            raise Malformed("ack range")
        ranges.append((lo, hi))
    return ranges, units * ACK_DELAY_UNIT, pos


def encode_close(code: int, reason: str) -> bytes:
    """A CLOSE frame (the reason cut to MAX_REASON bytes at a character boundary)."""
    text = reason.encode()[:MAX_REASON].decode(errors="ignore").encode()
    return CLOSE_HEAD.pack(FrameType.CLOSE, code, len(text)) + text


def msg_size(data_len: int, fragmented: bool) -> int:
    """Bytes a MSG frame with ``data_len`` bytes of data takes."""
    return (MSG_FRAG.size if fragmented else MSG_HEAD.size) + data_len
