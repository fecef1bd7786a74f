"""The asyncio runtime of the UDP proxy: thin, over ``DatagramPipe``.

The proxy listens on one UDP socket. Each client address gets a ``DatagramSession``: its own
socket connected to the upstream (so replies find their way back to that client) and one pipe
per direction. Sessions idle for ``IDLE`` seconds are forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any, Final, cast

from .._sockets import connect_datagram, literal_info
from ..address import Address
from ..errors import ConnectError
from ..options import SocketOptions
from .faults import DIRECTIONS, DatagramPipe, Direction, FaultSet

__all__ = ["DatagramSession", "Listener", "resolve_upstream"]

IDLE: Final = 60.0
MAX_SESSIONS: Final = 4096
BUFFER: Final = 4 * 1024 * 1024  # a burst of datagrams waits here, not on the floor


def widen_buffers(sock: socket.socket) -> None:
    """Ask for large socket buffers (the kernel caps them at net.core.[rw]mem_max)."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, BUFFER)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, session: DatagramSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.session.received("down", data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from the upstream: UDP has no connection to fail


class DatagramSession:
    """One client of the UDP proxy: its upstream socket and two pipes."""

    def __init__(
        self,
        conn_id: int,
        client: Any,
        faults: FaultSet,
        listener: asyncio.DatagramTransport,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.id = conn_id
        self.client = client
        self.loop = loop
        self.listener = listener
        self.upstream: asyncio.DatagramTransport | None = None
        now = loop.time()
        self.last = now
        self.pipes = {d: DatagramPipe(faults, d, now) for d in DIRECTIONS}
        self._timers: dict[Direction, asyncio.TimerHandle | None] = {"up": None, "down": None}

    async def open(self, sock: socket.socket) -> None:
        """Wrap the connected upstream socket."""
        transport, _ = await self.loop.create_datagram_endpoint(lambda: _Upstream(self), sock=sock)
        self.upstream = transport

    def received(self, direction: Direction, data: bytes) -> None:
        """A datagram from the source of ``direction``."""
        self.last = self.loop.time()
        self.pipes[direction].receive(data, self.last)
        self.pump(direction)

    def pump_all(self) -> None:
        """Re-run both pipes (after the faults changed)."""
        for direction in DIRECTIONS:
            self.pump(direction)

    def pump(self, direction: Direction) -> None:
        """Send what the pipe releases now and schedule its next wake-up."""
        if direction == "up" and self.upstream is None:
            return  # still opening: the datagrams wait in the pipe
        now = self.loop.time()
        pipe = self.pipes[direction]
        out = pipe.poll(now)
        if self.upstream is not None and direction == "up":
            for data in out:
                self.upstream.sendto(data)
        else:
            for data in out:
                self.listener.sendto(data, self.client)
        when = pipe.next_time(now)
        timer = self._timers[direction]
        if timer is not None:
            timer.cancel()
        self._timers[direction] = (
            None if when is None else self.loop.call_at(when, self.pump, direction)
        )

    def close(self) -> None:
        """Forget this client: cancel timers, close its upstream socket."""
        for timer in self._timers.values():
            if timer is not None:
                timer.cancel()
        if self.upstream is not None:
            self.upstream.close()


class Listener(asyncio.DatagramProtocol):
    """The proxy's listening socket: routes each client's datagrams to its session."""

    def __init__(
        self,
        faults: FaultSet,
        new_socket: Callable[[], socket.socket],
        next_id: Callable[[], int],
    ) -> None:
        self.faults = faults
        self.sessions: dict[Any, DatagramSession] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self._new_socket = new_socket
        self._next_id = next_id
        self._opening: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        session = self.sessions.get(addr)
        if session is None:
            session = self._open(addr)
            if session is None:
                return
        session.received("up", data)

    def error_received(self, exc: Exception) -> None:
        pass  # a client went away (ICMP unreachable): its session idles out

    def _open(self, addr: Any) -> DatagramSession | None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._expire(loop.time())
        if len(self.sessions) >= MAX_SESSIONS:
            return None
        try:
            sock = self._new_socket()
        except (ConnectError, OSError):
            self.faults.stats.upstream_failures += 1
            return None
        session = DatagramSession(self._next_id(), addr, self.faults, self.transport, loop)
        self.sessions[addr] = session
        self.faults.stats.connections += 1
        self.faults.stats.active = len(self.sessions)
        task = loop.create_task(self._wrap(session, sock))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)
        return session

    async def _wrap(self, session: DatagramSession, sock: socket.socket) -> None:
        try:
            await session.open(sock)
        except OSError:
            sock.close()
            return
        session.pump("up")  # datagrams that arrived while the socket was being wrapped

    def _expire(self, now: float) -> None:
        for addr, session in list(self.sessions.items()):
            if now - session.last > IDLE and not any(p.held for p in session.pipes.values()):
                session.close()
                del self.sessions[addr]
        self.faults.stats.active = len(self.sessions)

    def pump_all(self) -> None:
        """Re-run every session's pipes."""
        for session in self.sessions.values():
            session.pump_all()

    def close(self) -> None:
        """Close the listening socket and every session."""
        for task in self._opening:
            task.cancel()
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()
        self.faults.stats.active = 0
        if self.transport is not None:
            self.transport.close()


async def resolve_upstream(addr: Address) -> list[Any]:
    """Address infos of the UDP upstream (resolved once, when the proxy starts)."""
    info = literal_info(addr, socket.SOCK_DGRAM)
    if info is not None:
        return [info]
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_DGRAM)
    return list(infos)


def upstream_socket(addr: Address, infos: list[Any]) -> Callable[[], socket.socket]:
    """A factory of sockets connected to the upstream, one per client."""

    def new() -> socket.socket:
        sock = connect_datagram(addr, infos, SocketOptions())
        widen_buffers(sock)
        return sock

    return new
