"""The data path of a bench test: one thread per stream moving bytes as fast as it can.

Throughput streams are raw blocking sockets: a sender writes a preallocated buffer with
``sendall`` of a memoryview, a receiver reads with ``recv_into`` into a preallocated buffer, so
no Python object is allocated per chunk and the GIL is released during each call. Counters are
plain attributes that the interval sampler reads from another thread. Rate and round-trip
streams run over framed opensocket connections.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from ..errors import ConnectionClosed, OpenSocketError, ReadTimeout
from ..sync import Connection
from ._bench_proto import StreamReport
from ._bench_udp import HEADER, UdpReceiver

__all__ = ["TCP_RECV_SIZE", "Flow", "framed_mover", "tcp_mover", "udp_receive", "udp_sender"]

TCP_RECV_SIZE: Final = 1024 * 1024
UDP_RECV_SIZE: Final = 65_536
UDP_POLL: Final = 0.05  # SO_RCVTIMEO of UDP receivers: how often they look at their stop flag
RATE_BATCH: Final = 64
PUBLISH_MASK: Final = 31  # publish UDP counters every 32 datagrams
FRAMED_TIMEOUT: Final = 10.0
_SEND_AGAIN = frozenset({errno.ENOBUFS, errno.EAGAIN})
_GSO_REFUSED = frozenset({errno.EIO, errno.EINVAL, errno.EOPNOTSUPP})
UDP_SEGMENT: Final = getattr(socket, "UDP_SEGMENT", 103)  # linux/udp.h
UDP_GRO: Final = getattr(socket, "UDP_GRO", 104)
GSO_MAX_SEGMENTS: Final = 64  # UDP_MAX_SEGMENTS in the kernel
GSO_MAX_BYTES: Final = 65_000


class Flow:
    """One stream: its counters, its socket or connection, its thread and its stop flags.

    ``draining`` asks a receiver to stop once its input is exhausted (UDP: no datagram for
    ``UDP_POLL``); ``stopped`` asks every mover to stop at once.
    """

    def __init__(self, sid: int, *, udp: bool = False) -> None:
        self.report = StreamReport(sid, udp=UdpReceiver() if udp else None)
        self.sock: socket.socket | None = None
        self.conn: Connection | None = None
        self.t0 = 0.0
        self.end: float | None = None  # when the last data moved, if the mover knows better
        self.draining = False
        self.stopped = False
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.latencies: list[float] = []

    def run(self, mover: Callable[[Flow], None]) -> None:
        """Run ``mover`` in this thread, recording how it ended."""
        try:
            mover(self)
        except (OSError, OpenSocketError) as exc:
            if not self.stopped:
                self.error = exc
        finally:
            self.report.seconds = (self.end or time.monotonic()) - self.t0
            self.finished.set()

    def start(self, mover: Callable[[Flow], None], t0: float) -> None:
        """Start ``mover`` in a thread of its own, the test clock starting at ``t0``."""
        self.t0 = t0
        name = f"bench-stream-{self.report.id}"
        threading.Thread(target=self.run, args=(mover,), name=name, daemon=True).start()

    def stop(self) -> None:
        """Stop now: wake a mover blocked in a socket call."""
        self.stopped = True
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def close(self) -> None:
        """Release the socket or connection."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        if self.conn is not None:
            with contextlib.suppress(OpenSocketError, OSError):
                self.conn.close()


def _pace(report: StreamReport, t0: float, bitrate: float, deadline: float) -> None:
    """Sleep until the bytes sent so far match ``bitrate`` (bits/s)."""
    wake = min(t0 + report.bytes * 8 / bitrate, deadline)
    now = time.monotonic()
    if wake > now:  # past the deadline already: no sleep (a negative one would raise)
        time.sleep(wake - now)


def tcp_mover(sender: bool, length: int, deadline: float, bitrate: float) -> Callable[[Flow], None]:
    """A mover for a TCP or TLS stream: send ``length``-byte writes until ``deadline``, or
    receive until the peer's end of stream."""

    def send(flow: Flow) -> None:
        sock, report = flow.sock, flow.report
        assert sock is not None
        chunk = memoryview(bytearray(length))
        sendall, clock = sock.sendall, time.monotonic
        try:
            while not flow.stopped:
                sendall(chunk)
                report.bytes += length
                if clock() >= deadline:
                    break
                if bitrate:
                    _pace(report, flow.t0, bitrate, deadline)
        finally:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_WR)

    def receive(flow: Flow) -> None:
        sock, report = flow.sock, flow.report
        assert sock is not None
        buf = memoryview(bytearray(TCP_RECV_SIZE))
        recv_into = sock.recv_into
        while True:
            n = recv_into(buf)
            if not n:
                return
            report.bytes += n

    return send if sender else receive


def gso_batch(length: int, bitrate: float) -> int:
    """Datagrams per send with UDP GSO: as many as fit in 64 KiB (at most 64), fewer when a
    bitrate is set, so that one burst lasts at most a millisecond."""
    batch = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // length)
    if bitrate:
        batch = min(batch, int(bitrate / 8 / length / 1000))
    return max(batch, 1)


def enable_gso(sock: socket.socket, length: int) -> bool:
    """Let the kernel cut one send into ``length``-byte datagrams (UDP_SEGMENT, Linux 4.18+)."""
    try:
        sock.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, length)
    except OSError:
        return False
    return True


def enable_gro(sock: socket.socket) -> None:
    """Let the kernel hand over several datagrams of one flow in one read (UDP_GRO, 5.0+)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)


def udp_sender(
    sid: int, length: int, deadline: float, bitrate: float, gso: bool = True
) -> Callable[[Flow], None]:
    """A mover that sends numbered, timestamped datagrams until ``deadline``, several per
    system call with UDP GSO when ``gso`` and the kernel allow it."""

    def send(flow: Flow) -> None:
        sock, report = flow.sock, flow.report
        assert sock is not None
        batch = gso_batch(length, bitrate) if gso else 1
        if batch > 1 and not enable_gso(sock, length):
            batch = 1
        try:
            _send_loop(flow, sock, batch)
        except OSError as exc:
            if batch == 1 or exc.errno not in _GSO_REFUSED:
                raise
            # this path cannot segment (no checksum offload, say): one datagram per send
            sock.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, 0)
            _send_loop(flow, sock, 1, report.packets)

    def _send_loop(flow: Flow, sock: socket.socket, batch: int, seq: int = 0) -> None:
        report = flow.report
        try:
            _send_batches(flow, sock, batch, seq)
        finally:
            report.bytes = report.packets * length

    def _send_singles(flow: Flow, sock: socket.socket, seq: int) -> None:
        """The one-datagram-per-call loop, unpaced: as little Python per datagram as can be."""
        report = flow.report
        buf = bytearray(length)
        pack, clock_ns, out = HEADER.pack_into, time.monotonic_ns, sock.send
        end_ns = int(deadline * 1e9)
        try:
            while True:
                now = clock_ns()
                if now >= end_ns:
                    break
                pack(buf, 0, sid, 0, seq + 1, now)
                try:
                    out(buf)
                except OSError as exc:
                    if exc.errno in _SEND_AGAIN:
                        continue
                    raise
                seq += 1
                if not seq & PUBLISH_MASK:  # counters for the sampler; the stop flag
                    report.packets, report.bytes = seq, seq * length
                    if flow.stopped:
                        break
        finally:
            report.packets = seq

    def _send_batches(flow: Flow, sock: socket.socket, batch: int, seq: int) -> None:
        if batch == 1 and not bitrate:
            _send_singles(flow, sock, seq)
            return
        report = flow.report
        buf = bytearray(length * batch)
        offsets = range(0, length * batch, length)
        pack, clock_ns, out = HEADER.pack_into, time.monotonic_ns, sock.send
        end_ns = int(deadline * 1e9)
        while not flow.stopped:
            now = clock_ns()
            if now >= end_ns:
                break
            for i, offset in enumerate(offsets, seq + 1):
                pack(buf, offset, sid, 0, i, now)
            try:
                out(buf)
            except OSError as exc:
                if exc.errno in _SEND_AGAIN:
                    continue
                raise
            seq += batch
            report.packets = seq
            if bitrate or not seq & PUBLISH_MASK or batch > 1:  # bytes for the sampler
                report.bytes = seq * length
                if bitrate:
                    _pace(report, flow.t0, bitrate, deadline)

    return send


def udp_receive(flows: Sequence[Flow], length: int) -> Callable[[Flow], None]:
    """A mover that reads datagrams and accounts each to the stream its header names.

    With UDP GRO one read may hold several ``length``-byte datagrams back to back; each is
    accounted on its own, by its own header.
    """
    receivers = [(f.report, f.report.udp) for f in flows if f.report.udp is not None]

    def publish() -> None:
        for report, udp in receivers:
            report.packets, report.bytes = udp.received, udp.bytes

    def receive(flow: Flow) -> None:
        assert flow.sock is not None
        enable_gro(flow.sock)
        try:
            _receive_loop(flow, receivers, length)
        finally:
            publish()

    return receive


def _receive_loop(
    flow: Flow, receivers: list[tuple[StreamReport, UdpReceiver]], length: int
) -> None:
    sock = flow.sock
    assert sock is not None
    buf = bytearray(UDP_RECV_SIZE)
    recv_into, unpack, clock_ns = sock.recv_into, HEADER.unpack_from, time.monotonic_ns
    size_min, count = HEADER.size, len(receivers)
    now = 0
    while not flow.stopped:
        try:
            size = recv_into(buf)
        except BlockingIOError:  # SO_RCVTIMEO expired: a chance to look at the flags
            if flow.draining:
                if now:  # the receiver's time ends with its last datagram, not the wait
                    flow.end = now / 1e9
                return
            continue
        except ConnectionRefusedError:  # an ICMP error from an earlier send: ignore
            continue
        if size < size_min:
            continue
        now = clock_ns()
        if size <= length or size % length:
            segments: range | tuple[int, ...] = (0,)
            one = size
        else:  # coalesced by GRO: datagrams of ``length`` bytes each
            segments, one = range(0, size, length), length
        for offset in segments:
            stream, _, seq, sent_ns = unpack(buf, offset)
            if stream < count:
                report, udp = receivers[stream]
                udp.datagram(seq, sent_ns, now, one)
                if not udp.received & PUBLISH_MASK:  # counters for the sampler
                    report.packets, report.bytes = udp.received, udp.bytes


def set_recv_timeout(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO: a blocking receive gives up (EAGAIN) after ``seconds``, with no poll per
    call as ``settimeout`` would add."""
    whole = int(seconds)
    micros = int((seconds - whole) * 1e6)
    value = whole.to_bytes(8, "little") + micros.to_bytes(8, "little")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)


def framed_mover(role: str, length: int, deadline: float, bitrate: float) -> Callable[[Flow], None]:
    """A mover for a framed stream: ``role`` is "rate-send", "rate-receive", "rtt" (client)
    or "echo" (server)."""
    payload = bytes(length)

    def rate_send(flow: Flow) -> None:
        conn, report = flow.conn, flow.report
        assert conn is not None
        batch = [payload] * RATE_BATCH
        size = RATE_BATCH * length
        try:
            while not flow.stopped and time.monotonic() < deadline:
                conn.send_many(batch)
                report.packets += RATE_BATCH
                report.bytes += size
                if bitrate:
                    _pace(report, flow.t0, bitrate, deadline)
        finally:
            conn.close()

    def rate_receive(flow: Flow) -> None:
        conn, report = flow.conn, flow.report
        assert conn is not None
        while not flow.stopped:
            try:
                items = conn.recv_batch(timeout=UDP_POLL)
            except ReadTimeout:
                continue
            except ConnectionClosed:
                return
            report.packets += len(items)
            report.bytes += sum(map(len, items))

    def rtt(flow: Flow) -> None:
        conn, report, samples = flow.conn, flow.report, flow.latencies
        assert conn is not None
        clock = time.perf_counter_ns
        try:
            while not flow.stopped and time.monotonic() < deadline:
                sent = clock()
                conn.send(payload)
                conn.recv(timeout=FRAMED_TIMEOUT)
                samples.append((clock() - sent) / 1e6)
                report.packets += 1
                report.bytes += length
        finally:
            conn.close()

    def echo(flow: Flow) -> None:
        conn, report = flow.conn, flow.report
        assert conn is not None
        while not flow.stopped:
            try:
                message = conn.recv(timeout=UDP_POLL)
            except ReadTimeout:
                continue
            except ConnectionClosed:
                return
            conn.send(message)
            report.packets += 1
            report.bytes += len(message)

    movers = {"rate-send": rate_send, "rate-receive": rate_receive, "rtt": rtt, "echo": echo}
    return movers[role]
