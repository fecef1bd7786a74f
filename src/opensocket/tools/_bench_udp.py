"""UDP test datagrams and their accounting: sequence, loss, reordering and jitter (sans-IO).

Every datagram of a UDP bench starts with a 24-byte header (network byte order)::

    offset  size  field
         0     4  stream     index of the stream (0 .. streams-1)
         4     4  flags      0 (reserved)
         8     8  sequence   1, 2, 3, ... per stream
        16     8  sent_ns    the sender's monotonic clock in nanoseconds

The rest of the datagram is padding up to the write length. The receiver counts like iperf3:
a sequence number above the next expected one counts the gap as lost; one below it is out of
order and fills one lost slot. Jitter is RFC 3550's: the transit time ``arrival - sent_ns``
of consecutive datagrams differs by ``D``; ``J += (|D| - J) / 16``. The two clocks need not
agree, since a constant offset cancels out of ``D``. Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["HEADER", "HEADER_SIZE", "UdpReceiver", "UdpTotals", "pack_header", "unpack_header"]

HEADER: Final = struct.Struct("!IIQQ")
HEADER_SIZE: Final = HEADER.size
JITTER_GAIN: Final = 16


def pack_header(buf: bytearray | memoryview, stream: int, seq: int, sent_ns: int) -> None:
    """Write a datagram header at the start of ``buf``."""
    HEADER.pack_into(buf, 0, stream, 0, seq, sent_ns)


def unpack_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """``(stream, sequence, sent_ns)`` of a datagram; ValueError when it is too short."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"a bench datagram is at least {HEADER_SIZE} bytes (got {len(data)})")
    stream, _, seq, sent_ns = HEADER.unpack_from(data)
    return stream, seq, sent_ns


@dataclass(frozen=True, slots=True)
class UdpTotals:
    """What a receiver saw of one stream (lost counts the gaps up to ``expected``)."""

    received: int
    bytes: int
    expected: int
    lost: int
    out_of_order: int
    jitter_ms: float

    @property
    def lost_percent(self) -> float:
        """Lost datagrams as a percentage of those expected."""
        return 100.0 * self.lost / self.expected if self.expected else 0.0


class UdpReceiver:
    """Accounting for the datagrams of one stream, fed one arrival at a time."""

    __slots__ = ("bytes", "highest", "jitter_ns", "lost", "out_of_order", "received", "transit")

    def __init__(self) -> None:
        self.received = 0
        self.bytes = 0
        self.highest = 0  # the highest sequence number seen
        self.lost = 0
        self.out_of_order = 0
        self.jitter_ns = 0.0
        self.transit: int | None = None

    def datagram(self, seq: int, sent_ns: int, arrival_ns: int, size: int) -> None:
        """Account for one datagram (``seq`` from 1) that arrived at ``arrival_ns``."""
        self.received += 1
        self.bytes += size
        if seq > self.highest:
            self.lost += seq - self.highest - 1
            self.highest = seq
        else:
            self.out_of_order += 1
            if self.lost > 0:
                self.lost -= 1
        transit = arrival_ns - sent_ns
        previous = self.transit
        self.transit = transit
        if previous is not None:
            delta = transit - previous
            if delta < 0:
                delta = -delta
            self.jitter_ns += (delta - self.jitter_ns) / JITTER_GAIN

    def totals(self, sent: int | None = None) -> UdpTotals:
        """The totals; ``sent`` (the sender's count) adds datagrams lost after the last one
        that arrived, which the receiver alone cannot know about."""
        expected = max(self.highest, sent or 0)
        lost = self.lost + (expected - self.highest)
        return UdpTotals(
            received=self.received,
            bytes=self.bytes,
            expected=expected,
            lost=lost,
            out_of_order=self.out_of_order,
            jitter_ms=self.jitter_ns / 1e6,
        )
