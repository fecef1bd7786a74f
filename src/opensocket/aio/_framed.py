"""The asyncio runtime of the framed protocol: a BufferedProtocol over the sans-IO core.

Reads go straight into a per-loop scratch buffer (``recv_into`` underneath), whole batches of
messages are decoded per read, and writes are coalesced: ``send`` appends to the core's output
and one flush per loop iteration (or per 64 KiB) hands it to the transport.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, cast

from .._connection import ConnectionBase, snapshot
from .._log import PeerLogger, peer_logger, safe_call
from ..errors import (
    CloseCode,
    ConnectionClosed,
    ConnectionClosedOK,
    OpenSocketError,
    ReadTimeout,
    WriteTimeout,
)
from ..hooks import Hooks
from ..protocol.connection import FramedConnection, Role, State
from ..protocol.decoder import new_scratch
from ..protocol.events import ConnectionTerminated, HandshakeComplete, PongReceived
from ..protocol.frame import Frame
from ..protocol.patterns import EncodedFrames, PatternFrame
from ..stats import ConnectionStats
from ..tls import tls_error

__all__ = ["Connection", "FramedProtocol"]

FLUSH_AT: Final = 64 * 1024
_scratch: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, bytearray] = (
    weakref.WeakKeyDictionary()
)


def loop_scratch(loop: asyncio.AbstractEventLoop) -> bytearray:
    """The receive scratch buffer shared by the connections of one event loop."""
    buf = _scratch.get(loop)
    if buf is None:
        buf = _scratch[loop] = new_scratch()
    return buf


def _all_plain(items: list[Any]) -> bool:
    """True when no item carries metadata (a C-speed check, no per-item Python)."""
    return Frame not in set(map(type, items))


class FramedProtocol(asyncio.BufferedProtocol):
    """Drives a FramedConnection from transport callbacks; owns queues and waiters."""

    # Slots: one of these lives per connection, idle ones included.
    __slots__ = (
        "_abort_later",
        "_drain_waiters",
        "_flush_scheduled",
        "_log",
        "_on_closed",
        "_on_ready",
        "_queued_bytes",
        "_read_paused",
        "_stopped",
        "_timer",
        "_timer_at",
        "_waiters",
        "_write_paused",
        "closed",
        "connection",
        "core",
        "errors",
        "hooks",
        "inbox",
        "loop",
        "lost",
        "on_writable",
        "peer",
        "ready",
        "receiver",
        "transport",
        "write_timeout",
    )

    def __init__(
        self,
        core: FramedConnection,
        *,
        peer: str,
        write_timeout: float | None,
        hooks: Hooks | None = None,
        on_ready: Callable[[FramedProtocol], None] | None = None,
        on_closed: Callable[[FramedProtocol], None] | None = None,
    ) -> None:
        self.core = core
        self.peer = peer
        self._log: PeerLogger | None = None
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.inbox: collections.deque[Any] = collections.deque()
        self.receiver: Callable[[list[Any]], None] | None = None
        self.hooks = hooks or Hooks()
        self.write_timeout = write_timeout
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.connection: Connection | None = None
        self._on_ready = on_ready
        self._on_closed = on_closed
        self._waiters: list[asyncio.Future[None]] = []
        self._stopped = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._write_paused = False
        self._read_paused = False
        self._flush_scheduled = False
        self._queued_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._abort_later: asyncio.TimerHandle | None = None
        self.errors = 0
        # Messaging sockets: told when the transport buffer crosses its marks (flow control).
        self.on_writable: Callable[[bool], None] | None = None

    @property
    def log(self) -> PeerLogger:
        """This connection's logger (made on first use: most connections never log)."""
        log = self._log
        if log is None:
            log = self._log = peer_logger(self.core.role.value, self.peer)
        return log

    # ---- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start: flush the client's HELLO and arm the handshake timer."""
        self.transport = cast(asyncio.Transport, transport)
        self._after_input()

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the loop reads into."""
        return self.core.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        """Decode, deliver, react, flush."""
        core = self.core
        core.buffer_updated(nbytes, self.loop.time())
        messages = core.take_messages()
        if messages:
            self._deliver(messages)
        if core._events or core._out:
            self._after_input()

    def eof_received(self) -> bool:
        """The peer shut its writing side."""
        self.core.receive_eof(self.loop.time())
        self._after_input()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is gone: end the core if it was not over already."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._abort_later is not None:
            self._abort_later.cancel()
            self._abort_later = None
        core = self.core
        if (
            core.state is State.HANDSHAKE
            and core.tls
            and (exc is None or isinstance(exc, ssl.SSLError))
        ):
            # A TLS 1.3 server refuses a client certificate after its TLS handshake: with an
            # alert (tls_error names it), or by closing, which uvloop reports here without
            # eof_received (the core then explains what such a close most likely means).
            if exc is None:
                core.receive_eof(self.loop.time())
            else:
                core.fail(tls_error(exc, self.peer, server_side=core.role is Role.SERVER))
            self._handle_events()
        elif core.state is not State.CLOSED:
            reason = f"connection lost: {exc}" if exc else "connection lost"
            core.fail(ConnectionClosed(CloseCode.ABNORMAL, reason, by_peer=True))
            self._handle_events()
        self._wake_drainers(core.closed_exception())
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        """The transport buffer is over its high-water mark."""
        self._write_paused = True
        if self.on_writable is not None:
            self.on_writable(False)

    def resume_writing(self) -> None:
        """The transport buffer drained."""
        self._write_paused = False
        self._wake_drainers(None)
        if self.on_writable is not None:
            self.on_writable(True)

    # ---- delivery --------------------------------------------------------------------------

    def _deliver(self, messages: list[Any]) -> None:
        receiver = self.receiver
        if receiver is not None:
            try:
                receiver(messages)
            except Exception as exc:
                self.log.exception("message receiver raised; closing")
                self.close(CloseCode.INTERNAL_ERROR, f"receiver error: {exc!r}")
            return
        inbox = self.inbox
        inbox.extend(messages)
        if self._waiters:
            self._wake_readers()
        self._queued_bytes += sum(map(len, messages))
        opts = self.core.options
        if (
            not self._read_paused
            and self.core.state is State.OPEN
            and (
                len(inbox) > opts.max_queued_messages or self._queued_bytes > opts.max_queued_bytes
            )
        ):
            self._read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def taken(self, size: int) -> None:
        """The application took ``size`` bytes of messages from the inbox."""
        self._queued_bytes -= size
        if self._read_paused:
            opts = self.core.options
            if (
                len(self.inbox) <= opts.max_queued_messages // 2
                and self._queued_bytes <= opts.max_queued_bytes // 2
            ):
                self.resume_reading()

    def resume_reading(self) -> None:
        """Read from the transport again (the inbox drained, or a close needs the reply)."""
        if self._read_paused:
            self._read_paused = False
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    async def wait_message(self, timeout: float | None) -> None:
        """Wait until the inbox has something or the connection ended."""
        if self.core.state is State.CLOSED:
            raise self.core.closed_exception()
        if self._stopped:
            raise ConnectionClosedOK(CloseCode.GOING_AWAY, "server shutting down")
        if self.receiver is not None:
            raise OpenSocketError(
                "messages go to the callback given to set_receiver(), so recv() would wait "
                "forever: call set_receiver(None) first"
            )
        # A future per waiting task (several may recv at once), so that one waiter's timeout
        # or cancellation never touches the others; no timeout scope unless one is asked for.
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            if timeout is None:
                await waiter
            else:
                async with asyncio.timeout(timeout):
                    await waiter
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise ReadTimeout(f"no message from {self.peer} within {timeout:g}s") from None
            raise

    def stop_delivering(self) -> None:
        """Server shutdown: a recv() with nothing queued raises 'going away' instead of
        waiting; what is queued is still delivered and sending still works."""
        self._stopped = True
        if self._waiters:
            self._wake_readers()

    def _wake_readers(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ---- output ----------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        """Write the first message of a loop iteration at once (lowest latency); coalesce the
        ones that follow into one write at the end of the iteration, or per 64 KiB."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)
            self._write()
        elif len(self.core._out) >= FLUSH_AT:
            self._write()

    def flush(self) -> None:
        """Hand everything queued in the core to the transport."""
        self._flush_scheduled = False
        self._write()

    def _write(self) -> None:
        data = self.core.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport is over its high-water mark (bounded by write_timeout)."""
        if not self._write_paused:
            return
        if self.core.state is State.CLOSED:
            raise self.core.closed_exception()
        waiter = self.loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            if self.write_timeout is None:
                await waiter
            else:
                async with asyncio.timeout(self.write_timeout):
                    await waiter
        except TimeoutError:
            reason = f"the peer has not read for {self.write_timeout:g}s: dropped as stuck"
            self.log.warning("%s", reason)
            self.abort(WriteTimeout(reason), CloseCode.SLOW_CONSUMER)
            raise WriteTimeout(f"{self.peer}: {reason}") from None

    def _wake_drainers(self, exc: BaseException | None) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)
                    waiter.exception()  # mark retrieved: the sender sees it if still waiting

    # ---- reacting to the core --------------------------------------------------------------

    def _after_input(self) -> None:
        self._handle_events()
        self.flush()
        self._arm_timer()

    def _handle_events(self) -> None:
        for event in self.core.events():
            if isinstance(event, HandshakeComplete):
                self._on_handshake(event)
            elif isinstance(event, PongReceived):
                pass
            elif isinstance(event, ConnectionTerminated):
                self._on_terminated(event)

    def _on_handshake(self, event: HandshakeComplete) -> None:
        self.log.debug("handshake complete: codec %s, peer name %r", event.codec, event.peer_name)
        if not self.ready.done():
            self.ready.set_result(None)
        if self._on_ready is not None:
            self._on_ready(self)

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        if event.error is not None:
            self.errors += 1
        if not self.ready.done():
            self.ready.set_exception(event.error or self.core.closed_exception())
            self.ready.exception()
        level = 10 if event.code in (CloseCode.NORMAL, CloseCode.GOING_AWAY) else 20
        self.log.log(level, "closed: %s (%s)", event.reason or "no reason", event.code)
        self.flush()
        transport = self.transport
        if transport is not None:
            transport.close()
            if transport.get_write_buffer_size():
                # A peer that does not read would keep the socket open forever.
                self._abort_later = self.loop.call_later(
                    self.core.options.close_timeout, transport.abort
                )
        if self._waiters:
            self._wake_readers()
        if not self.closed.done():
            self.closed.set_result(None)
        if self.connection is not None:
            safe_call(self.hooks.on_close, self.connection, event.code, event.reason)
        if self._on_closed is not None:
            self._on_closed(self)

    def _arm_timer(self) -> None:
        when = self.core.get_timer()
        if when is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_at = None
            return
        if self._timer_at is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._fire_timer)

    def _fire_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(self.loop.time())
        self._after_input()

    # ---- actions ---------------------------------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake."""
        self.core.close(self.loop.time(), code, reason)
        self.resume_reading()  # the peer's CLOSE must get through a full inbox
        self._after_input()

    def reject(self, code: int, reason: str) -> None:
        """Refuse a connection still in its handshake: ERROR frame, then close."""
        if self.core.state is State.HANDSHAKE:
            self.core.reject(code, reason)
            self._after_input()
        else:
            self.close(code, reason)

    def abort(self, error: OpenSocketError, code: int = CloseCode.ABNORMAL) -> None:
        """Drop the connection now (stuck peer, fatal local error)."""
        self.core.fail(error, code)
        self._handle_events()
        if self.transport is not None:
            self.transport.abort()

    def stats(self) -> ConnectionStats:
        """A snapshot of the counters."""
        return snapshot(self.core, self.errors)


class Connection(ConnectionBase):
    """A framed, message-oriented connection (asyncio). Use ``opensocket.connect``."""

    def __init__(
        self, proto: FramedProtocol, local: str, remote: str, *, read_timeout: float | None = None
    ) -> None:
        super().__init__(proto, local, remote, read_timeout=read_timeout)
        self._proto = proto
        proto.connection = self

    # ---- sending ---------------------------------------------------------------------------

    async def send(self, message: Any) -> None:
        """Send one message; waits while the peer is slow (backpressure)."""
        encode = self._encode
        self._core.send(self.codec.dumps(message) if encode is not None else message)
        proto = self._proto
        proto.schedule_flush()
        if proto._write_paused:
            await proto.drain()

    def send_nowait(self, message: Any) -> None:
        """Queue one message without waiting; check ``writable`` or call ``drain`` in loops."""
        encode = self._encode
        self._core.send(self.codec.dumps(message) if encode is not None else message)
        self._proto.schedule_flush()

    async def send_many(self, messages: list[Any] | tuple[Any, ...]) -> None:
        """Send several messages in one batch (the fast path for many small messages)."""
        if self._encode is None:
            self._core.send_many(messages)  # all or nothing
        else:
            dumps = self.codec.dumps
            self._core.send_many([dumps(message) for message in messages])
        proto = self._proto
        proto.schedule_flush()
        if proto._write_paused:
            await proto.drain()

    async def drain(self) -> None:
        """Wait until the send buffer is below its high-water mark."""
        self._proto.flush()
        await self._proto.drain()

    def send_encoded(self, payloads: list[bytes] | tuple[bytes, ...]) -> None:
        """Queue payloads already encoded for this connection's codec, as one batch, without
        waiting: for servers that encode an event once and send it to many connections.

        Raises ConnectionClosed once the connection is closing, and like ``send_many`` for a
        payload over the peer's frame size limit (then none is sent). Check ``writable`` or
        ``await drain()`` to respect backpressure.
        """
        self._core.send_many(payloads)
        self._proto.schedule_flush()

    def send_frames(self, frames: list[bytes] | tuple[bytes, ...], *, flush: bool = True) -> None:
        """Queue complete DATA frames, without waiting: the fan-out path of a server that
        frames an event once (``protocol.frame.frame_bytes(FrameType.DATA, payload,
        checksum=conn.checksum)``) and sends it to many connections.

        Each frame must match this link's ``checksum`` setting (the peer rejects one that does
        not). Raises ConnectionClosed once the connection is closing, FrameTooLarge (nothing
        queued) for a payload over the peer's frame size limit. With ``flush=False`` nothing
        is written until ``flush()``: a server touching many connections in one loop
        iteration writes each once, at the end.
        """
        self._core.send_data_frames(frames)
        if flush:
            self._proto.schedule_flush()

    def flush(self) -> None:
        """Hand everything queued to the transport now."""
        self._proto.flush()

    @property
    def is_open(self) -> bool:
        """True while messages can be sent (handshake done, no close started by either side)."""
        return self._core.state is State.OPEN

    @property
    def checksum(self) -> bool:
        """True when DATA frames on this link carry a CRC-32C (agreed in the handshake)."""
        return self._core.checksums

    @property
    def writable(self) -> bool:
        """False while the send buffer is full (a ``send`` would wait)."""
        return not self._proto._write_paused

    def set_write_buffer_limits(self, high: int) -> None:
        """Set the send buffer's high-water mark in bytes (``writable`` is False above it).

        A server that bounds each client's queue itself keeps this small, so that a client
        that stops reading is noticed early.
        """
        transport = self._proto.transport
        if transport is not None:
            transport.set_write_buffer_limits(high=high)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Transport information, as asyncio's ``get_extra_info``: ``"peername"``,
        ``"sockname"``, ``"socket"``, ``"ssl_object"``..."""
        transport = self._proto.transport
        return default if transport is None else transport.get_extra_info(name, default)

    # ---- receiving -------------------------------------------------------------------------

    async def recv(self, timeout: float | None = None) -> Any:
        """Return the next message; raise ConnectionClosed once the connection has ended, and
        ReadTimeout after ``timeout`` seconds (default: the connection's ``read_timeout``)."""
        proto = self._proto
        inbox = proto.inbox
        while not inbox:
            await proto.wait_message(self.read_timeout if timeout is None else timeout)
        item = inbox.popleft()
        proto._queued_bytes -= len(item)
        if proto._read_paused:
            proto.taken(0)
        if self._decode is None and type(item) is bytes:
            return item
        return self._decode_item(item)

    async def recv_batch(
        self, max_messages: int | None = None, timeout: float | None = None
    ) -> list[Any]:
        """Return every queued message (at least one; at most ``max_messages``)."""
        proto = self._proto
        inbox = proto.inbox
        while not inbox:
            await proto.wait_message(self.read_timeout if timeout is None else timeout)
        if max_messages is None or max_messages >= len(inbox):
            items = list(inbox)
            inbox.clear()
        else:
            items = [inbox.popleft() for _ in range(max_messages)]
        proto.taken(sum(map(len, items)))
        if self._decode is None and _all_plain(items):
            return items
        return [self._decode_item(item) for item in items]

    def set_receiver(
        self, callback: Callable[[list[Any]], None] | None, *, raw: bool = False
    ) -> None:
        """Deliver messages by calling ``callback(batch)`` from the event loop as they arrive.

        The fastest way to receive; the callback must not block. Messages already queued are
        delivered at once. Pass None to go back to ``recv``. With ``raw=True`` the callback
        gets each payload as bytes, not decoded: for servers that validate input themselves
        and answer bad input instead of closing (a decoding error closes the connection).
        """
        proto = self._proto
        if callback is None:
            proto.receiver = None
            return
        decode = self._decode

        def deliver(items: list[Any]) -> None:
            if decode is None and _all_plain(items):
                callback(items)
            else:
                callback([self._decode_item(i) for i in items])

        def deliver_raw(items: list[Any]) -> None:
            if _all_plain(items):
                callback(items)
            else:
                callback([i if type(i) is bytes else i.payload for i in items])

        receiver = deliver_raw if raw else deliver
        proto.receiver = receiver
        if proto.inbox:
            queued = list(proto.inbox)
            proto.inbox.clear()
            proto.taken(sum(map(len, queued)))
            receiver(queued)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            try:
                yield await self.recv()
            except ConnectionClosed as exc:
                if exc.code in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
                    return
                raise

    # ---- lifecycle -------------------------------------------------------------------------

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close gracefully: flush what is queued, exchange CLOSE frames, close the socket."""
        proto = self._proto
        proto.flush()
        if self._core.state is State.OPEN:
            proto.close(code, reason)
        await asyncio.shield(proto.closed)
        await asyncio.shield(proto.lost)

    # ---- messaging-pattern links (for opensocket.aio.messaging) ----------------------------

    def set_pattern_receiver(self, callback: Callable[[list[Any]], None]) -> list[Any]:
        """Hand pattern frames to ``callback`` as ``(type, metadata, payload)`` tuples from now
        on; returns what arrived before (Frames or tuples), taken out of the inbox."""
        proto = self._proto
        self._core.deliver_pattern_tuples()
        early = list(proto.inbox)
        proto.inbox.clear()
        proto.receiver = callback
        if early:
            proto.taken(sum(map(len, early)))
        return early

    def set_writable_callback(self, callback: Callable[[bool], None] | None) -> None:
        """Call ``callback(False)`` when the send buffer fills and ``callback(True)`` when it
        drains again."""
        self._proto.on_writable = callback

    def add_lost_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the connection is gone (whoever ended it)."""
        self._proto.lost.add_done_callback(lambda _: callback())

    @property
    def peer_max_frame_size(self) -> int | None:
        """The largest frame the peer accepts (known once the handshake is done)."""
        agreement = self._core.agreement
        return None if agreement is None else agreement.peer_max_frame_size

    def send_pattern_frames(self, frames: Sequence[PatternFrame], *, flush: bool = True) -> None:
        """Queue messaging-pattern frames (``FramedConnection.send_frames``); all or none."""
        self._core.send_frames(frames)
        if flush:
            self._proto.schedule_flush()

    def send_pattern_batch(self, batch: EncodedFrames, *, flush: bool = True) -> None:
        """Queue pattern frames framed once for several links (``encode_frames``)."""
        self._core.send_encoded(batch)
        if flush:
            self._proto.schedule_flush()

    def pause_reading(self, paused: bool) -> None:
        """Stop (True) or resume reading the socket: the layer above's own flow control."""
        proto = self._proto
        if paused:
            transport = proto.transport
            if not proto._read_paused and transport is not None and not transport.is_closing():
                proto._read_paused = True
                transport.pause_reading()
        else:
            proto.resume_reading()

    def close_nowait(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake without waiting: what is queued is sent first, and a
        peer that does not answer is dropped after the close timeout (see ``wait_closed``)."""
        proto = self._proto
        proto.flush()
        if self._core.state is State.OPEN:
            proto.close(code, reason)

    async def wait_closed(self) -> None:
        """Wait until the connection has ended, whoever ended it, and its socket is closed."""
        await asyncio.shield(self._proto.closed)
        await asyncio.shield(self._proto.lost)

    @property
    def stats(self) -> ConnectionStats:
        """Counters: bytes and messages in and out, errors, last heartbeat round trip."""
        return self._proto.stats()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def client_core(
    role: Role, options: Any, *, loop: asyncio.AbstractEventLoop, tls: bool, idle: float | None
) -> FramedConnection:
    """A core bound to this loop's clock and scratch buffer."""
    return FramedConnection(
        role, options, now=loop.time(), tls=tls, idle_timeout=idle, scratch=loop_scratch(loop)
    )
