"""Ping over ICMP echo, TCP connect or an opensocket UDP echo server (blocking and asyncio).

The packets, matching and statistics are sans-IO (``tools/_icmp.py``); this module owns the
sockets and the clock. Round-trip times come from the kernel's receive timestamp
(``SO_TIMESTAMPNS``, CLOCK_REALTIME) minus the send time taken just before ``sendto``, so the
Python code between the wire and us does not count, as with iputils. Blocking waits use
``SO_RCVTIMEO`` (one ``recvmsg`` system call per wait, no extra poll); the asyncio driver
waits with ``loop.add_reader`` on the same socket. TCP probes connect without blocking, one
socket per probe, all watched by one epoll object.

ICMP sockets: a raw socket first (root or CAP_NET_RAW), else the unprivileged ICMP datagram
socket (Linux, when ``net.ipv4.ping_group_range`` includes our group), else a ConfigError
saying how to enable either, or to use ``mode="tcp"``/``"udp"``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..errors import AddressError, ConfigError, NameResolutionError, OpenSocketError
from ._icmp import EchoTracker, PingError, PingEvent, PingReply, PingStats, PingTimeout

__all__ = [
    "PingError",
    "PingEvent",
    "PingReply",
    "PingReport",
    "PingTimeout",
    "Pinger",
    "Target",
    "aping",
    "ping",
]

Mode = Literal["icmp", "tcp", "udp"]
SocketKind = Literal["auto", "raw", "dgram"]
# Linux values (not all exported by the socket module)
SO_TIMESTAMPNS = 35
IP_RECVTTL = 12
ICMP_FILTER = 1
SOL_RAW = 255
ICMP6_FILTER = 1
_ANCILLARY = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4)
_TIMESPEC = struct.Struct("@qq")
_RCVTIMEO = struct.Struct("@ll")
_INT = struct.Struct("@i")
_MAX_SIZE = 65507
MIN_INTERVAL = 0.002  # below this, like iputils for users, only a bounded run (count) may go
_FAMILY_NAMES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


@dataclass(frozen=True, slots=True)
class Target:
    """Where probes go: the name asked for, the address it resolved to, and the port."""

    host: str
    address: str
    family: socket.AddressFamily
    port: int = 0

    @property
    def v6(self) -> bool:
        """True for IPv6."""
        return self.family == socket.AF_INET6

    def sockaddr(self, port: int | None = None) -> tuple[Any, ...]:
        """The socket address to send to."""
        port = self.port if port is None else port
        return (self.address, port, 0, 0) if self.v6 else (self.address, port)


def resolve(host: str, family: int = 0, port: int = 0) -> Target:
    """Resolve ``host`` to its first address of ``family`` (0: any, in the system's order).

    Raises AddressError for a literal address of the other family, NameResolutionError for
    a name that does not resolve (or has no address of ``family``).
    """
    _check_literal_family(host, family)
    name, _, port_text = host.rpartition(":")
    bracketed = name.startswith("[") and name.endswith("]")
    if port_text.isdigit() and name and (bracketed or ":" not in name):
        bare = name[1:-1] if bracketed else name
        raise AddressError(
            f"{host!r} has a port: ping a host, and a port with --tcp {port_text} "
            f"or --udp {port_text} (opensocket ping {bare} --tcp {port_text})"
        )
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        if family and _resolves(host):
            want = _FAMILY_NAMES[socket.AddressFamily(family)]
            raise NameResolutionError(f"{host!r} has no {want} address") from exc
        raise NameResolutionError(
            f"cannot resolve {host!r} ({exc.strerror}): check the spelling and your DNS"
        ) from exc
    fam, _, _, _, sockaddr = infos[0]
    return Target(host, str(sockaddr[0]), fam, port)


def _check_literal_family(host: str, family: int) -> None:
    """An IP literal of the other family is a usage error, not a name lookup failure."""
    try:
        version = ipaddress.ip_address(host.split("%", 1)[0]).version
    except ValueError:
        return
    have = socket.AF_INET6 if version == 6 else socket.AF_INET
    if family and family != have:
        raise AddressError(
            f"{host} is an {_FAMILY_NAMES[have]} address and "
            f"{_FAMILY_NAMES[socket.AddressFamily(family)]} was asked for"
        )


def _resolves(host: str) -> bool:
    """Whether ``host`` has an address of any family (to tell "no IPv6" from "no name")."""
    try:
        socket.getaddrinfo(host, None, 0, socket.SOCK_DGRAM)
    except socket.gaierror:
        return False
    return True


def _kernel_time(ancdata: list[tuple[int, int, bytes]]) -> tuple[int | None, int | None]:
    """Receive timestamp (ns) and TTL/hop limit from ancillary data."""
    stamp = ttl = None
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(data)
            stamp = sec * 1_000_000_000 + nsec
        elif len(data) >= 4 and (level, kind) in (
            (socket.IPPROTO_IP, socket.IP_TTL),
            (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT),
        ):
            ttl = _INT.unpack_from(data)[0]
    return stamp, ttl


class _Prober(Protocol):
    def fileno(self) -> int: ...
    def send(self) -> list[PingEvent]: ...
    def wait(self, timeout: float) -> list[PingEvent]: ...
    def forget(self, seqs: list[int]) -> None: ...
    def close(self) -> None: ...


class _DatagramProber:
    """Shared by ICMP and UDP: one socket, kernel timestamps, SO_RCVTIMEO waits."""

    def __init__(self, sock: socket.socket, target: Target, tracker: EchoTracker) -> None:
        self.sock = sock
        self.target = target
        self.tracker = tracker
        self._timeo = -1.0
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _set_timeout(self, timeout: float) -> None:
        timeout = max(timeout, 1e-6)  # 0 would mean "forever"
        if timeout != self._timeo:
            sec = int(timeout)
            usec = max(1, int((timeout - sec) * 1e6)) if sec == 0 else int((timeout - sec) * 1e6)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _RCVTIMEO.pack(sec, usec))
            self._timeo = timeout

    def wait(self, timeout: float) -> list[PingEvent]:
        """Receive for up to ``timeout`` seconds (0: only what is queued); return the events."""
        events: list[PingEvent] = []
        flags: int = socket.MSG_DONTWAIT
        if timeout > 0:
            self._set_timeout(timeout)
            flags = 0
        for _ in range(256):  # bounded drain
            try:
                data, anc, _, addr = self.sock.recvmsg(_MAX_SIZE + 60, _ANCILLARY, flags)
            except (BlockingIOError, TimeoutError, InterruptedError):
                break
            except OSError as exc:
                events += self._receive_error(exc)
                break
            stamp, ttl = _kernel_time(anc)
            event = self.match(data, time.time_ns() if stamp is None else stamp, ttl, addr)
            if event is not None:
                events.append(event)
                flags = socket.MSG_DONTWAIT
        return events

    def match(self, data: bytes, at_ns: int, ttl: int | None, addr: Any) -> PingEvent | None:
        raise NotImplementedError

    def _receive_error(self, exc: OSError) -> list[PingEvent]:
        raise OpenSocketError(f"receiving from {self.target.address}: {exc.strerror}") from exc

    def _send_error(self, seq: int, exc: OSError) -> list[PingEvent]:
        event = self.tracker.fail(seq, exc.strerror or str(exc), time.time_ns())
        return [] if event is None else [event]

    def forget(self, seqs: list[int]) -> None:
        pass

    def close(self) -> None:
        self.sock.close()


class _IcmpProber(_DatagramProber):
    def __init__(self, target: Target, tracker: EchoTracker, kind: SocketKind) -> None:
        sock, raw = _icmp_socket(target, kind)
        super().__init__(sock, target, tracker)
        self.raw = raw
        self._address = target.sockaddr()
        tracker.check_ident = raw  # datagram ICMP sockets set and filter the identifier
        try:
            _filter_icmp(sock, target.v6, raw)
        except BaseException:
            sock.close()
            raise

    def send(self) -> list[PingEvent]:
        seq, packet = self.tracker.icmp_request(time.time_ns())
        address = self._address
        sent = time.time_ns()
        try:
            self.sock.sendto(packet, address)
        except OSError as exc:
            return self._send_error(seq, exc)
        self.tracker.mark_sent(seq, sent)
        return []

    def match(self, data: bytes, at_ns: int, ttl: int | None, addr: Any) -> PingEvent | None:
        ip_header = self.raw and not self.target.v6
        event = self.tracker.receive_icmp(data, at_ns, ip_header=ip_header, address=str(addr[0]))
        if isinstance(event, PingReply) and event.ttl is None and ttl is not None:
            event = PingReply(
                event.seq, event.rtt_us, event.size, ttl, event.duplicate, event.address
            )
        return event


def _icmp_socket(target: Target, kind: SocketKind) -> tuple[socket.socket, bool]:
    proto = socket.IPPROTO_ICMPV6 if target.v6 else socket.IPPROTO_ICMP
    errors: list[OSError] = []
    kinds = {"auto": (True, False), "raw": (True,), "dgram": (False,)}[kind]
    for raw in kinds:
        try:
            sock = socket.socket(
                target.family, socket.SOCK_RAW if raw else socket.SOCK_DGRAM, proto
            )
        except OSError as exc:
            errors.append(exc)
            continue
        return sock, raw
    raise ConfigError(_no_icmp_message(kind, errors))


def _no_icmp_message(kind: SocketKind, errors: list[OSError]) -> str:
    why = "; ".join(sorted({e.strerror or str(e) for e in errors}))
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as handle:
            groups = handle.read().split()
    except OSError:
        groups = []
    dgram = (
        f"unprivileged ICMP sockets are disabled (net.ipv4.ping_group_range is "
        f"'{' '.join(groups)}'; enable them with: sysctl -w "
        "net.ipv4.ping_group_range='0 2147483647')"
        if groups
        else "unprivileged ICMP sockets are not available here"
    )
    raw = "raw ICMP sockets need root or CAP_NET_RAW (sudo setcap cap_net_raw+ep on python)"
    parts = {"auto": f"{raw}, and {dgram}", "raw": raw, "dgram": dgram}[kind]
    return (
        f"cannot open an ICMP socket ({why}): {parts}; or ping without ICMP: "
        "--tcp PORT (time to connect) or --udp PORT (an opensocket UDP echo server)"
    )


def _filter_icmp(sock: socket.socket, v6: bool, raw: bool) -> None:
    """Let only echo replies and errors through a raw socket (not our own looped requests)."""
    if not raw:
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        return
    if v6:
        # ICMP6_FILTER: a 256-bit mask, a set bit blocks the type
        words = [0xFFFFFFFF] * 8
        for kind in (1, 2, 3, 129):
            words[kind >> 5] &= ~(1 << (kind & 31))
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("@8I", *words))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    else:
        passed = (1 << 0) | (1 << 3) | (1 << 11)  # echo reply, unreachable, time exceeded
        sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("@I", ~passed & 0xFFFFFFFF))


class _UdpProber(_DatagramProber):
    def __init__(self, target: Target, tracker: EchoTracker) -> None:
        sock = socket.socket(target.family, socket.SOCK_DGRAM)
        try:
            sock.connect(target.sockaddr())
            super().__init__(sock, target, tracker)
        except BaseException:
            sock.close()
            raise

    def send(self) -> list[PingEvent]:
        seq, datagram = self.tracker.udp_request(time.time_ns())
        sent = time.time_ns()
        try:
            self.sock.send(datagram)
        except OSError as exc:
            return self._send_error(seq, exc)
        self.tracker.mark_sent(seq, sent)
        return []

    def match(self, data: bytes, at_ns: int, ttl: int | None, addr: Any) -> PingEvent | None:
        return self.tracker.receive_udp(data, at_ns, address=str(addr[0]))

    def _receive_error(self, exc: OSError) -> list[PingEvent]:
        # ICMP port unreachable for the newest probe: nothing listens on that port
        if exc.errno == errno.ECONNREFUSED and self.tracker.outstanding:
            seq = self.tracker.outstanding[-1]
            msg = "Destination Port Unreachable (no UDP echo server on that port)"
            event = self.tracker.fail(seq, msg, time.time_ns(), address=self.target.address)
            return [] if event is None else [event]
        return super()._receive_error(exc)


class _TcpProber:
    """One non-blocking connect per probe; an RST (port closed) is an error answer."""

    def __init__(self, target: Target, tracker: EchoTracker) -> None:
        self.target = target
        self.tracker = tracker
        self.poller = select.epoll()
        self.pending: dict[int, tuple[int, socket.socket]] = {}  # fd -> (seq, socket)

    def fileno(self) -> int:
        return self.poller.fileno()

    def send(self) -> list[PingEvent]:
        sock = socket.socket(self.target.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        seq = self.tracker.tcp_request(time.time_ns())
        code = sock.connect_ex(self.target.sockaddr())
        if code in (errno.EINPROGRESS, errno.EAGAIN):
            self.pending[sock.fileno()] = (seq, sock)
            self.poller.register(sock.fileno(), select.EPOLLOUT)
            return []
        return self._finish(seq, sock, code, time.time_ns())

    def _finish(self, seq: int, sock: socket.socket, code: int, at_ns: int) -> list[PingEvent]:
        sock.close()
        event: PingEvent | None
        if code == 0:
            event = self.tracker.answer_tcp(seq, at_ns, address=self.target.address)
        elif code == errno.ECONNREFUSED:
            msg = f"port {self.target.port} closed (RST)"
            event = self.tracker.fail(seq, msg, at_ns, address=self.target.address)
        else:
            event = self.tracker.fail(seq, os.strerror(code), at_ns, address=self.target.address)
        return [] if event is None else [event]

    def wait(self, timeout: float) -> list[PingEvent]:
        events: list[PingEvent] = []
        for fd, _ in self.poller.poll(max(timeout, 0.0)):
            at = time.time_ns()
            seq, sock = self.pending.pop(fd)
            self.poller.unregister(fd)
            events += self._finish(
                seq, sock, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), at
            )
        return events

    def forget(self, seqs: list[int]) -> None:
        for fd, (seq, sock) in list(self.pending.items()):
            if seq in seqs:
                self.poller.unregister(fd)
                sock.close()
                del self.pending[fd]

    def close(self) -> None:
        for _, sock in self.pending.values():
            sock.close()
        self.pending.clear()
        self.poller.close()


@dataclass
class PingReport:
    """The outcome of a ping run: every event and the totals."""

    target: Target
    mode: Mode
    size: int
    events: list[PingEvent] = field(default_factory=list)
    stats: PingStats = field(default_factory=PingStats)
    elapsed_ms: int = 0

    @property
    def ok(self) -> bool:
        """True when at least one reply came back."""
        return self.stats.received > 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "host": self.target.host,
            "address": self.target.address,
            "mode": self.mode,
            "port": self.target.port or None,
            **self.stats.as_dict(),
            "time_ms": self.elapsed_ms,
        }


class Pinger:
    """Sends probes on a schedule and yields what comes back; use as a context manager.

    ``for event in pinger`` blocks; ``async for event in pinger.events()`` runs on asyncio.
    ``report`` holds the totals so far (also after an interruption).
    """

    def __init__(
        self,
        host: str,
        *,
        count: int | None = 4,
        interval: float = 1.0,
        timeout: float = 2.0,
        size: int = 56,
        mode: Mode = "icmp",
        port: int | None = None,
        family: int = 0,
        icmp_socket: SocketKind = "auto",
    ) -> None:
        _check(count, interval, timeout, size, mode, port)
        if mode != "icmp" and icmp_socket != "auto":
            raise ConfigError(f"icmp_socket applies to icmp pings only (got {icmp_socket!r})")
        self.target = resolve(host, family, port or 0)
        self.count = count
        self.interval_ns = int(interval * 1e9)
        self.tracker = EchoTracker(
            ident=int.from_bytes(os.urandom(2), "big"),
            cookie=os.urandom(8),
            size=size,
            v6=self.target.v6,
            timeout_ns=int(timeout * 1e9),
        )
        self.report = PingReport(self.target, mode, size)
        self.prober = self._open(mode, icmp_socket)
        self._started = 0
        self._next_send = 0

    def _open(self, mode: Mode, icmp_socket: SocketKind) -> _Prober:
        if mode == "tcp":
            return _TcpProber(self.target, self.tracker)
        if mode == "udp":
            return _UdpProber(self.target, self.tracker)
        return _IcmpProber(self.target, self.tracker, icmp_socket)

    @property
    def socket_kind(self) -> str:
        """``raw`` or ``dgram`` for ICMP; the mode otherwise."""
        if isinstance(self.prober, _IcmpProber):
            return "raw" if self.prober.raw else "dgram"
        return self.report.mode

    def __enter__(self) -> Pinger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets."""
        self.prober.close()

    def _more(self) -> bool:
        return self.count is None or self.report.stats.transmitted < self.count

    def _record(self, events: list[PingEvent]) -> list[PingEvent]:
        for event in events:
            self.report.stats.add(event)
        self.report.events += events
        self.report.elapsed_ms = (time.time_ns() - self._started + 500_000) // 1_000_000
        return events

    def _step(self) -> tuple[list[PingEvent], float | None]:
        """Send when due and expire old probes; return events and how long to wait (None: done)."""
        now = time.time_ns()
        if not self._started:
            self._started = self._next_send = now
        events: list[PingEvent] = []
        if self._more() and now >= self._next_send:
            self.report.stats.transmitted += 1
            events += self.prober.send()
            self._next_send = max(self._next_send + self.interval_ns, now)
            now = time.time_ns()
        expired = self.tracker.expire(now)
        if expired:
            self.prober.forget([e.seq for e in expired])
            events += expired
        deadlines = [d for d in (self.tracker.next_deadline(),) if d is not None]
        if self._more():
            deadlines.append(self._next_send)
        if not deadlines:
            return self._record(events), None
        return self._record(events), max(0.0, (min(deadlines) - now) / 1e9)

    def __iter__(self) -> Iterator[PingEvent]:
        while True:
            events, wait = self._step()
            yield from events
            if wait is None:
                return
            yield from self._record(self.prober.wait(wait))

    async def events(self) -> AsyncIterator[PingEvent]:
        """The same events, waiting on the asyncio loop instead of blocking."""
        import asyncio

        loop = asyncio.get_running_loop()
        while True:
            events, wait = self._step()
            for event in events:
                yield event
            if wait is None:
                return
            ready = loop.create_future()
            loop.add_reader(self.prober.fileno(), ready.set_result, None)
            try:
                async with asyncio.timeout(wait):
                    await ready
            except TimeoutError:
                pass
            finally:
                loop.remove_reader(self.prober.fileno())
            for event in self._record(self.prober.wait(0)):
                yield event


def _check(
    count: int | None, interval: float, timeout: float, size: int, mode: str, port: int | None
) -> None:
    if count is not None and count < 1:
        raise ConfigError(f"count must be at least 1 (got {count})")
    if interval < 0:
        raise ConfigError(f"interval must be >= 0 seconds (got {interval:g})")
    if interval < MIN_INTERVAL and count is None:
        raise ConfigError(
            f"an interval below {MIN_INTERVAL:g} s needs a count: it would flood without end "
            f"(got {interval:g})"
        )
    if timeout <= 0:
        raise ConfigError(f"timeout must be a positive number of seconds (got {timeout:g})")
    if mode not in ("icmp", "tcp", "udp"):
        raise ConfigError(f"mode must be icmp, tcp or udp (got {mode!r})")
    if mode == "icmp" and port is not None:
        raise ConfigError("a port applies to tcp and udp pings only")
    if mode != "icmp" and not (port and 0 < port < 65536):
        raise ConfigError(f"{mode} pings need a port between 1 and 65535 (got {port})")
    limit = 65507 - 8 if mode == "udp" else 65507
    if not 0 <= size <= limit:
        raise ConfigError(f"size must be between 0 and {limit} bytes (got {size})")


def ping(
    host: str,
    *,
    count: int = 4,
    interval: float = 1.0,
    timeout: float = 2.0,
    size: int = 56,
    mode: Mode = "icmp",
    port: int | None = None,
    family: int = 0,
    icmp_socket: SocketKind = "auto",
) -> PingReport:
    """Ping ``host`` ``count`` times (blocking) and return every event with the totals."""
    with Pinger(
        host,
        count=count,
        interval=interval,
        timeout=timeout,
        size=size,
        mode=mode,
        port=port,
        family=family,
        icmp_socket=icmp_socket,
    ) as pinger:
        for _ in pinger:
            pass
        return pinger.report


async def aping(
    host: str,
    *,
    count: int | None = 4,
    interval: float = 1.0,
    timeout: float = 2.0,
    size: int = 56,
    mode: Mode = "icmp",
    port: int | None = None,
    family: int = 0,
    icmp_socket: SocketKind = "auto",
) -> AsyncIterator[PingEvent]:
    """Ping ``host`` on asyncio, yielding each reply, error and timeout as it happens."""
    with Pinger(
        host,
        count=count,
        interval=interval,
        timeout=timeout,
        size=size,
        mode=mode,
        port=port,
        family=family,
        icmp_socket=icmp_socket,
    ) as pinger:
        async for event in pinger.events():
            yield event
