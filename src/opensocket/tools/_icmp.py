"""Sans-IO echo probes: ICMP/ICMPv6 echo packets, UDP echo payloads, reply matching, statistics.

Nothing here touches a socket or a clock: the runtime (``tools/ping.py``) passes packets in
with the time they arrived (nanoseconds, the kernel's receive timestamp when it has one) and
sends the bytes built here.

How it works: an ``EchoTracker`` numbers the probes (sequence 1, 2, ...), remembers when each
left and matches what comes back to it by identifier, sequence and a per-session cookie in the
payload, so that other processes' ICMP on a raw socket (other pings, our own requests looped
back, unrelated errors) is ignored. ``PingStats`` adds up the outcome as iputils ``ping`` does
(integer microseconds; mdev = sqrt(mean(t^2) - mean(t)^2)).

Wire format of a probe payload (``-s SIZE`` bytes; ICMP adds an 8-byte header before it)::

    0       8          16               SIZE
    | sent  | cookie   | 0x10 0x11 ...  |
      ns since the epoch, big-endian; cookie: 8 random bytes of this session
      (payloads shorter than 16 bytes carry a prefix of these fields: identifier and
      sequence still match, the cookie check is skipped)

A UDP echo probe (``--udp``, for opensocket's UDP echo server) is the magic ``OSPG``, the
sequence (u32, big-endian) and then the same payload; an echo server returns it unchanged.
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass, field

__all__ = [
    "ICMPV6_ECHO_REPLY",
    "ICMPV6_ECHO_REQUEST",
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "EchoTracker",
    "PingError",
    "PingEvent",
    "PingReply",
    "PingStats",
    "PingTimeout",
    "build_echo",
    "checksum",
    "format_ms",
    "make_payload",
    "parse_icmp",
]

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP_UNREACHABLE = 3
ICMP_TIME_EXCEEDED = 11
ICMPV6_UNREACHABLE = 1
ICMPV6_TOO_BIG = 2
ICMPV6_TIME_EXCEEDED = 3
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
UDP_MAGIC = b"OSPG"
HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
STAMP = struct.Struct("!Q8s")  # sent ns, cookie

_UNREACH_V4 = {
    0: "Destination Net Unreachable",
    1: "Destination Host Unreachable",
    2: "Destination Protocol Unreachable",
    3: "Destination Port Unreachable",
    4: "Frag needed",
    9: "Destination Net Prohibited",
    10: "Destination Host Prohibited",
    13: "Communication prohibited by filter",
}
_UNREACH_V6 = {
    0: "Destination unreachable: No route",
    1: "Destination unreachable: Administratively prohibited",
    3: "Destination unreachable: Address unreachable",
    4: "Destination unreachable: Port unreachable",
}


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of ``data``, as a number in network byte order."""
    view = memoryview(data).cast("B")
    if len(view) % 2:
        view = memoryview(bytes(view) + b"\0")
    # One's-complement sums do not depend on byte order (RFC 1071, 2.B): add native 16-bit
    # words in C, fold the carries, and swap once at the end on little-endian machines.
    total = sum(view.cast("H"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    total = ~total & 0xFFFF
    if sys.byteorder == "little":
        total = ((total & 0xFF) << 8) | (total >> 8)
    return total


def make_payload(size: int, sent_ns: int, cookie: bytes) -> bytes:
    """A probe payload of ``size`` bytes: send time, cookie, then the byte pattern 0x10..."""
    stamp = STAMP.pack(sent_ns, cookie)
    if size <= len(stamp):
        return stamp[:size]
    return stamp + _fill(size)


def _fill(size: int, cache: dict[int, bytes] = {}) -> bytes:  # noqa: B006 (a cache)
    """The pattern after the stamp: byte i is i & 0xFF, for i from 16 to ``size``."""
    fill = cache.get(size)
    if fill is None:
        fill = cache[size] = bytes(i & 0xFF for i in range(STAMP.size, size))
    return fill


def build_echo(ident: int, seq: int, payload: bytes, *, v6: bool = False) -> bytes:
    """An ICMP (or ICMPv6) echo request; the ICMPv6 checksum is left 0 for the kernel."""
    kind = ICMPV6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST
    head = HEADER.pack(kind, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    if v6:  # the kernel computes it over the IPv6 pseudo-header (RFC 3542, 3.1)
        return head + payload
    return HEADER.pack(kind, 0, checksum(head + payload), ident & 0xFFFF, seq & 0xFFFF) + payload


@dataclass(frozen=True, slots=True)
class Icmp:
    """One parsed ICMP message: the fields a pinger needs."""

    type: int
    code: int
    ident: int
    seq: int
    payload: bytes
    ttl: int | None
    size: int  # ICMP bytes (header + payload), as ping prints them
    checksum_ok: bool = True


def _ip_header_length(data: bytes) -> int:
    if len(data) < 20 or data[0] >> 4 != 4:
        return -1
    return (data[0] & 0x0F) * 4


def parse_icmp(data: bytes, *, v6: bool = False, ip_header: bool = False) -> Icmp | None:
    """Parse an ICMP message (after an IPv4 header when ``ip_header``); None when malformed."""
    ttl = None
    if ip_header:
        hlen = _ip_header_length(data)
        if hlen < 20 or len(data) < hlen:
            return None
        ttl = data[8]
        data = data[hlen:]
    if len(data) < HEADER.size:
        return None
    kind, code, _, ident, seq = HEADER.unpack_from(data)
    ok = v6 or checksum(data) == 0
    return Icmp(kind, code, ident, seq, bytes(data[8:]), ttl, len(data), ok)


@dataclass(frozen=True, slots=True)
class PingEvent:
    """Base of what a probe comes to."""

    seq: int


@dataclass(frozen=True, slots=True)
class PingReply(PingEvent):
    """An answer: echo reply, UDP echo or a TCP connect (``closed``: the port answered RST)."""

    rtt_us: int
    size: int = 0
    ttl: int | None = None
    duplicate: bool = False
    address: str = ""

    @property
    def rtt_ms(self) -> float:
        """Round-trip time in milliseconds."""
        return self.rtt_us / 1000


@dataclass(frozen=True, slots=True)
class PingError(PingEvent):
    """An error answering a probe: ICMP unreachable, TCP port closed (RST), refused UDP."""

    message: str
    address: str = ""
    rtt_us: int | None = None


@dataclass(frozen=True, slots=True)
class PingTimeout(PingEvent):
    """No answer within the timeout."""


@dataclass
class EchoTracker:
    """Numbers probes and matches answers to them (ICMP, ICMPv6 or UDP echo payloads).

    ``ident`` is the ICMP identifier (ignored with ``check_ident=False``: unprivileged ICMP
    sockets rewrite it and filter replies themselves); ``cookie`` marks this session's payloads.
    """

    ident: int
    cookie: bytes
    size: int = 56
    v6: bool = False
    check_ident: bool = True
    timeout_ns: int = 2_000_000_000
    next_seq: int = 1
    sent: dict[int, int] = field(default_factory=dict)  # seq -> send time (ns)
    answered: set[int] = field(default_factory=set)
    expired_seqs: set[int] = field(default_factory=set)

    def _register(self, now_ns: int) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.sent[seq] = now_ns
        return seq

    def icmp_request(self, now_ns: int) -> tuple[int, bytes]:
        """The next echo request: its sequence number and packet."""
        seq = self._register(now_ns)
        payload = make_payload(self.size, now_ns, self.cookie)
        return seq, build_echo(self.ident, seq, payload, v6=self.v6)

    def udp_request(self, now_ns: int) -> tuple[int, bytes]:
        """The next UDP echo probe: its sequence number and datagram."""
        seq = self._register(now_ns)
        return seq, UDP_MAGIC + struct.pack("!I", seq) + make_payload(
            self.size, now_ns, self.cookie
        )

    def mark_sent(self, seq: int, now_ns: int) -> None:
        """Set the send time of ``seq`` to ``now_ns``, taken just before the packet left.

        Building a packet takes microseconds of Python; timing from the moment of sending
        keeps that out of the round-trip time (the payload's copy of the time is earlier).
        """
        if seq in self.sent:
            self.sent[seq] = now_ns

    def tcp_request(self, now_ns: int) -> int:
        """Register a TCP connect probe; return its sequence number."""
        return self._register(now_ns)

    def _cookie_ok(self, payload: bytes) -> bool:
        return len(payload) < STAMP.size or payload[8:16] == self.cookie

    def _answer(self, seq: int, at_ns: int) -> tuple[int, bool] | None:
        """RTT (us) and duplicate flag for an answer to ``seq``; None if not ours or expired."""
        sent = self.sent.get(seq)
        if sent is None or seq in self.expired_seqs:
            return None
        duplicate = seq in self.answered
        self.answered.add(seq)
        return max(0, at_ns - sent) // 1000, duplicate

    def receive_icmp(
        self, data: bytes, at_ns: int, *, ip_header: bool = False, address: str = ""
    ) -> PingEvent | None:
        """Match an ICMP packet received at ``at_ns``; None when it is not an answer to us."""
        msg = parse_icmp(data, v6=self.v6, ip_header=ip_header)
        if msg is None or not msg.checksum_ok:
            return None
        reply_type = ICMPV6_ECHO_REPLY if self.v6 else ICMP_ECHO_REPLY
        if msg.type == reply_type:
            if (self.check_ident and msg.ident != self.ident) or not self._cookie_ok(msg.payload):
                return None
            seq = self._full_seq(msg.seq)
            answer = self._answer(seq, at_ns)
            if answer is None:
                return None
            return PingReply(seq, answer[0], msg.size, msg.ttl, answer[1], address)
        return self._icmp_error(msg, address)

    def _full_seq(self, wire_seq: int) -> int:
        """The probe number for a 16-bit wire sequence (the latest that matches)."""
        base = (self.next_seq - 1) & ~0xFFFF
        seq = base | wire_seq
        return seq - 0x10000 if seq >= self.next_seq and seq >= 0x10000 else seq

    def _icmp_error(self, msg: Icmp, address: str) -> PingEvent | None:
        """An unreachable / time exceeded message quoting one of our requests."""
        if self.v6:
            table = {ICMPV6_UNREACHABLE: _UNREACH_V6, ICMPV6_TIME_EXCEEDED: {}, ICMPV6_TOO_BIG: {}}
            inner = msg.payload[40:] if len(msg.payload) >= 48 else b""
        else:
            table = {ICMP_UNREACHABLE: _UNREACH_V4, ICMP_TIME_EXCEEDED: {}}
            hlen = _ip_header_length(msg.payload)
            inner = msg.payload[hlen:] if hlen >= 20 else b""
        if msg.type not in table or len(inner) < HEADER.size:
            return None
        request = ICMPV6_ECHO_REQUEST if self.v6 else ICMP_ECHO_REQUEST
        kind, _, _, ident, wire_seq = HEADER.unpack_from(inner)
        if kind != request or (self.check_ident and ident != self.ident):
            return None
        seq = self._full_seq(wire_seq)
        if seq not in self.sent or seq in self.answered or seq in self.expired_seqs:
            return None
        self.answered.add(seq)
        return PingError(seq, _describe_error(msg, table[msg.type], self.v6), address)

    def receive_udp(self, data: bytes, at_ns: int, *, address: str = "") -> PingEvent | None:
        """Match a UDP echo; None when it is not an echo of one of our probes."""
        if len(data) < 8 or data[:4] != UDP_MAGIC or not self._cookie_ok(data[8:]):
            return None
        (seq,) = struct.unpack_from("!I", data, 4)
        answer = self._answer(seq, at_ns)
        if answer is None:
            return None
        return PingReply(seq, answer[0], len(data), None, answer[1], address)

    def answer_tcp(self, seq: int, at_ns: int, *, address: str = "") -> PingReply | None:
        """A TCP probe connected at ``at_ns``."""
        answer = self._answer(seq, at_ns)
        return None if answer is None else PingReply(seq, answer[0], 0, None, False, address)

    def fail(self, seq: int, message: str, at_ns: int, *, address: str = "") -> PingError | None:
        """A probe answered by an error (RST, port unreachable) at ``at_ns``."""
        answer = None if seq in self.answered else self._answer(seq, at_ns)
        return None if answer is None else PingError(seq, message, address, answer[0])

    @property
    def outstanding(self) -> list[int]:
        """Probes neither answered nor expired, oldest first."""
        return [s for s in self.sent if s not in self.answered and s not in self.expired_seqs]

    def next_deadline(self) -> int | None:
        """When (ns) the oldest outstanding probe times out; None when none is outstanding."""
        pending = self.outstanding
        return self.sent[pending[0]] + self.timeout_ns if pending else None

    def expire(self, now_ns: int) -> list[PingTimeout]:
        """Time out every outstanding probe older than the timeout."""
        out = []
        for seq in self.outstanding:
            if now_ns - self.sent[seq] >= self.timeout_ns:
                self.expired_seqs.add(seq)
                out.append(PingTimeout(seq))
        return out


def _describe_error(msg: Icmp, table: dict[int, str], v6: bool) -> str:
    if not v6 and msg.type == ICMP_TIME_EXCEEDED:
        return "Time to live exceeded"
    if v6 and msg.type == ICMPV6_TIME_EXCEEDED:
        return "Time exceeded: Hop limit"
    if v6 and msg.type == ICMPV6_TOO_BIG:
        return "Packet too big"
    return table.get(msg.code, f"Destination unreachable (code {msg.code})")


def format_ms(us: int) -> str:
    """A round-trip time as iputils prints it (``0.045``, ``1.23``, ``12.3``, ``123``)."""
    if us >= 100000 - 50:
        return str((us + 500) // 1000)
    if us >= 10000 - 5:
        t = us + 50
        return f"{t // 1000}.{(t % 1000) // 100}"
    if us >= 1000:
        t = us + 5
        return f"{t // 1000}.{(t % 1000) // 10:02d}"
    return f"{us // 1000}.{us % 1000:03d}"


def _isqrt(value: int) -> int:
    return math.isqrt(value) if value > 0 else 0


def _ms3(us: int) -> str:
    return f"{us // 1000}.{us % 1000:03d}"


@dataclass
class PingStats:
    """Totals of a ping run, computed as iputils does (integer microseconds)."""

    transmitted: int = 0
    received: int = 0
    duplicates: int = 0
    errors: int = 0
    rtts_us: list[int] = field(default_factory=list)  # replies and duplicates

    def add(self, event: PingEvent) -> None:
        """Count one event."""
        if isinstance(event, PingReply):
            self.rtts_us.append(event.rtt_us)
            if event.duplicate:
                self.duplicates += 1
            else:
                self.received += 1
        elif isinstance(event, PingError):
            self.errors += 1

    @property
    def loss_percent(self) -> float:
        """Share of probes without a reply, in percent (0 when nothing was sent)."""
        if not self.transmitted:
            return 0.0
        return (self.transmitted - self.received) * 100.0 / self.transmitted

    def rtt_us(self) -> tuple[int, int, int, int] | None:
        """min, avg, max and mdev in microseconds; None without replies."""
        if not self.received:
            return None
        total = len(self.rtts_us)
        tsum = sum(self.rtts_us)
        tsum2 = sum(t * t for t in self.rtts_us)
        avg = tsum // total
        if tsum < 2**31 - 1:  # iputils' order avoids rounding errors for small times
            var = (tsum2 - (tsum * tsum) // total) // total
        else:
            var = tsum2 // total - avg * avg
        return min(self.rtts_us), avg, max(self.rtts_us), _isqrt(var)

    def summary_lines(self, elapsed_ms: int) -> list[str]:
        """The two lines iputils prints after ``--- HOST ping statistics ---``."""
        parts = [f"{self.transmitted} packets transmitted", f"{self.received} received"]
        if self.duplicates:
            parts.append(f"+{self.duplicates} duplicates")
        if self.errors:
            parts.append(f"+{self.errors} errors")
        if self.transmitted:
            parts += [f"{self.loss_percent:g}% packet loss", f"time {elapsed_ms}ms"]
        lines = [", ".join(parts)]
        rtt = self.rtt_us()
        if rtt is not None:
            lines.append("rtt min/avg/max/mdev = " + "/".join(_ms3(v) for v in rtt) + " ms")
        return lines

    def as_dict(self) -> dict[str, object]:
        """The totals as JSON-ready values (times in ms; ``rtt_ms`` is None without replies)."""
        out: dict[str, object] = {
            "transmitted": self.transmitted,
            "received": self.received,
            "duplicates": self.duplicates,
            "errors": self.errors,
            "loss_percent": round(self.loss_percent, 3),
        }
        rtt = self.rtt_us()
        keys = ("min", "avg", "max", "mdev")
        # always present, null without replies: a consumer need not test for the key
        out["rtt_ms"] = (
            None if rtt is None else dict(zip(keys, (v / 1000 for v in rtt), strict=True))
        )
        return out
