"""The asyncio runtime of the stream proxy (TCP and Unix sockets): thin, over ``StreamPipe``.

Each accepted client gets a ``StreamSession``: the client socket, a socket to the upstream,
and one pipe per direction. Bytes read from one side go into that direction's pipe; whatever
the pipe releases is written to the other side, and a timer wakes the pipe at its
``next_time``. Reading pauses while the other side's write buffer is full or the pipe holds
too much (a stall keeps data, so the sender is slowed down by TCP flow control, never lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any, Final, cast

from ..address import Address
from ..aio._connect import open_socket
from ..errors import OpenSocketError
from ..options import SocketOptions
from .faults import DIRECTIONS, Direction, FaultSet, StreamPipe
from .inspect import ConnectionInspector, FrameRecord

__all__ = ["StreamSession", "connect_upstream"]

HELD_HIGH: Final = 1 << 20  # pause the source while a pipe holds this much
HELD_LOW: Final = 256 * 1024
DRAIN_STEP: Final = 0.001
DRAIN_STEPS: Final = 2000  # wait at most ~2 s for written bytes to reach the peer before RST
_LINGER_RST: Final = struct.pack("ii", 1, 0)


def _other(direction: Direction) -> Direction:
    return "down" if direction == "up" else "up"


class _Side(asyncio.Protocol):
    """One socket of a session; ``direction`` is the direction of the bytes it reads."""

    def __init__(self, session: StreamSession, direction: Direction) -> None:
        self.session = session
        self.direction: Direction = direction
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.session.received(self.direction, data)

    def eof_received(self) -> bool:
        self.session.eof(self.direction)
        return True  # keep the other half open: the proxy passes half-closes on

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.lost(self, exc)

    def pause_writing(self) -> None:
        self.session.sink_full(_other(self.direction), True)

    def resume_writing(self) -> None:
        self.session.sink_full(_other(self.direction), False)


class StreamSession:
    """One proxied stream connection: two sockets, two pipes, their timers."""

    def __init__(
        self,
        conn_id: int,
        faults: FaultSet,
        loop: asyncio.AbstractEventLoop,
        *,
        on_done: Callable[[StreamSession], None],
        inspect: Callable[[FrameRecord], None] | None = None,
        origin: float = 0.0,
    ) -> None:
        self.id = conn_id
        self.faults = faults
        self.loop = loop
        now = loop.time()
        self.pipes = {d: StreamPipe(faults, d, now) for d in DIRECTIONS}
        self.client = _Side(self, "up")
        self.upstream = _Side(self, "down")
        self.inspector = ConnectionInspector(conn_id, inspect, origin) if inspect else None
        self._on_done = on_done
        self._timers: dict[Direction, asyncio.TimerHandle | None] = {"up": None, "down": None}
        # uvloop's timer handles have no when(): remember the deadline of each armed timer
        self._deadlines: dict[Direction, float | None] = {"up": None, "down": None}
        self._full: dict[Direction, bool] = {"up": False, "down": False}
        self._heavy: dict[Direction, bool] = {"up": False, "down": False}
        self._eof_sent: set[Direction] = set()
        self.ending = False
        self.start_task: asyncio.Task[None] | None = None
        self._end_task: asyncio.Task[None] | None = None

    def _source(self, direction: Direction) -> _Side:
        return self.client if direction == "up" else self.upstream

    def _sink(self, direction: Direction) -> _Side:
        return self.upstream if direction == "up" else self.client

    def received(self, direction: Direction, data: bytes) -> None:
        """Bytes read from the source of ``direction``."""
        pipe = self.pipes[direction]
        pipe.receive(data, self.loop.time())
        self.pump(direction)
        if pipe.held >= HELD_HIGH and not self._heavy[direction]:
            self._heavy[direction] = True
            self._flow(direction)

    def eof(self, direction: Direction) -> None:
        """The source of ``direction`` half-closed."""
        self.pipes[direction].receive_eof(self.loop.time())
        self.pump(direction)

    def sink_full(self, direction: Direction, full: bool) -> None:
        """The sink of ``direction`` filled its write buffer (or drained it)."""
        self._full[direction] = full
        self._flow(direction)

    def _flow(self, direction: Direction) -> None:
        transport = self._source(direction).transport
        if transport is None or transport.is_closing():
            return
        if self._full[direction] or self._heavy[direction]:
            transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    def pump_all(self) -> None:
        """Re-run both pipes (after the faults changed)."""
        for direction in DIRECTIONS:
            self.pump(direction)

    def pump(self, direction: Direction) -> None:
        """Forward what the pipe releases now; act on its end; schedule its next wake-up."""
        sink = self._sink(direction).transport
        if self.ending or sink is None or sink.is_closing():
            return
        now = self.loop.time()
        pipe = self.pipes[direction]
        chunks = pipe.poll(now)
        if chunks:
            sink.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])
            if self.inspector is not None:
                for chunk in chunks:
                    self.inspector.feed(direction, chunk, now)
        if self._heavy[direction] and pipe.held <= HELD_LOW:
            self._heavy[direction] = False
            self._flow(direction)
        if pipe.action is not None:
            self._act(direction, pipe.action)
        self._schedule(direction, pipe.next_time(now))

    def _schedule(self, direction: Direction, when: float | None) -> None:
        timer = self._timers[direction]
        if timer is not None:
            if when is not None and self._deadlines[direction] == when:
                return
            timer.cancel()
        if when is None or self.ending:
            self._timers[direction] = self._deadlines[direction] = None
        else:
            self._timers[direction] = self.loop.call_at(when, self._fire, direction)
            self._deadlines[direction] = when

    def _fire(self, direction: Direction) -> None:
        # A fired timer is not armed any more, even when the pipe asks for the same deadline
        # again (uvloop may fire up to a millisecond early, before anything is due).
        self._timers[direction] = self._deadlines[direction] = None
        self.pump(direction)

    def _act(self, direction: Direction, action: str) -> None:
        if action == "eof":
            self._pass_eof(direction)
        elif action in ("reset", "close"):
            stats = self.faults.stats
            if action == "reset":
                stats.resets += 1
            else:
                stats.closes += 1
            self.end(reset=action == "reset", flush=direction)

    def _pass_eof(self, direction: Direction) -> None:
        if direction in self._eof_sent:
            return
        self._eof_sent.add(direction)
        sink = self._sink(direction).transport
        if sink is not None and sink.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                sink.write_eof()
        else:
            self.end(reset=False)
            return
        if len(self._eof_sent) == 2:
            self.end(reset=False)

    def lost(self, side: _Side, exc: Exception | None) -> None:
        """One socket closed: a reset (or error) is passed on as a reset, a close as a close."""
        if self.ending:
            return
        if exc is None:
            self.end(reset=False, flush=_other(side.direction))
        else:
            self.end(reset=True)

    def end(self, *, reset: bool, flush: Direction | None = None) -> None:
        """End the session: close both sockets (RST with ``reset``) after flushing ``flush``."""
        if self.ending:
            return
        self.ending = True
        for timer in self._timers.values():
            if timer is not None:
                timer.cancel()
        self._end_task = self.loop.create_task(self._finish(reset, flush))

    async def _finish(self, reset: bool, flush: Direction | None) -> None:
        if flush is not None and reset:
            await _delivered(self._sink(flush).transport)
        for side in (self.client, self.upstream):
            transport = side.transport
            if transport is None or transport.is_closing():
                continue
            if reset:
                _abort_with_rst(transport)
            else:
                transport.close()
        self._on_done(self)

    def abort(self) -> None:
        """Close both sockets at once (the proxy is shutting down)."""
        self.ending = True
        for timer in self._timers.values():
            if timer is not None:
                timer.cancel()
        for task in (self.start_task, self._end_task):
            if task is not None:
                task.cancel()
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.abort()


def _unsent(transport: asyncio.Transport) -> int:
    """Bytes written but not yet taken by the peer (asyncio's buffer and the kernel's)."""
    pending = transport.get_write_buffer_size()
    sock: Any = transport.get_extra_info("socket")
    if sock is None or sock.family == socket.AF_UNIX:
        return pending  # a Unix peer keeps what it was sent, reset or not
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return pending
    return pending + int(struct.unpack("i", raw)[0])


async def _delivered(transport: asyncio.Transport | None) -> None:
    """Wait (bounded) until the bytes written to ``transport`` have reached its peer.

    An RST throws away what the kernel has not delivered yet; "reset after N bytes" means
    the peer gets exactly N. There is no event for the kernel queue draining, so poll it.
    """
    if transport is None:
        return
    for _ in range(DRAIN_STEPS):
        if transport.is_closing() or not _unsent(transport):
            return
        await asyncio.sleep(DRAIN_STEP)


def _abort_with_rst(transport: asyncio.Transport) -> None:
    sock: Any = transport.get_extra_info("socket")
    if sock is not None and sock.family != socket.AF_UNIX:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()


async def connect_upstream(
    session: StreamSession, addr: Address, options: SocketOptions
) -> asyncio.Transport:
    """Connect the session's upstream socket (raises a ConnectError subclass)."""
    sock = await open_socket(addr, options)
    try:
        transport, _ = await session.loop.create_connection(lambda: session.upstream, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport


class StreamListener(asyncio.Protocol):
    """The client side of a new session (asyncio makes one per accepted socket)."""

    def __init__(self, start: Callable[[asyncio.Transport], _Side]) -> None:
        self._start = start
        self._side: _Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)
        stream.pause_reading()  # until the upstream is connected
        self._side = self._start(stream)
        self._side.connection_made(stream)

    def data_received(self, data: bytes) -> None:
        assert self._side is not None
        self._side.data_received(data)

    def eof_received(self) -> bool:
        assert self._side is not None
        return self._side.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._side is not None:
            self._side.connection_lost(exc)

    def pause_writing(self) -> None:
        assert self._side is not None
        self._side.pause_writing()

    def resume_writing(self) -> None:
        assert self._side is not None
        self._side.resume_writing()


async def start_session(
    session: StreamSession,
    addr: Address,
    options: SocketOptions,
    on_fail: Callable[[BaseException], None],
) -> None:
    """Connect the upstream, then let the client's bytes flow (reset the client on failure)."""
    try:
        upstream = await connect_upstream(session, addr, options)
    except (OpenSocketError, OSError) as exc:
        on_fail(exc)
        session.end(reset=True)
        return
    if session.ending:  # the client left while we were connecting
        upstream.abort()
        return
    session.pump_all()
    client = session.client.transport
    if client is not None and not client.is_closing():
        session._flow("up")
