"""The blocking runtime of the framed protocol: a reader thread per connection over the core.

The reader thread owns the receive side: it reads with ``recv_into`` straight into the core's
buffer, queues decoded payloads in a bounded inbox (when full it stops reading, so TCP pushes
back on the sender; nothing is dropped) and drives the core's timers by bounding each wait with
``get_timer()``. Writes from any thread go out under one lock. The core is only touched under
its own lock, and ``time.monotonic()`` is its clock.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .._connection import ConnectionBase, snapshot
from .._log import peer_logger, safe_call
from ..errors import (
    CloseCode,
    ConnectionClosed,
    ConnectionClosedOK,
    OpenSocketError,
    OperationTimeout,
    PeerDisconnected,
    ReadTimeout,
    WriteTimeout,
)
from ..hooks import Hooks
from ..protocol.connection import FramedConnection, State
from ..protocol.events import ConnectionTerminated, HandshakeComplete, PongReceived
from ..protocol.frame import Frame
from ..protocol.patterns import PatternFrame
from ..stats import ConnectionStats
from ._transport import Transport

__all__ = ["Connection", "FramedLink"]

FINAL_FLUSH_TIMEOUT = 5.0


class FramedLink:
    """Drives a FramedConnection over a Transport from a reader thread; owns inbox and locks."""

    def __init__(
        self,
        core: FramedConnection,
        transport: Transport,
        *,
        peer: str,
        write_timeout: float | None,
        hooks: Hooks | None = None,
        on_ready: Callable[[FramedLink], None] | None = None,
        on_closed: Callable[[FramedLink], None] | None = None,
    ) -> None:
        self.core = core
        self.transport = transport
        self.peer = peer
        self.log = peer_logger(core.role.value, peer)
        self.hooks = hooks or Hooks()
        self.write_timeout = write_timeout
        self.connection: Connection | None = None
        self.errors = 0
        self.inbox: collections.deque[bytes | Frame] = collections.deque()
        self.ready = threading.Event()
        self.opened = False
        self.closed = threading.Event()
        self.thread: threading.Thread | None = None
        self._on_ready = on_ready
        self._on_closed = on_closed
        self._core_lock = threading.Lock()
        self._write_lock = threading.Lock()
        queue_lock = threading.Lock()
        self._has_items = threading.Condition(queue_lock)
        self._has_space = threading.Condition(queue_lock)
        self._receiver: Callable[[list[bytes | Frame]], None] | None = None
        self._pong = threading.Condition(threading.Lock())
        self._pings: dict[float, float | None] = {}  # stamps of awaited pings -> round trip
        self._queued_bytes = 0
        self._paused = False
        self._ended = False
        self._stopped = False

    # ---- the reader thread -----------------------------------------------------------------

    def start(self) -> None:
        """Run the reader in a new daemon thread."""
        self.thread = threading.Thread(
            target=self.run, name=f"opensocket-reader {self.peer}", daemon=True
        )
        self.thread.start()

    def run(self) -> None:
        """The reader loop; returns once the connection has ended and the socket is closed."""
        self.thread = self.thread or threading.current_thread()
        try:
            try:
                self._flush(block=True)
            except OpenSocketError:
                pass  # reset before our first write: the core has failed and the loop ends
            self._loop()
        except Exception as exc:  # a bug here must not leave the peer hanging
            self.log.exception("reader failed")
            self.abort(OpenSocketError(f"internal error: {exc!r}"), CloseCode.INTERNAL_ERROR)
        finally:
            self._finish()

    def _loop(self) -> None:
        core = self.core
        while core.state is not State.CLOSED:
            with self._core_lock:
                timer = core.get_timer()
            timeout = None if timer is None else max(timer - time.monotonic(), 0.0)
            if self._paused and core.state is State.OPEN:
                readable = self._wait_space(timeout)
            else:
                readable = self.transport.wait_readable(timeout)
            now = time.monotonic()
            if readable:
                self._read(now)
            elif timer is not None and now >= timer:
                with self._core_lock:
                    core.handle_timer(now)
            self._after_input()

    def _wait_space(self, timeout: float | None) -> bool:
        """While the inbox is full: wait for room (or the next timer); True to read again."""
        with self._has_space:
            if self._paused and not self._ended:
                self._has_space.wait(timeout)
            return not self._paused

    def _read(self, now: float) -> None:
        core = self.core
        buf = core.get_buffer()
        try:
            count = self.transport.recv_into(buf)
        except OSError as exc:
            self._lost(exc)
            return
        finally:
            buf.release()
        if count is None:
            return
        with self._core_lock:
            if count:
                core.buffer_updated(count, now)
            else:
                core.receive_eof(now)
            messages = core.take_messages()
        if messages:
            self._deliver(messages)

    def _after_input(self) -> None:
        with self._core_lock:
            events = self.core.events()
        for event in events:
            if isinstance(event, HandshakeComplete):
                self.log.debug(
                    "handshake complete: codec %s, peer %r", event.codec, event.peer_name
                )
                if self._on_ready is not None:
                    self._on_ready(self)
                self.opened = True
                self.ready.set()
            elif isinstance(event, PongReceived):
                with self._pong:
                    if event.sent in self._pings:  # not the heartbeat's own ping
                        self._pings[event.sent] = event.rtt
                        self._pong.notify_all()
            elif isinstance(event, ConnectionTerminated):
                self._on_terminated(event)
        if self.core.pending_output:
            try:
                self._flush(block=False)
            except OpenSocketError:
                pass  # the core has failed and says why; the loop ends

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        if event.error is not None:
            self.errors += 1
        level = 10 if event.code in (CloseCode.NORMAL, CloseCode.GOING_AWAY) else 20
        self.log.log(level, "closed: %s (%s)", event.reason or "no reason", event.code)
        self._end_queue()
        self.ready.set()

    def _finish(self) -> None:
        """Flush the last frames, close the socket once no writer uses it, tell everyone."""
        with self._write_lock:
            with self._core_lock:
                data = self.core.data_to_send()
            if data and not self.transport.is_shut:
                try:
                    self.transport.sendall(
                        data, min(self.write_timeout or 5.0, FINAL_FLUSH_TIMEOUT)
                    )
                except OSError:
                    pass
            self.transport.shutdown()
            self.transport.close()
        self._end_queue()
        self.ready.set()
        self.closed.set()
        with self._pong:
            self._pong.notify_all()
        term = self.core.terminated
        if self.connection is not None and term is not None:
            safe_call(self.hooks.on_close, self.connection, term.code, term.reason)
        if self._on_closed is not None:
            self._on_closed(self)

    def _lost(self, exc: BaseException) -> None:
        with self._core_lock:
            # a reset, a broken pipe: the peer (or the path to it) went away
            self.core.fail(PeerDisconnected(f"connection lost: {exc}"), by_peer=True)
        self.transport.shutdown()

    # ---- the inbox -------------------------------------------------------------------------

    def set_receiver(self, receiver: Callable[[list[bytes | Frame]], None]) -> list[bytes | Frame]:
        """Hand every later batch to ``receiver`` (on the reader thread) instead of the inbox;
        returns what the inbox held. Flow control is then the receiver's (``pause_reading``)."""
        with self._has_items:
            self._receiver = receiver
            early = list(self.inbox)
            self.inbox.clear()
            self._queued_bytes = 0
            self._paused = False
            self._has_space.notify_all()
        return early

    def pause_reading(self, paused: bool) -> None:
        """Stop (True) or resume reading the socket; timers keep running meanwhile."""
        with self._has_space:
            self._paused = paused
            self._has_space.notify_all()

    def queue_frames(self, frames: Sequence[PatternFrame]) -> None:
        """Queue pattern frames in the core without writing them (``flush`` does)."""
        with self._core_lock:
            self.core.send_frames(frames)

    def flush(self, timeout: float | None = None) -> None:
        """Write out everything the core has queued (blocks while the peer is slow)."""
        self._flush(block=True, timeout=timeout)

    def _deliver(self, messages: list[bytes | Frame]) -> None:
        receiver = self._receiver
        if receiver is not None:
            receiver(messages)
            return
        opts = self.core.options
        with self._has_items:
            inbox = self.inbox
            inbox.extend(messages)
            self._queued_bytes += sum(map(len, messages))
            if len(inbox) > opts.max_queued_messages or self._queued_bytes > opts.max_queued_bytes:
                self._paused = True
            self._has_items.notify_all()

    def stop_delivering(self) -> None:
        """Server shutdown: a recv() with nothing queued raises 'going away' instead of
        waiting; what is queued is still delivered and sending still works."""
        with self._has_items:
            self._stopped = True
            self._has_items.notify_all()

    def _end_queue(self) -> None:
        with self._has_items:
            self._ended = True
            self._has_items.notify_all()
            self._has_space.notify_all()

    def take(self, max_items: int | None, timeout: float | None) -> list[bytes | Frame]:
        """Wait for queued messages and remove up to ``max_items`` (all when None)."""
        with self._has_items:
            inbox = self.inbox
            if not inbox:
                self._wait_items(timeout)
            if max_items is None or max_items >= len(inbox):
                items = list(inbox)
                inbox.clear()
            else:
                items = [inbox.popleft() for _ in range(max_items)]
            self._queued_bytes -= sum(map(len, items))
            if self._paused:
                self._maybe_resume()
        return items

    def take_one(self, timeout: float | None) -> bytes | Frame:
        """Wait for one queued message and remove it (the per-message fast path)."""
        with self._has_items:
            inbox = self.inbox
            if not inbox:
                self._wait_items(timeout)
            item = inbox.popleft()
            self._queued_bytes -= len(item)
            if self._paused:
                self._maybe_resume()
        return item

    def _wait_items(self, timeout: float | None) -> None:
        """Wait (queue lock held) until the inbox has something; raise at end or timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        inbox = self.inbox
        while not inbox:
            if self._ended:
                raise self.core.closed_exception()
            if self._stopped:
                raise ConnectionClosedOK(CloseCode.GOING_AWAY, "server shutting down")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ReadTimeout(f"no message from {self.peer} within {timeout:g}s")
            self._has_items.wait(left)

    def _maybe_resume(self) -> None:
        """Let the reader go on once the application has taken enough (queue lock held)."""
        opts = self.core.options
        if len(self.inbox) > opts.max_queued_messages // 2:
            return
        self._queued_bytes = sum(map(len, self.inbox))
        if self._queued_bytes <= opts.max_queued_bytes // 2:
            self._paused = False
            self._has_space.notify_all()

    # ---- output ----------------------------------------------------------------------------

    def send(self, payloads: list[bytes], timeout: float | None = None) -> None:
        """Queue payloads in the core and write them out."""
        with self._core_lock:
            self.core.send_many(payloads)  # all or nothing
        self._flush(block=True, timeout=timeout)

    def _flush(self, *, block: bool, timeout: float | None = None) -> None:
        """Write what the core has queued; without ``block``, leave it to the current writer."""
        core = self.core
        while core.pending_output:
            if not self._write_lock.acquire(blocking=block):
                return  # the writer holding the lock checks again after releasing it
            try:
                while True:
                    with self._core_lock:
                        data = core.data_to_send()
                    if not data:
                        break
                    self._write(data, self.write_timeout if timeout is None else timeout)
            finally:
                self._write_lock.release()

    def _write(self, data: bytearray, timeout: float | None) -> None:
        if self.transport.is_shut:
            raise self.core.closed_exception()
        try:
            self.transport.sendall(data, timeout)
        except TimeoutError:
            reason = f"the peer has not read for {timeout:g}s: dropped as stuck"
            self.log.warning("%s", reason)
            self.abort(WriteTimeout(reason), CloseCode.SLOW_CONSUMER)
            raise WriteTimeout(f"{self.peer}: {reason}") from None
        except OSError as exc:
            self._lost(exc)
            raise self.core.closed_exception() from exc

    # ---- actions ---------------------------------------------------------------------------

    def ping(self, timeout: float) -> float:
        """One PING/PONG round trip: its time in seconds (OperationTimeout without a PONG).

        Only the answer to this ping counts (its echoed stamp), not the heartbeat's own."""
        with self._core_lock:
            if self.core.state is not State.OPEN:
                raise self.core.closed_exception()
            sent = time.monotonic()
            with self._pong:
                self._pings[sent] = None
            self.core.ping(sent)
        try:
            self._flush(block=True, timeout=timeout)
            with self._pong:
                while (rtt := self._pings[sent]) is None:
                    if self.closed.is_set():
                        raise self.core.closed_exception()
                    left = sent + timeout - time.monotonic()
                    if left <= 0:
                        raise OperationTimeout(
                            f"{self.peer}: no answer to a ping within {timeout:g}s"
                        )
                    self._pong.wait(left)
                return rtt
        finally:
            with self._pong:
                self._pings.pop(sent, None)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", *, wait: bool = True) -> None:
        """Start the closing handshake; with ``wait``, return once the connection has ended."""
        core = self.core
        with self._core_lock:
            state = core.state
            if state in (State.OPEN, State.HANDSHAKE):
                core.close(time.monotonic(), code, reason)
        # Closing during the handshake ends the core at once, but the reader still waits for
        # the handshake deadline: send our CLOSE, then wake it by shutting the socket.
        handshake = state is State.HANDSHAKE
        try:
            self._flush(block=wait or handshake)
        except OpenSocketError:
            pass
        if handshake:
            self.transport.shutdown()
            self._end_queue()
        if wait and threading.current_thread() is not self.thread:
            self.wait_closed(core.options.close_timeout)

    def wait_closed(self, close_timeout: float | None = None) -> None:
        """Wait for the end; past ``close_timeout`` fire the close deadline and drop the link."""
        if self.closed.wait(close_timeout):
            return
        with self._core_lock:
            self.core.handle_timer(time.monotonic())
        self.abort(ConnectionClosed(CloseCode.ABNORMAL, "the peer did not answer our close"))
        self.closed.wait(FINAL_FLUSH_TIMEOUT + 1.0)

    def abort(self, error: OpenSocketError, code: int = CloseCode.ABNORMAL) -> None:
        """Drop the connection now (stuck peer, shutdown); the reader thread cleans up."""
        with self._core_lock:
            self.core.fail(error, code)
        self.transport.shutdown()
        self._end_queue()

    def stats(self) -> ConnectionStats:
        """A snapshot of the counters."""
        return snapshot(self.core, self.errors)


class Connection(ConnectionBase):
    """A framed, message-oriented connection (blocking). Use ``opensocket.sync.connect``.

    ``send`` may be called from several threads at once; one thread at a time should receive.
    """

    def __init__(
        self, link: FramedLink, local: str, remote: str, *, read_timeout: float | None = None
    ) -> None:
        super().__init__(link, local, remote, read_timeout=read_timeout)
        self._link = link
        link.connection = self

    # ---- sending ---------------------------------------------------------------------------

    def send(self, message: Any, timeout: float | None = None) -> None:
        """Send one message; blocks while the peer is slow, at most ``timeout`` (or the
        write timeout) seconds, then raises WriteTimeout and drops the connection."""
        self._link.send([self.codec.dumps(message)], timeout)

    def send_many(
        self, messages: list[Any] | tuple[Any, ...], timeout: float | None = None
    ) -> None:
        """Send several messages in one write (the fast path for many small messages)."""
        dumps = self.codec.dumps
        self._link.send([dumps(message) for message in messages], timeout)

    # ---- receiving -------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Any:
        """Return the next message; ReadTimeout after ``timeout`` s; ConnectionClosed at the end."""
        item = self._link.take_one(self.read_timeout if timeout is None else timeout)
        if self.codec.decode is None and type(item) is bytes:
            return item
        return self._decode_item(item)

    def recv_batch(
        self, max_messages: int | None = None, timeout: float | None = None
    ) -> list[Any]:
        """Return every queued message (at least one; at most ``max_messages``)."""
        items = self._link.take(max_messages, self.read_timeout if timeout is None else timeout)
        if self.codec.decode is None and Frame not in set(map(type, items)):
            return items
        return [self._decode_item(item) for item in items]

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.recv()
            except ConnectionClosed as exc:
                if exc.code in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
                    return
                raise

    @property
    def link(self) -> FramedLink:
        """The link driving this connection (for opensocket's own layers, e.g. messaging)."""
        return self._link

    @property
    def unread(self) -> int:
        """Messages received and not yet taken by ``recv``."""
        return len(self._link.inbox)

    def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time of one PING/PONG in seconds; OperationTimeout if none comes back."""
        return self._link.ping(timeout)

    # ---- lifecycle -------------------------------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", *, wait: bool = True) -> None:
        """Close gracefully: flush, exchange CLOSE frames (bounded by close_timeout), close;
        ``wait=False`` sends our CLOSE and returns (the reader thread finishes the rest)."""
        self._link.close(code, reason, wait=wait)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the connection has ended, whoever ended it; False on timeout."""
        return self._link.closed.wait(timeout)

    @property
    def stats(self) -> ConnectionStats:
        """Counters: bytes and messages in and out, errors, last heartbeat round trip."""
        return self._link.stats()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
