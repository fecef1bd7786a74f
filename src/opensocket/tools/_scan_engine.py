"""The scan engines: non-blocking connects (TCP) and connected datagram sockets (UDP) driven
by the asyncio loop's add_writer/add_reader callbacks.

Why this shape: the cost of a port is a socket(), a connect() and a close(). On loopback the
kernel runs the whole handshake (SYN, SYN-ACK or RST) inside connect(), so the answer is
usually known before connect() returns: the engine reads SO_ERROR at once and only hands the
sockets still in progress to the event loop. No coroutine, future or transport is made per
port. States are kept in one bytearray per host, indexed like the port list.

Correctness rules (what nmap -sT does, and what a naive scanner gets wrong):
- a socket that connected to itself (loopback simultaneous open: the ephemeral source port
  is the target port) is not an open port: getsockname() == getpeername() means closed;
- a timeout is no proof of "filtered" (a full listen backlog drops SYNs): a port that timed
  out is tried again, up to ``retries`` times, before it is called filtered;
- running out of descriptors or ephemeral ports is not an answer: the port is put back in
  the queue and tried again once sockets are free;
- every socket closes with SO_LINGER 0 (an RST), so no TIME_WAIT eats the ephemeral ports.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import ConfigError

__all__ = ["BANNER_MAX", "STATES", "HostJob", "ScanSettings", "TcpEngine", "UdpEngine"]

# state codes in HostJob.states
UNKNOWN: Final = 0
OPEN: Final = 1
CLOSED: Final = 2
FILTERED: Final = 3
OPEN_FILTERED: Final = 4
STATES: Final = ("unknown", "open", "closed", "filtered", "open|filtered")

BANNER_MAX: Final = 1024
SLICE: Final = 256  # ports per loop iteration: keeps the loop responsive (signals, progress)
_LINGER0: Final = struct.pack("ii", 1, 0)
_REFUSED: Final = errno.ECONNREFUSED
# Not an answer about the port: out of descriptors, buffers or ephemeral ports.
_RESOURCE: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN, errno.EADDRNOTAVAIL}
)
_RESOURCE_PAUSE: Final = 0.02
_STARVED_LIMIT: Final = 10.0  # seconds without a new socket (and no answer) before giving up
_IN_PROGRESS: Final = frozenset({errno.EINPROGRESS, errno.EALREADY})
# ICMP unreachable answers other than port-unreachable: nmap calls these filtered too.
_FILTER_REASONS: Final = {
    errno.EHOSTUNREACH: "host-unreach",
    errno.ENETUNREACH: "net-unreach",
    errno.EACCES: "admin-prohibited",
    errno.EPERM: "admin-prohibited",
    errno.ETIMEDOUT: "no-response",
}


@dataclass(frozen=True, slots=True)
class ScanSettings:
    """The knobs of one engine run (validated by the public ``scan``)."""

    timeout: float
    concurrency: int
    rate: float | None
    retries: int
    banner: bool
    banner_timeout: float
    udp_payloads: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class HostJob:
    """One resolved host and what the scan learned about each of its ports."""

    family: socket.AddressFamily
    address: str
    sockaddr: tuple[Any, ...]
    ports: Sequence[int]
    states: bytearray = field(init=False)
    reasons: dict[int, str] = field(default_factory=dict)  # index -> reason, when unusual
    banners: dict[int, bytes] = field(default_factory=dict)  # index -> first bytes read

    def __post_init__(self) -> None:
        self.states = bytearray(len(self.ports))

    def target(self, index: int) -> tuple[Any, ...]:
        """The socket address of port number ``index`` of this host."""
        return (self.address, self.ports[index], *self.sockaddr[2:])


Progress = Callable[[int, int], None]
# The C socket type: no Python-level wrapper to build and tear down per port.
Sock = _socket.socket


class _Engine:
    """What both engines share: the job queue, limits, retries, completion and progress."""

    def __init__(
        self, hosts: list[HostJob], settings: ScanSettings, progress: Progress | None
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.hosts = hosts
        self.settings = settings
        self.progress = progress
        self.total = sum(len(h.ports) for h in hosts)
        self.done = 0
        self.sent = 0
        self.in_flight = 0
        self.retry: deque[tuple[HostJob, int]] = deque()
        self.attempts: dict[tuple[int, int], int] = {}  # (host id, index) -> timeouts so far
        self._starved_since: float | None = None
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self._source = ((h, i) for h in hosts for i in range(len(h.ports)))
        self._exhausted = False
        self._scheduled = False
        self._paused = False
        self._started = 0.0

    async def run(self) -> None:
        """Scan every port of every host; return when each has a state."""
        self._started = time.monotonic()
        self._schedule()
        try:
            await self.finished
        finally:
            self.close_all()
            if self.progress is not None:
                self.progress(self.done, self.total)

    def close_all(self) -> None:
        """Close whatever is still open (cancellation)."""

    def _schedule(self, delay: float = 0.0) -> None:
        if self._scheduled or self.finished.done():
            return
        self._scheduled = True
        if delay > 0:
            self.loop.call_later(delay, self._pump)
        else:
            self.loop.call_soon(self._pump)

    def _next(self) -> tuple[HostJob, int] | None:
        if self.retry:
            return self.retry.popleft()
        if self._exhausted:
            return None
        job = next(self._source, None)
        if job is None:
            self._exhausted = True
        return job

    def _budget(self) -> int:
        """How many probes may start now (rate and concurrency), and when to come back."""
        room = self.settings.concurrency - self.in_flight
        rate = self.settings.rate
        if rate is not None:
            elapsed = time.monotonic() - self._started
            room = min(room, int(elapsed * rate) + 1 - self.sent)
        return min(room, SLICE)

    def _pump(self) -> None:
        self._scheduled = False
        if self.finished.done():
            return
        self._paused = False
        try:
            budget = self._budget()
            while budget > 0 and not self._paused:
                job = self._next()
                if job is None:
                    break
                budget -= 1
                self.sent += 1
                self.probe(*job)
        except Exception as exc:
            self.fail(exc)
            return
        if self.progress is not None:
            self.progress(self.done, self.total)
        self._continue()

    def _continue(self) -> None:
        more = bool(self.retry) or not self._exhausted
        if self._paused:
            return  # the pause timer pumps again
        if more and self.in_flight < self.settings.concurrency:
            rate = self.settings.rate
            wait = 0.0
            if rate is not None:
                wait = max(self._started + self.sent / rate - time.monotonic(), 0.0)
            self._schedule(wait)
        elif not more and self.in_flight == 0:
            self.finished.set_result(None)

    def fail(self, exc: Exception) -> None:
        """End the scan with ``exc`` (raised by ``run``), closing every socket."""
        self.close_all()
        if not self.finished.done():
            self.finished.set_exception(exc)

    def safely(self, callback: Callable[[int], None], fd: int) -> None:
        """Run a loop callback; an error in it ends the scan instead of being only logged."""
        try:
            callback(fd)
        except Exception as exc:
            self.fail(exc)

    def settle(self, host: HostJob, index: int, state: int, reason: str = "") -> None:
        """Record a final state for a port."""
        host.states[index] = state
        if reason:
            host.reasons[index] = reason
        self.done += 1
        self._starved_since = None

    def wake(self) -> None:
        """A probe in flight ended: start the next ones, or finish."""
        self._schedule()

    def timed_out(self, host: HostJob, index: int, final_state: int) -> None:
        """No answer: try again (a dropped SYN is not a filter) or give up after retries."""
        key = (id(host), index)
        tries = self.attempts.get(key, 0) + 1
        if tries <= self.settings.retries:
            self.attempts[key] = tries
            self.retry.append((host, index))
        else:
            self.settle(host, index, final_state, "no-response")

    def resource_error(self, host: HostJob, index: int, err: int | None) -> None:
        """Out of sockets (not an answer): put the port back and pause a moment."""
        if err not in _RESOURCE:
            raise OSError(err, "cannot create a socket")
        self.sent -= 1
        now = time.monotonic()
        if self._starved_since is None:
            self._starved_since = now
        elif now - self._starved_since > _STARVED_LIMIT:
            name = errno.errorcode.get(err or 0, str(err))
            raise ConfigError(
                f"the system keeps refusing new sockets ({name}): "
                "lower --concurrency or raise the open-files limit (ulimit -n)"
            )
        self.retry.appendleft((host, index))
        if not self._paused:
            self._paused = True
            self.loop.call_later(_RESOURCE_PAUSE, self.wake)

    def probe(self, host: HostJob, index: int) -> None:
        """Start one probe (engine-specific)."""
        raise NotImplementedError


class TcpEngine(_Engine):
    """TCP connect scan."""

    def __init__(
        self, hosts: list[HostJob], settings: ScanSettings, progress: Progress | None
    ) -> None:
        super().__init__(hosts, settings, progress)
        # fd -> (socket, host, index, timer, reading a banner)
        self.pending: dict[int, tuple[Sock, HostJob, int, asyncio.TimerHandle, bool]] = {}

    def probe(self, host: HostJob, index: int) -> None:
        """Connect; decide at once when the kernel already has the answer."""
        try:
            sock = Sock(host.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            self.resource_error(host, index, exc.errno)
            return
        err = sock.connect_ex(host.target(index))
        if err in _IN_PROGRESS:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0 and not _connected(sock):
                self._wait(sock, host, index)
                return
        self._answer(sock, host, index, err)

    def _answer(self, sock: Sock, host: HostJob, index: int, err: int) -> None:
        if err == 0:
            # closed with an RST: no TIME_WAIT (refused and unanswered sockets leave none)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            if sock.getsockname() == sock.getpeername():
                self.settle(host, index, CLOSED, "self-connect")
            elif self.settings.banner:
                self._read_banner(sock, host, index)
                return
            else:
                self.settle(host, index, OPEN)
        elif err == _REFUSED:
            self.settle(host, index, CLOSED)
        elif err in _RESOURCE:
            sock.close()
            self.resource_error(host, index, err)
            return
        else:
            self.settle(
                host, index, FILTERED, _FILTER_REASONS.get(err, errno.errorcode.get(err, ""))
            )
        sock.close()

    def _wait(self, sock: Sock, host: HostJob, index: int) -> None:
        fd = sock.fileno()
        timer = self.loop.call_later(self.settings.timeout, self.safely, self._expire, fd)
        self.pending[fd] = (sock, host, index, timer, False)
        self.in_flight += 1
        self.loop.add_writer(fd, self.safely, self._writable, fd)

    def _writable(self, fd: int) -> None:
        sock, host, index, timer, _ = self.pending.pop(fd)
        self.loop.remove_writer(fd)
        timer.cancel()
        self.in_flight -= 1
        self._answer(sock, host, index, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
        self.wake()

    def _expire(self, fd: int) -> None:
        sock, host, index, _, reading = self.pending.pop(fd)
        if reading:
            self.loop.remove_reader(fd)
            self.settle(host, index, OPEN)
        else:
            self.loop.remove_writer(fd)
            self.timed_out(host, index, FILTERED)
        sock.close()
        self.in_flight -= 1
        self.wake()

    def _read_banner(self, sock: Sock, host: HostJob, index: int) -> None:
        fd = sock.fileno()
        timer = self.loop.call_later(self.settings.banner_timeout, self.safely, self._expire, fd)
        self.pending[fd] = (sock, host, index, timer, True)
        self.in_flight += 1
        self.loop.add_reader(fd, self.safely, self._readable, fd)

    def _readable(self, fd: int) -> None:
        sock, host, index, timer, _ = self.pending.pop(fd)
        self.loop.remove_reader(fd)
        timer.cancel()
        try:
            data = sock.recv(BANNER_MAX)
        except OSError:
            data = b""
        if data:
            host.banners[index] = data
        self.settle(host, index, OPEN)
        sock.close()
        self.in_flight -= 1
        self.wake()

    def close_all(self) -> None:
        """Close every socket still waiting (the scan was cancelled or failed)."""
        for fd, (sock, _, _, timer, reading) in list(self.pending.items()):
            timer.cancel()
            (self.loop.remove_reader if reading else self.loop.remove_writer)(fd)
            sock.close()
        self.pending.clear()


def _connected(sock: Sock) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


class UdpEngine(_Engine):
    """UDP scan: a connected datagram socket per port; ICMP port unreachable -> closed.

    The kernel reports an ICMP port unreachable for a connected UDP socket as ECONNREFUSED on
    the next receive; no raw socket (and no root) is needed. An answer means open; silence
    after every retry means open|filtered, as in nmap.
    """

    def __init__(
        self, hosts: list[HostJob], settings: ScanSettings, progress: Progress | None
    ) -> None:
        super().__init__(hosts, settings, progress)
        self.pending: dict[int, tuple[Sock, HostJob, int, asyncio.TimerHandle]] = {}

    def probe(self, host: HostJob, index: int) -> None:
        """Send one datagram; read the answer (or the ICMP error) at once when there is one."""
        try:
            sock = Sock(host.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            self.resource_error(host, index, exc.errno)
            return
        port = host.ports[index]
        try:
            sock.connect(host.target(index))
            sock.send(self.settings.udp_payloads.get(port, b""))
        except OSError as exc:
            if exc.errno in _RESOURCE:
                sock.close()
                self.resource_error(host, index, exc.errno)
            else:
                self._error(sock, host, index, exc)
            return
        if not self._receive(sock, host, index):
            self._wait(sock, host, index)

    def _receive(self, sock: Sock, host: HostJob, index: int) -> bool:
        """Read an answer if one is there; True when the port has a state."""
        try:
            data = sock.recv(BANNER_MAX)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._error(sock, host, index, exc)
            return True
        if sock.getsockname() == sock.getpeername():
            # our own datagram: the kernel gave us the target port, so nothing else holds it
            self.settle(host, index, CLOSED, "self-connect")
        else:
            if data:
                host.banners[index] = data
            self.settle(host, index, OPEN, "udp-response")
        sock.close()
        return True

    def _error(self, sock: Sock, host: HostJob, index: int, exc: OSError) -> None:
        sock.close()
        if exc.errno == _REFUSED:
            self.settle(host, index, CLOSED, "port-unreach")
        else:
            reason = _FILTER_REASONS.get(exc.errno or 0, errno.errorcode.get(exc.errno or 0, ""))
            self.settle(host, index, FILTERED, reason)

    def _wait(self, sock: Sock, host: HostJob, index: int) -> None:
        fd = sock.fileno()
        timer = self.loop.call_later(self.settings.timeout, self.safely, self._expire, fd)
        self.pending[fd] = (sock, host, index, timer)
        self.in_flight += 1
        self.loop.add_reader(fd, self.safely, self._readable, fd)

    def _readable(self, fd: int) -> None:
        sock, host, index, timer = self.pending.pop(fd)
        self.loop.remove_reader(fd)
        timer.cancel()
        self.in_flight -= 1
        if not self._receive(sock, host, index):  # a spurious wake-up: keep waiting
            self._wait(sock, host, index)
            return
        self.wake()

    def _expire(self, fd: int) -> None:
        sock, host, index, _ = self.pending.pop(fd)
        self.loop.remove_reader(fd)
        sock.close()
        self.in_flight -= 1
        self.timed_out(host, index, OPEN_FILTERED)
        self.wake()

    def close_all(self) -> None:
        """Close every socket still waiting."""
        for fd, (sock, _, _, timer) in list(self.pending.items()):
            timer.cancel()
            self.loop.remove_reader(fd)
            sock.close()
        self.pending.clear()
