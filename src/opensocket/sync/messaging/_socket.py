"""The blocking messaging socket: one pattern core + ``Bridge`` over any number of links.

Links are framed connections made by ``opensocket.sync.connect`` (connecting endpoints) or
accepted by ``opensocket.sync.serve`` (binding endpoints). The core and the bridge are only
touched under the socket's lock; ``time.monotonic()`` is their clock. Threads:

- each link's reader thread (the framed runtime's own) feeds pattern frames to the bridge;
- each link has one writer thread that flushes what the bridge queued in the link's core
  (for a connecting endpoint it is the endpoint's thread, which also reconnects with
  backoff; an accepted link gets its own, started on attach: it never waits for a server
  handler worker, which the link only holds idle until it ends), so a slow peer never blocks
  the application or the other peers: past ``WRITE_HIGH`` queued bytes the peer is marked
  unwritable and the pattern's high-water marks apply;
- one timer thread fires the bridge's timers (request timeouts, session acks and windows).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from ...codecs import Codec, get_codec
from ...errors import CloseCode, ConnectionClosed, HandshakeError, OpenSocketError, ProtocolError
from ...hooks import Hooks
from ...messaging import (
    Backoff,
    BackoffOptions,
    Bridge,
    Connected,
    Disconnected,
    Event,
    HandshakeFailed,
    MessageDropped,
    Reconnecting,
    SessionLost,
    SessionOptions,
    SocketStats,
)
from ...messaging._base import PatternCore
from ...options import Pattern, ProtocolOptions, ServerLimits, SocketOptions, TLSOptions
from ...protocol.connection import State
from ...protocol.frame import Frame
from .._framed import Connection, FramedLink
from ..server import Server

__all__ = ["Socket"]

log = logging.getLogger("opensocket.messaging")
MAX_EVENTS = 10_000  # monitor events kept for a slow (or absent) reader; the oldest go first
WRITE_HIGH = 256 * 1024  # bytes queued in a link's core before its peer counts as unwritable
WRITE_LOW = 64 * 1024  # ... and writable again once the writer got it below this
JOIN_TIMEOUT = 5.0
SERVER_WORKERS = 4096  # each accepted link holds one (idle) server worker until it ends


def _now() -> float:
    return time.monotonic()


@dataclasses.dataclass(eq=False)
class _Link:
    id: int
    conn: Connection
    flink: FramedLink
    wake: threading.Condition  # on the socket's lock: output queued, or the link ended
    endpoint: _Endpoint | None = None
    unwritable: bool = False
    failed: str | None = None  # why the writer must close it (an unsendable frame)


@dataclasses.dataclass(eq=False)
class _Endpoint:
    url: str
    peer: int | None = None
    link: _Link | None = None
    thread: threading.Thread | None = None


class Socket:
    """Base of the blocking messaging sockets: bind, connect, close, monitor, stats.

    ``on_event(event)`` is called in order on one thread of its own, outside the socket's
    lock: a slow callback delays only later callbacks (past MAX_EVENTS waiting, the oldest
    are skipped), and it may call the socket (``request``, ``send``, even ``close``).
    """

    pattern: ClassVar[Pattern] = "pair"  # the ProtocolOptions.pattern it negotiates

    def __init__(
        self,
        core: PatternCore,
        *,
        codec: str | Codec = "bytes",
        sessions: SessionOptions | None = None,
        backoff: BackoffOptions | None = None,
        options: SocketOptions | None = None,
        protocol: ProtocolOptions | None = None,
        limits: ServerLimits | None = None,
        tls: TLSOptions | ssl.SSLContext | None = None,
        secret: bytes | str | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.core = core
        self.codec = get_codec(codec) if isinstance(codec, str) else codec
        self.bridge = Bridge(core, sessions=sessions)
        self._backoff = backoff or BackoffOptions()
        self._options = options or SocketOptions()
        self._protocol = dataclasses.replace(protocol or ProtocolOptions(), pattern=self.pattern)
        core.max_size = self._protocol.max_frame_size  # with sessions, also the peers' limits
        self._limits = limits or ServerLimits(workers=SERVER_WORKERS)
        self._tls = tls
        self._secret = secret
        self._on_event = on_event
        self._lock = threading.RLock()
        self._progress = threading.Condition(self._lock)  # notified after each pump
        self._timer_wake = threading.Condition(self._lock)
        self._stop_wake = threading.Condition(self._lock)  # reconnect delays end at close
        self._monitor_wake = threading.Condition(self._lock)
        self._owed: collections.deque[Event] = collections.deque(maxlen=MAX_EVENTS)
        self._owed_wake = threading.Condition(self._lock)  # events for on_event, or closed
        self._caller: threading.Thread | None = None  # the thread calling on_event
        self._caller_done = False
        self._links: dict[int, _Link] = {}
        self._by_flink: dict[FramedLink, _Link] = {}
        self._link_ids = itertools.count(1)
        self._endpoints: list[_Endpoint] = []
        self._writers: set[threading.Thread] = set()  # accepted links' writer threads
        self._servers: list[Server] = []
        self._timer_at: float | None = None
        self._timer_thread: threading.Thread | None = None
        self._monitor: collections.deque[Event] = collections.deque(maxlen=MAX_EVENTS)
        self._read_paused: set[int] = set()  # links not read while their peer's inbox is full
        self._draining = False  # close() started: no new sends, links stay up for linger
        self._closing = False
        self._closed = False

    # ---- endpoints -------------------------------------------------------------------------

    def bind(self, url: str) -> str:
        """Accept connections on ``url``; returns the bound address (real port for port 0).

        Each accepted link has its own writer thread and holds one (idle) server worker
        until it ends: ``limits.workers`` (4096 unless ``limits`` says otherwise) plus
        ``limits.max_pending`` caps the links this endpoint serves at once; the server
        refuses the next ones with CONNECTION_LIMIT ("server busy").
        """
        self._check_open()
        from .. import serve

        server = serve(
            url,
            self._serve_link,
            secret=self._secret,
            tls=self._tls,
            options=self._options,
            protocol=self._protocol,
            limits=self._limits,
            hooks=Hooks(on_connect=self._accepted, on_close=self._closed_hook),
        )
        assert isinstance(server, Server)
        with self._lock:
            self._servers.append(server)
        self._start_timer()
        return str(server.addresses[0])

    def connect(self, url: str, *, wait: bool = True) -> None:
        """Connect to ``url`` and keep reconnecting (backoff with jitter) until closed.

        With ``wait`` (default) the first attempt is made now and its error raised; with
        ``wait=False`` every attempt, the first included, happens in the background.
        """
        self._check_open()
        endpoint = _Endpoint(url)
        if wait:
            self._open(endpoint)
        self._start_timer()
        thread = threading.Thread(
            target=self._keep,
            args=(endpoint, Backoff(self._backoff)),
            name=f"opensocket-msg-connect {url}",
            daemon=True,
        )
        endpoint.thread = thread
        with self._lock:
            if self._closing:  # closed meanwhile: close() has detached the first link
                return
            self._endpoints.append(endpoint)
            thread.start()

    def _open(self, endpoint: _Endpoint) -> None:
        """One connect attempt; the link attaches itself in its reader thread on handshake."""
        from .. import connect

        conn = connect(
            endpoint.url,
            secret=self._secret,
            tls=self._tls,
            options=self._options,
            protocol=self._protocol,
            hooks=Hooks(
                on_connect=lambda conn: self._attach(conn, endpoint),
                on_close=self._closed_hook,
            ),
        )
        assert isinstance(conn, Connection)

    def _keep(self, endpoint: _Endpoint, backoff: Backoff) -> None:
        """The endpoint's thread: write for its link; reconnect when the link drops."""
        try:
            self._keep_loop(endpoint, backoff)
        except Exception:  # a bug here must not pass silently
            log.exception("connecting endpoint %s failed", endpoint.url)

    def _keep_loop(self, endpoint: _Endpoint, backoff: Backoff) -> None:
        while not self._closing:
            link = endpoint.link
            if link is not None:
                backoff.connected(_now())
                self._write_loop(link)
                with self._lock:
                    if endpoint.link is link:
                        endpoint.link = None
                when = backoff.disconnected(_now())
            else:
                try:
                    self._open(endpoint)
                except OpenSocketError as exc:
                    if isinstance(exc, HandshakeError):
                        with self._lock:
                            self._emit(HandshakeFailed(endpoint.url, exc))
                    when = backoff.failed(_now())
                else:
                    continue
            if self._closing:
                return
            if when is None:
                log.warning("giving up on %s after %d attempts", endpoint.url, backoff.attempts)
                with self._lock:
                    self._gave_up(endpoint.url)
                return
            delay = max(0.0, when - _now())
            with self._lock:
                self._emit(Reconnecting(endpoint.url, backoff.attempts, delay))
                self._stop_wake.wait_for(lambda: self._closing, delay)

    def _gave_up(self, url: str) -> None:
        """A connecting endpoint exhausted its attempts (subclasses fail pending work)."""

    def _serve_link(self, conn: Connection) -> None:
        """The server's handler for an accepted link: hold it open until it ends (its writer
        is its own thread: a link waiting for a worker still gets its output written)."""
        conn.link.closed.wait()

    def _start_writer(self, link: _Link) -> None:
        """An accepted link's writer thread (lock held)."""
        thread = threading.Thread(
            target=self._writer, args=(link,), name=f"opensocket-msg-writer {link.id}", daemon=True
        )
        self._writers.add(thread)
        thread.start()

    def _writer(self, link: _Link) -> None:
        try:
            self._write_loop(link)
        except Exception:  # a bug here must not pass silently
            log.exception("writer of link %d failed", link.id)
        finally:
            with self._lock:
                self._writers.discard(threading.current_thread())

    # ---- links -----------------------------------------------------------------------------

    def _accepted(self, conn: Connection) -> None:
        self._attach(conn, None)

    def _attach(self, conn: Connection, endpoint: _Endpoint | None) -> None:
        """A link finished its handshake (its reader thread, before any later input)."""
        flink = conn.link
        with self._lock:
            if self._closing:
                flink.abort(ConnectionClosed(CloseCode.GOING_AWAY, "socket closing"))
                return
            link = _Link(next(self._link_ids), conn, flink, threading.Condition(self._lock))
            link.endpoint = endpoint
            self._fit_peer_limit(flink)
            # frames the peer sent right after the handshake are already in the inbox
            queued = flink.set_receiver(lambda items: self._receive(link, items))
            early = [f for f in queued if type(f) is Frame]
            self._links[link.id] = link
            self._by_flink[flink] = link
            now = _now()
            if endpoint is not None:
                endpoint.link = link
                endpoint.peer = peer = self.bridge.connected(link.id, now, peer=endpoint.peer)
            else:
                self._start_writer(link)
                self.bridge.accepted(link.id, now)
                peer = self.bridge.peer_of(link.id) or 0  # 0: known once its SESSION arrives
            self._emit(Connected(peer, conn.remote_address))
            if early:
                self._feed(link, early)
            self._pump()

    def _fit_peer_limit(self, flink: FramedLink) -> None:
        """With sessions, lower the send-time size limit to this peer's frame limit."""
        agreement = flink.core.agreement
        if agreement is not None:
            self.bridge.peer_frame_limit(agreement.peer_max_frame_size)

    def _receive(self, link: _Link, items: list[bytes | Frame]) -> None:
        """Frames from the link's reader thread (replaces FramedLink._deliver)."""
        with self._lock:
            if link.id in self._links:
                self._feed(link, items)
                self._pump()

    def _feed(self, link: _Link, items: Sequence[bytes | Frame]) -> None:
        frames = [(f.type, f.meta, f.payload) for f in items if type(f) is Frame]
        try:
            self.bridge.receive_many(link.id, frames, _now())
        except ProtocolError as exc:
            log.warning("link %d: %s; closing it", link.id, exc)
            link.flink.abort(exc, exc.code)

    def _closed_hook(self, conn: Connection, code: int, reason: str) -> None:
        """A link ended (its reader thread, after the socket closed)."""
        with self._lock:
            link = self._by_flink.pop(conn.link, None)
            if link is None:
                return
            self._links.pop(link.id, None)
            self._read_paused.discard(link.id)
            link.wake.notify_all()
            if self._closed:
                return
            peer = self.bridge.disconnected(link.id, _now())
            self._emit(Disconnected(peer or 0, conn.remote_address, reason or "connection lost"))
            self._pump()

    def _write_loop(self, link: _Link) -> None:
        """Flush what the bridge queued in ``link``'s core until the link ends."""
        flink = link.flink
        while self._writer_wait(link):
            if link.failed is not None:  # closing may write: here, never under the lock
                reason, link.failed = link.failed, None
                flink.close(CloseCode.INTERNAL_ERROR, reason, wait=False)
            try:
                flink.flush()
            except OpenSocketError:
                break  # the link failed (stuck peer, reset): its reader thread ends it
        # the next link of this endpoint may reuse the peer: wait until this one is detached
        deadline = _now() + self._protocol.close_timeout + JOIN_TIMEOUT
        with self._lock:
            while link.id in self._links and _now() < deadline:
                link.wake.wait(max(0.0, deadline - _now()))

    def _writer_wait(self, link: _Link) -> bool:
        """Wait until ``link`` has output (True) or has ended (False). The peer becomes
        writable again here once the output got below WRITE_LOW, whoever wrote it (the reader
        thread flushes too, after its own input)."""
        flink, core = link.flink, link.flink.core
        with self._lock:
            while True:
                if link.unwritable and core.pending_output < WRITE_LOW:
                    self._set_writable(link, True)
                    self._pump()
                if flink.closed.is_set():
                    return False
                if core.pending_output or link.failed is not None:
                    return True
                if self._closing:
                    return False
                link.wake.wait(1.0)  # notified; the timeout only guards against a bug

    def _set_writable(self, link: _Link, writable: bool) -> None:
        link.unwritable = not writable
        peer = self.bridge.peer_of(link.id)
        if peer is not None and peer not in self.bridge.sessions:
            self.core.set_writable(peer, writable)

    # ---- the pump ----------------------------------------------------------------------------

    def pump(self) -> None:
        """Write what the bridge has, handle its events, wake waiters (any thread)."""
        with self._lock:
            self._pump()

    def _pump(self) -> None:
        """Queue what the bridge has in each link's core, handle its events, re-arm the timer,
        wake the writers and the waiters."""
        now = _now()
        for lid, frames in self.bridge.frames_by_link(now).items():
            link = self._links.get(lid)
            if link is not None:
                self._queue(link, frames)
            else:
                self.bridge.unwritten(lid, frames)
        for lid in self.bridge.takeovers:
            old = self._links.get(lid)
            if old is not None:
                old.flink.abort(ConnectionClosed(CloseCode.GOING_AWAY, "session taken over"))
        self.bridge.takeovers.clear()
        for peer, event in self.bridge.events():
            self._handle(peer, event)
        if self._read_paused or self._paused_peers():
            self._flow_in()
        when = self.bridge.get_timer()
        if when is not None and (self._timer_at is None or when < self._timer_at):
            self._timer_wake.notify()
        self._progress.notify_all()

    def _queue(self, link: _Link, frames: list[Any]) -> None:
        flink = link.flink
        core = flink.core
        if core.state is not State.OPEN:
            self.bridge.unwritten(link.id, frames)  # a session replays them; else counted
            return
        try:
            flink.queue_frames(frames)
        except OpenSocketError as exc:  # e.g. a message over the peer's frame limit
            log.warning(
                "link %d: cannot send %d frame(s): %s; closing it", link.id, len(frames), exc
            )
            peer = self.bridge.peer_of(link.id)
            self._handle(peer, MessageDropped(peer, "out", "unsendable", len(frames)))
            self.core.stats.drop("unsendable", peer, len(frames))
            link.failed = "unsendable frame"
            link.wake.notify()
            return
        if core.pending_output > WRITE_HIGH and not link.unwritable:
            self._set_writable(link, False)
        link.wake.notify()

    def _paused_peers(self) -> set[int]:
        """Peers whose inbox is full under BLOCK (the core's ``paused``; patterns without an
        inbox have none)."""
        paused: set[int] = getattr(self.core, "paused", set())
        return paused

    def _flow_in(self) -> None:
        """Stop reading links whose peer's inbox is full (receive BLOCK); resume drained ones."""
        link_of = self.bridge.link_of
        want = {lid for peer in self._paused_peers() if (lid := link_of(peer)) is not None}
        for lid in want ^ self._read_paused:
            link = self._links.get(lid)
            if link is None:
                continue
            link.flink.pause_reading(lid in want)  # the reader still runs its timers
        self._read_paused = want

    def _handle(self, peer: int | None, event: Event) -> None:
        """Pattern events go to the subclass; the rest to the monitor stream."""
        if isinstance(event, MessageDropped):
            log.info(
                "dropped %d message(s) %s, peer %s: %s",
                event.count,
                event.direction,
                event.peer,
                event.reason,
            )
        elif isinstance(event, SessionLost):
            log.warning(
                "session lost (%s): %d out, %d in", event.reason, event.lost_out, event.lost_in
            )
        self._emit(event)

    def _start_timer(self) -> None:
        with self._lock:
            if self._timer_thread is not None:
                return
            self._timer_thread = threading.Thread(
                target=self._timer_loop, name="opensocket-msg-timer", daemon=True
            )
        self._timer_thread.start()

    def _timer_loop(self) -> None:
        with self._lock:
            while not self._closing:
                when = self.bridge.get_timer()
                now = _now()
                if when is not None and when <= now:
                    self.bridge.handle_timer(now)
                    self._pump()
                    continue
                self._timer_at = when
                self._timer_wake.wait(None if when is None else when - now)
                self._timer_at = None

    def _wait(self, deadline: float | None, *, check: bool = True) -> None:
        """Wait (lock held) for the next pump or the deadline: callers re-check."""
        if check:
            self._check_open()
        self._progress.wait(None if deadline is None else max(0.0, deadline - _now()))

    def _check_open(self) -> None:
        if self._closing or self._draining:
            raise ConnectionClosed(CloseCode.NORMAL, f"the {self.pattern} socket is closed")

    # ---- monitor and stats -----------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self._on_event is not None and not self._caller_done:
            self._owed.append(event)
            if self._caller is None:
                self._caller = threading.Thread(
                    target=self._call_back, name="opensocket-msg-events", daemon=True
                )
                self._caller.start()
            self._owed_wake.notify()
        self._monitor.append(event)
        self._monitor_wake.notify_all()

    def _call_back(self) -> None:
        """The on_event thread: calls the callback in order, never under the lock; ends
        once the socket is closed and every event is delivered."""
        callback = self._on_event
        assert callback is not None
        while True:
            with self._lock:
                while not self._owed and not self._closed:
                    self._owed_wake.wait()
                if not self._owed:
                    self._caller_done = True
                    return
                batch = list(self._owed)
                self._owed.clear()
            for event in batch:
                try:
                    callback(event)
                except Exception:
                    log.exception("on_event callback raised")
            with self._lock:
                self._progress.notify_all()  # wait_for() conditions may read what it saw

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Monitor events (Connected, Disconnected, Reconnecting, HandshakeFailed,
        SessionStarted/Resumed/Lost, MessageDropped, ...) as they happen, until closed or
        until none came for ``timeout`` seconds."""
        while True:
            with self._lock:
                if not self._monitor and not self._closed:
                    self._monitor_wake.wait(timeout)
                if not self._monitor:
                    return
                event = self._monitor.popleft()
            yield event

    @property
    def stats(self) -> SocketStats:
        """Counters: messages and bytes in and out, drops by reason, reconnects, resumes."""
        with self._lock:
            return self.core.stats.snapshot()

    @property
    def peers(self) -> int:
        """How many peers are up right now."""
        return len(self.core.peers)

    def unsettled(self) -> int:
        """Messages not yet handed over (or, with sessions, not yet acknowledged)."""
        with self._lock:
            return self.bridge.unsettled()

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``condition()`` (checked under the socket's lock after every change)
        holds; False after ``timeout`` seconds."""
        deadline = _now() + timeout
        with self._lock:
            while not condition():
                if _now() >= deadline:
                    return False
                self._wait(deadline, check=False)
            return True

    # ---- closing ---------------------------------------------------------------------------

    def close(self, linger: float = 1.0) -> int:
        """Refuse new sends, flush for up to ``linger`` seconds (links and reconnects stay
        up meanwhile), then stop; return how many messages stayed undelivered (also logged).
        Pending requests fail with RequestAborted, other waits with ConnectionClosed."""
        with self._lock:
            if self._closed or self._draining:
                return 0
            self._draining = True
            deadline = _now() + linger
            while self.unsettled() and _now() < deadline:
                self._pump()
                self._wait(deadline, check=False)
            undelivered = self.unsettled()
            if undelivered:
                log.warning("%s socket closed with %d undelivered", self.pattern, undelivered)
            self.bridge.ack_now(_now())  # the peers' lingers end with what we received
            self._pump()
            self._closing = True
            self._closed = True
            self._abort_pending()
            links = list(self._links.values())
            for link in links:
                link.wake.notify_all()
            self._timer_wake.notify_all()
            self._stop_wake.notify_all()
            self._progress.notify_all()
            self._monitor_wake.notify_all()
            self._owed_wake.notify_all()
        self._stop(links)
        return undelivered

    def _stop(self, links: list[_Link]) -> None:
        for link in links:
            link.flink.close(CloseCode.GOING_AWAY, "socket closing", wait=False)
        for link in links:
            link.flink.wait_closed(self._protocol.close_timeout)
        for server in self._servers:
            server.shutdown(0)
        with self._lock:
            writers = list(self._writers)
        threads = [e.thread for e in self._endpoints] + writers + [self._timer_thread]
        threads.append(self._caller)
        for thread in threads:
            if thread is not None and thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT)
        self._shutdown_workers()
        with self._lock:
            self._links.clear()
            self._by_flink.clear()

    def _abort_pending(self) -> None:
        """Fail what callers still wait for (subclasses; lock held)."""

    def _shutdown_workers(self) -> None:
        """Stop worker threads (subclasses; lock not held)."""

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
