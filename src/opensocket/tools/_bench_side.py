"""One side of a running bench test: its flows, the interval sampler, the control-message
helpers both sides use, and the result type."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .. import sync
from ..errors import BenchFailed, ReadTimeout
from ._bench_flows import (
    Flow,
    framed_mover,
    tcp_mover,
    udp_receive,
    udp_sender,
)
from ._bench_proto import (
    BenchParams,
    Mode,
    interval_record,
)

__all__ = [
    "JOIN",
    "UDP_ACK",
    "BenchFailed",
    "BenchResult",
    "Side",
    "big_buffers",
    "check_error",
    "expect",
    "hostport",
    "make_movers",
    "roles",
    "split_hostport",
    "stop_flows",
]

log = logging.getLogger("opensocket.bench")

DEFAULT_PORT: Final = 5210
SETUP_TIMEOUT: Final = 10.0  # to open every data stream
END_GRACE: Final = 10.0  # beyond the duration, before a test is declared stuck
POLL: Final = 0.02
SLICE: Final = 0.1  # how long setup waits block before looking at the control connection
UDP_BUFFER: Final = 4 * 1024 * 1024
UDP_HELLO_TRIES: Final = 25
JOIN: Final = struct.Struct("!16sI")  # what a data stream sends first: cookie, stream index
UDP_ACK: Final = b"opensocket-bench-ack"

Handler = Callable[[dict[str, Any]], None]
IntervalCallback = Callable[[dict[str, Any]], None]


@dataclass
class BenchResult:
    """The outcome of a test: ``data`` is the ``--json`` document (schema opensocket.bench/1)."""

    data: dict[str, Any]
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def sender_bps(self) -> float:
        """Bits per second the senders wrote."""
        return float(self.data["end"]["sender"]["bits_per_second"])

    @property
    def receiver_bps(self) -> float:
        """Bits per second the receivers read."""
        return float(self.data["end"]["receiver"]["bits_per_second"])

    @property
    def messages_per_second(self) -> float | None:
        """Messages (rate) or round trips (rtt) per second, None for throughput tests."""
        value = self.data["end"]["messages_per_second"]
        return None if value is None else float(value)

    def to_json(self) -> str:
        """The result as one line of JSON."""
        return json.dumps(self.data)


# ---- one side of a running test ------------------------------------------------------------


class Side:
    """The flows of one side, the interval sampler, and this side's report."""

    def __init__(
        self,
        params: BenchParams,
        role: str,
        flows: list[Flow],
        on_interval: IntervalCallback | None = None,
    ) -> None:
        self.params, self.role, self.flows = params, role, flows
        self.on_interval = on_interval
        self.packets = params.protocol == "udp" or params.mode != "throughput"
        self.intervals: list[dict[str, Any]] = []
        self.t0 = self.last = self.next_tick = 0.0
        self.seen = [(0, 0)] * len(flows)

    def start(self, make: Callable[[Side], Sequence[Callable[[Flow], None]]]) -> None:
        """Start every flow now, with the movers ``make(self)`` returns (once ``t0`` is set)."""
        self.t0 = self.last = time.monotonic()
        self.next_tick = self.t0
        self._advance_tick()
        for flow, mover in zip(self.flows, make(self), strict=True):
            flow.start(mover, self.t0)

    @property
    def deadline(self) -> float:
        """When the test's own data streams should be over (plus a grace)."""
        return self.t0 + self.params.duration + END_GRACE

    def done(self) -> bool:
        """True once every flow has ended."""
        return all(flow.finished.is_set() for flow in self.flows)

    def sample(self, now: float) -> None:
        """Record an interval from the last sample to ``now``."""
        counts = []
        for i, flow in enumerate(self.flows):
            nbytes, npackets = flow.report.bytes, flow.report.packets
            old_bytes, old_packets = self.seen[i]
            counts.append((flow.report.id, nbytes - old_bytes, npackets - old_packets))
            self.seen[i] = (nbytes, npackets)
        record = interval_record(self.last - self.t0, now - self.t0, counts, self.packets)
        self.intervals.append(record)
        self.last = now
        self._advance_tick()
        if self.on_interval is not None:
            self.on_interval(record)

    def _advance_tick(self) -> None:
        """The next sampling time. Ticks stop half an interval before the end of the test, so
        that the last interval (taken by ``finish``) runs to the end rather than leaving a
        sliver after the deadline; interval 0 means no ticks at all."""
        interval = self.params.interval
        tick = self.next_tick + interval
        last_tick = self.t0 + self.params.duration - interval / 2
        self.next_tick = tick if interval > 0 and tick <= last_tick else math.inf

    def drive(self, control: sync.Connection, until: Callable[[], bool], handle: Handler) -> None:
        """Sample on every tick and hand control messages to ``handle`` until ``until()``."""
        while not until():
            now = time.monotonic()
            if now >= self.deadline:
                raise BenchFailed(
                    f"the test did not end within {self.params.duration + END_GRACE:g}s: "
                    "a stream or the peer is stuck"
                )
            if now >= self.next_tick:
                self.sample(now)
                continue
            try:
                message = control.recv(timeout=max(min(self.next_tick - now, POLL), 0.001))
            except ReadTimeout:
                continue
            handle(message)

    def drain(self) -> None:
        """Ask receivers to stop once their input is exhausted."""
        for flow in self.flows:
            flow.draining = True

    def finish(self) -> None:
        """The last interval, from the last tick to now (every flow has ended)."""
        self.sample(max(time.monotonic(), self.last))

    def report(self) -> dict[str, Any]:
        """This side's measurements, as sent in a ``results`` message."""
        return {
            "role": self.role,
            "seconds": max((f.report.seconds for f in self.flows), default=0.0),
            "streams": [f.report.to_dict() for f in self.flows],
            "intervals": self.intervals,
        }

    def errors(self) -> list[str]:
        """What went wrong in flows that ended by an error."""
        return [f"stream {f.report.id}: {f.error}" for f in self.flows if f.error is not None]


def make_movers(params: BenchParams, side: Side, client: bool) -> list[Callable[[Flow], None]]:
    """The mover of each flow, for this side's role."""
    deadline = side.t0 + params.duration
    sender = side.role == "sender"
    length, bitrate = params.length, params.bitrate
    if params.mode != "throughput":
        role = _framed_role(params.mode, sender, client)
        return [framed_mover(role, length, deadline, bitrate) for _ in side.flows]
    if params.protocol == "udp":
        if sender:
            return [
                udp_sender(f.report.id, length, deadline, bitrate, params.gso) for f in side.flows
            ]
        return [udp_receive(side.flows, length) for _ in side.flows]
    return [tcp_mover(sender, length, deadline, bitrate) for _ in side.flows]


def _framed_role(mode: Mode, sender: bool, client: bool) -> str:
    if mode == "rtt":
        return "rtt" if client else "echo"
    return "rate-send" if sender else "rate-receive"


def roles(params: BenchParams) -> tuple[str, str]:
    """(client role, server role)."""
    if params.reverse:
        return "receiver", "sender"
    return "sender", "receiver"


def stop_flows(flows: Sequence[Flow], wait: float = 2.0) -> None:
    """Stop flows that are still running, and wait for them a little."""
    for flow in flows:
        if not flow.finished.is_set():
            flow.stop()
    deadline = time.monotonic() + wait
    for flow in flows:
        if flow.t0:
            flow.finished.wait(max(deadline - time.monotonic(), 0.0))


def expect(control: sync.Connection, kind: str, timeout: float) -> dict[str, Any]:
    """The next control message of type ``kind``; BenchFailed on an error or anything else."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = control.recv(timeout=max(deadline - time.monotonic(), 0.001))
        except ReadTimeout:
            raise BenchFailed(f"the peer sent no {kind!r} message within {timeout:g}s") from None
        if not isinstance(message, dict):
            raise BenchFailed(f"unexpected control message {message!r}")
        if message.get("type") == "error":
            raise BenchFailed(str(message.get("message", "the peer reported an error")))
        if message.get("type") == kind:
            return message
        if message.get("type") != "done":
            raise BenchFailed(f"unexpected control message (wanted {kind!r}): {message!r}")


def check_error(message: dict[str, Any]) -> None:
    """Raise BenchFailed when the peer reports an error on the control connection."""
    if isinstance(message, dict) and message.get("type") == "error":
        raise BenchFailed(str(message.get("message")))


def hostport(address: str) -> str:
    """``host:port`` of an address as connections report it (with or without a scheme)."""
    return address.rpartition("://")[2]


def split_hostport(address: str) -> tuple[str, int]:
    """(host, port) of ``host:port``, ``[v6]:port`` or ``scheme://host:port``."""
    host, _, port = hostport(address).rpartition(":")
    return host.strip("[]"), int(port)


def big_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER)
