"""Loss recovery: RTT estimation, RTO, acknowledgement processing and loss detection.

RTT and RTO follow RFC 6298: the first sample sets SRTT = R and RTTVAR = R/2, later ones
RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R| and SRTT = 7/8 SRTT + 1/8 R; RTO = SRTT + max(G, 4 RTTVAR),
clamped to [min_rto, max_rto] and doubled on every expiry (exponential backoff).

Karn's rule: an RTT sample must never come from a retransmitted segment, because an ack of a
retransmitted TCP segment does not say which transmission it acknowledges. Here a packet
number is never reused: retransmitted data travels in a new packet with a new number, so an
ack names exactly one transmission and its send time is known. Samples are also taken only
when the largest acknowledged packet is newly acknowledged (and ack-eliciting), so the
backed-off RTO is kept until a sample from an original transmission arrives.

Loss detection (RFC 9002 style): a packet is lost when a packet sent ``PACKET_THRESHOLD`` later
has been acked (the fast retransmit of three duplicate acks), or when it is older than 9/8 of
the RTT while a later packet has been acked. The RTO timer catches the rest (tail loss): on
expiry every outstanding packet is declared lost and the backoff doubles.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from .congestion import CongestionController

__all__ = ["LossRecovery", "ReceivedRanges", "RttEstimator", "SentPacket"]

PACKET_THRESHOLD: Final = 3
TIME_THRESHOLD: Final = 9 / 8
GRANULARITY: Final = 0.001
MAX_BACKOFF: Final = 16
MAX_RANGES: Final = 64


class RttEstimator:
    """Smoothed RTT, RTT variation and the retransmission timeout (RFC 6298)."""

    __slots__ = ("latest", "max_rto", "min_rto", "min_rtt", "rttvar", "sampled", "srtt")

    def __init__(self, initial_rtt: float, min_rto: float, max_rto: float) -> None:
        self.srtt = initial_rtt
        self.rttvar = initial_rtt / 2
        self.min_rtt = float("inf")
        self.latest = initial_rtt
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.sampled = False

    def update(self, sample: float, ack_delay: float) -> None:
        """Take one RTT sample; the peer's reported ack delay is removed when plausible."""
        self.min_rtt = min(self.min_rtt, sample)
        if sample - ack_delay >= self.min_rtt:
            sample -= ack_delay
        self.latest = sample
        if not self.sampled:
            self.sampled = True
            self.srtt = sample
            self.rttvar = sample / 2
            return
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
        self.srtt = 0.875 * self.srtt + 0.125 * sample

    @property
    def rto(self) -> float:
        """The base retransmission timeout, before backoff."""
        rto = self.srtt + max(GRANULARITY, 4 * self.rttvar)
        return min(max(rto, self.min_rto), self.max_rto)


@dataclass(slots=True)
class SentPacket:
    """What recovery remembers about a packet until it is acked or lost."""

    pn: int
    time: float
    size: int
    ack_eliciting: bool
    items: list[object] = field(default_factory=list)  # what to resend if lost


class ReceivedRanges:
    """Packet numbers received: the replay window and the source of ACK frames.

    Ascending, disjoint [lo, hi] ranges; only the newest MAX_RANGES are kept and anything
    below ``floor`` counts as too old (its data, if lost for us, is resent in new packets).
    """

    __slots__ = ("floor", "ranges")

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []
        self.floor = 0

    def add(self, pn: int) -> bool:
        """Record ``pn``; False when it was seen before or is below the window (a replay)."""
        ranges = self.ranges
        if ranges:
            last = ranges[-1]
            if pn == last[1] + 1:
                last[1] = pn
                return True
            if pn > last[1]:
                ranges.append([pn, pn])
                self._trim()
                return True
        if pn < self.floor:
            return False
        return self._insert(pn)

    def _insert(self, pn: int) -> bool:
        ranges = self.ranges
        i = bisect_left(ranges, [pn + 1]) - 1  # last range starting at or below pn
        if i >= 0 and ranges[i][1] >= pn:
            return False
        joins_prev = i >= 0 and ranges[i][1] == pn - 1
        joins_next = i + 1 < len(ranges) and ranges[i + 1][0] == pn + 1
        if joins_prev and joins_next:
            ranges[i][1] = ranges[i + 1][1]
            del ranges[i + 1]
        elif joins_prev:
            ranges[i][1] = pn
        elif joins_next:
            ranges[i + 1][0] = pn
        else:
            ranges.insert(i + 1, [pn, pn])
            self._trim()
        return True

    def _trim(self) -> None:
        if len(self.ranges) > MAX_RANGES:
            dropped = self.ranges.pop(0)
            self.floor = dropped[1] + 1

    def contains(self, pn: int) -> bool:
        """True when ``pn`` was received already."""
        ranges = self.ranges
        if ranges and pn > ranges[-1][1]:
            return False
        i = bisect_left(ranges, [pn + 1]) - 1
        return i >= 0 and ranges[i][1] >= pn

    @property
    def largest(self) -> int:
        """The largest packet number received (-1 before any)."""
        return self.ranges[-1][1] if self.ranges else -1


class LossRecovery:
    """Tracks sent packets, processes acks, declares losses and runs the RTO timer."""

    def __init__(
        self,
        rtt: RttEstimator,
        cc: CongestionController,
        on_lost: Callable[[SentPacket], None],
        on_acked: Callable[[SentPacket], None],
    ) -> None:
        self.rtt = rtt
        self.cc = cc
        self.sent: dict[int, SentPacket] = {}
        self.largest_acked = -1
        self.backoff = 0
        self.loss_time: float | None = None
        self.rto_base: float | None = None
        self.bytes_in_flight = 0
        self.lost_packets = 0
        self.ack_eliciting_out = 0
        self._on_lost = on_lost
        self._on_acked = on_acked

    def on_sent(self, packet: SentPacket) -> None:
        """Remember an ack-eliciting packet (others are not tracked)."""
        self.sent[packet.pn] = packet
        self.bytes_in_flight += packet.size
        if self.ack_eliciting_out == 0:
            self.rto_base = packet.time
        self.ack_eliciting_out += 1
        self.cc.on_packet_sent(packet.size, packet.time)

    def on_ack(self, ranges: list[tuple[int, int]], ack_delay: float, now: float) -> bool:
        """Process an ACK frame's ranges (newest first); True when it acked something new."""
        sent = self.sent
        if not sent:
            return False
        first = next(iter(sent))
        largest = ranges[0][1]
        newest: SentPacket | None = None
        acked_bytes = 0
        for lo, hi in ranges:
            if hi < first:
                break
            for pn in range(max(lo, first), hi + 1):
                packet = sent.pop(pn, None)
                if packet is not None:
                    acked_bytes += packet.size
                    self._acked(packet)
                    if newest is None or pn > newest.pn:
                        newest = packet
        if newest is None:
            return False
        if largest > self.largest_acked:
            self.largest_acked = largest
            if newest.pn == largest:
                self.rtt.update(now - newest.time, ack_delay)
        self.cc.on_packets_acked(acked_bytes, newest.time, now)
        self.backoff = 0
        self.rto_base = now
        self.detect_lost(now)
        return True

    def _acked(self, packet: SentPacket) -> None:
        self.bytes_in_flight -= packet.size
        self.ack_eliciting_out -= 1
        self._on_acked(packet)

    def detect_lost(self, now: float) -> None:
        """Declare lost what the packet and time thresholds say; arm the loss timer."""
        self.loss_time = None
        largest = self.largest_acked
        delay = TIME_THRESHOLD * max(self.rtt.srtt, self.rtt.latest)
        lost: list[SentPacket] = []
        for pn, packet in self.sent.items():
            if pn > largest:
                break
            # the same expression decides and arms the timer: no float gap between them
            due = packet.time + delay
            if pn <= largest - PACKET_THRESHOLD or due <= now:
                lost.append(packet)
            else:
                self.loss_time = due
                break
        if lost:
            self._declare_lost(lost, now)

    def _declare_lost(self, lost: list[SentPacket], now: float) -> None:
        lost_bytes = 0
        for packet in lost:
            del self.sent[packet.pn]
            self.bytes_in_flight -= packet.size
            self.ack_eliciting_out -= 1
            lost_bytes += packet.size
            self.lost_packets += 1
            self._on_lost(packet)
        self.cc.on_packets_lost(lost_bytes, lost[-1].time, now)

    def timer(self) -> float | None:
        """When ``on_timeout`` is due: the loss timer, else the RTO while data is out."""
        if self.loss_time is not None:
            return self.loss_time
        if self.ack_eliciting_out and self.rto_base is not None:
            return self.rto_base + self.rto
        return None

    @property
    def rto(self) -> float:
        """The current RTO including exponential backoff."""
        return min(self.rtt.rto * (1 << self.backoff), self.rtt.max_rto * 4)

    def on_timeout(self, now: float) -> None:
        """The loss timer or the RTO fired."""
        if self.loss_time is not None and now >= self.loss_time:
            self.detect_lost(now)
            return
        if not self.sent:
            return
        self.backoff = min(self.backoff + 1, MAX_BACKOFF)
        self.rto_base = now
        self.cc.on_rto(now)
        self._declare_lost(list(self.sent.values()), now)

    def discard(self) -> None:
        """Forget everything in flight (the connection is closed)."""
        self.sent.clear()
        self.bytes_in_flight = 0
        self.ack_eliciting_out = 0
        self.loss_time = None
