"""Congestion control, swappable: a small protocol and two implementations.

``NewReno`` (RFC 6582 / RFC 9002 flavour): slow start doubles the window every round trip,
congestion avoidance adds one datagram per window acked, and a loss halves the window once
per recovery period (losses of packets sent before the period began do not cut it again).
An RTO collapses the window to the minimum. ``FixedWindow`` ("none") keeps a constant window
and leaves rate control to flow control, like KCP's no-congestion-window mode. ``BbrLite``
("bbr") sizes the window from a model of the path, twice the bandwidth-delay product, and does
not read random loss as congestion: what a game or a lossy radio link needs.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Protocol

__all__ = [
    "BbrLite",
    "CongestionController",
    "FixedWindow",
    "NewReno",
    "Pacer",
    "make_controller",
]

INITIAL_PACKETS: Final = 10
MIN_PACKETS: Final = 2
LOSS_FACTOR: Final = 0.5


class CongestionController(Protocol):
    """What loss recovery tells a congestion controller, and what the sender asks it."""

    cwnd: int
    ssthresh: float

    def on_packet_sent(self, size: int, now: float) -> None:
        """An ack-eliciting packet of ``size`` bytes went out."""

    def on_packets_acked(self, size: int, newest_sent: float, now: float) -> None:
        """``size`` bytes were acked; ``newest_sent`` is when the newest of them was sent."""

    def on_packets_lost(self, size: int, newest_sent: float, now: float) -> None:
        """``size`` bytes were declared lost; ``newest_sent`` is the newest one's send time."""

    def on_rto(self, now: float) -> None:
        """The retransmission timer expired."""

    def pacing_rate(self, srtt: float) -> float | None:
        """Bytes per second to pace at (None: send as the window allows)."""


class NewReno:
    """Slow start, congestion avoidance, one multiplicative decrease per loss episode."""

    __slots__ = ("_acked", "cwnd", "loss_episodes", "mss", "recovery_start", "ssthresh")

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = INITIAL_PACKETS * mss
        self.ssthresh: float = float("inf")
        self.recovery_start = float("-inf")
        self.loss_episodes = 0
        self._acked = 0

    def on_packet_sent(self, size: int, now: float) -> None:
        """Nothing to do: the window is compared with bytes in flight by the sender."""

    def on_packets_acked(self, size: int, newest_sent: float, now: float) -> None:
        """Grow the window, except for packets sent before the current recovery began."""
        if newest_sent <= self.recovery_start:
            return
        if self.cwnd < self.ssthresh:
            self.cwnd += size
            return
        self._acked += size
        if self._acked >= self.cwnd:
            self._acked -= self.cwnd
            self.cwnd += self.mss

    def on_packets_lost(self, size: int, newest_sent: float, now: float) -> None:
        """Halve the window once per recovery period."""
        if newest_sent <= self.recovery_start:
            return
        self.recovery_start = now
        self.loss_episodes += 1
        self.cwnd = max(int(self.cwnd * LOSS_FACTOR), MIN_PACKETS * self.mss)
        self.ssthresh = self.cwnd
        self._acked = 0

    def on_rto(self, now: float) -> None:
        """Back to the minimum window and slow start up to half the old window."""
        self.ssthresh = max(self.cwnd * LOSS_FACTOR, MIN_PACKETS * self.mss)
        self.cwnd = MIN_PACKETS * self.mss
        self.recovery_start = now
        self.loss_episodes += 1
        self._acked = 0

    def pacing_rate(self, srtt: float) -> float | None:
        """The window spread over the RTT, with headroom (2x in slow start, 1.25x after)."""
        gain = 2.0 if self.cwnd < self.ssthresh else 1.25
        return gain * self.cwnd / max(srtt, 1e-3)


class FixedWindow:
    """A constant window: no reaction to loss (for links known to be lossy but not congested)."""

    __slots__ = ("cwnd", "ssthresh")

    def __init__(self, mss: int, packets: int = 256) -> None:
        self.cwnd = packets * mss
        self.ssthresh = float("inf")

    def on_packet_sent(self, size: int, now: float) -> None:
        """Nothing to track."""

    def on_packets_acked(self, size: int, newest_sent: float, now: float) -> None:
        """Nothing to track."""

    def on_packets_lost(self, size: int, newest_sent: float, now: float) -> None:
        """Nothing to track."""

    def on_rto(self, now: float) -> None:
        """Nothing to track."""

    def pacing_rate(self, srtt: float) -> float | None:
        """No pacing."""
        return None


BW_ROUNDS: Final = 10  # the bandwidth estimate is the max over this many round trips
STARTUP_GAIN: Final = 2.89  # 2/ln(2): doubles delivery each round while the path allows
CWND_GAIN: Final = 2.0
STARTUP_GROWTH: Final = 1.25  # startup ends when a round grows bandwidth less than this...
STARTUP_ROUNDS: Final = 3  # ...three rounds in a row
PACING_GAINS: Final = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # probe up, drain, cruise
MIN_BBR_PACKETS: Final = 4


class BbrLite:
    """A simplified BBR: the window and pacing rate come from a model of the path.

    One delivery-rate sample per round trip (bytes acked since the round began over its
    duration; a round ends when a packet sent after its start is acked); the bandwidth is the
    max of the last 10. Startup paces at 2.89x the bandwidth with a 2.89 x BDP window until a
    round no longer grows it by 25% three times; one drain round at 1/2.89; then rounds cycle
    pacing gains 1.25, 0.75, 1 x 6 with a 2 x BDP window. Loss does not shrink the window
    (random loss is not congestion); an RTO drops it to 4 datagrams until acks rebuild it.
    The minimum RTT is the lowest ever seen (no ProbeRTT phase: a simplification).
    """

    __slots__ = (
        "_cycle",
        "_draining",
        "_full_bw",
        "_full_count",
        "_round_delivered",
        "_round_start",
        "_samples",
        "cwnd",
        "delivered",
        "filled",
        "min_rtt",
        "mss",
        "ssthresh",
    )

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = INITIAL_PACKETS * mss
        self.ssthresh: float = float("inf")
        self.delivered = 0
        self.min_rtt = float("inf")
        self.filled = False
        self._draining = False
        self._cycle = 0
        self._samples: deque[float] = deque(maxlen=BW_ROUNDS)
        self._round_start: float | None = None
        self._round_delivered = 0
        self._full_bw = 0.0
        self._full_count = 0

    @property
    def bandwidth(self) -> float:
        """The bottleneck bandwidth estimate, bytes per second (0 before a round ends)."""
        return max(self._samples, default=0.0)

    def on_packet_sent(self, size: int, now: float) -> None:
        """Start a measurement round if none runs."""
        if self._round_start is None:
            self._round_start = now
            self._round_delivered = self.delivered

    def on_packets_acked(self, size: int, newest_sent: float, now: float) -> None:
        """Count delivery, end the round when due, and set the window from the model."""
        self.delivered += size
        self.min_rtt = min(self.min_rtt, now - newest_sent)
        start = self._round_start
        if start is not None and newest_sent >= start and now > start:
            self._samples.append((self.delivered - self._round_delivered) / (now - start))
            self._round_start = now
            self._round_delivered = self.delivered
            self._next_round()
        bdp = self.bandwidth * self.min_rtt
        if not bdp:
            return
        gain = CWND_GAIN if self.filled else STARTUP_GAIN
        self.cwnd = max(int(gain * bdp), MIN_BBR_PACKETS * self.mss)

    def _next_round(self) -> None:
        if self.filled:
            self._draining = False
            self._cycle = (self._cycle + 1) % len(PACING_GAINS)
            return
        bw = self.bandwidth
        if bw >= self._full_bw * STARTUP_GROWTH:
            self._full_bw = bw
            self._full_count = 0
            return
        self._full_count += 1
        if self._full_count >= STARTUP_ROUNDS:
            self.filled = self._draining = True

    def on_packets_lost(self, size: int, newest_sent: float, now: float) -> None:
        """Random loss is not congestion: the model decides the window."""

    def on_rto(self, now: float) -> None:
        """Everything in flight is gone: restart small, the next acks restore the model."""
        self.cwnd = MIN_BBR_PACKETS * self.mss
        self._round_start = None

    def pacing_rate(self, srtt: float) -> float | None:
        """The bandwidth times the phase's gain (before a sample: twice the window per RTT)."""
        bandwidth = self.bandwidth
        if not bandwidth:
            return 2.0 * self.cwnd / max(srtt, 1e-3)
        if not self.filled:
            return STARTUP_GAIN * bandwidth
        if self._draining:
            return bandwidth / STARTUP_GAIN
        return PACING_GAINS[self._cycle] * bandwidth


class Pacer:
    """A token bucket spreading packets at the controller's pacing rate (bursts of ``burst``)."""

    __slots__ = ("_last", "burst", "tokens")

    def __init__(self, burst: int) -> None:
        self.burst = burst
        self.tokens = float(burst)
        self._last: float | None = None

    def wait(self, now: float, rate: float | None, size: int) -> float | None:
        """None when ``size`` bytes may go now, else the time when they may."""
        if rate is None:
            return None
        if self._last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self._last) * rate)
        self._last = now
        if self.tokens >= size - 0.5:  # half a byte of slack absorbs float rounding
            return None
        return now + (size - self.tokens) / rate

    def spend(self, size: int) -> None:
        """``size`` bytes went out."""
        self.tokens -= size


def make_controller(name: str, mss: int) -> CongestionController:
    """The controller named in RudpOptions.congestion."""
    if name == "none":
        return FixedWindow(mss)
    if name == "bbr":
        return BbrLite(mss)
    return NewReno(mss)
