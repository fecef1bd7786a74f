"""The asyncio messaging socket: one pattern core + ``Bridge`` over any number of links.

Links are framed connections made by ``opensocket.aio.connect`` (connecting endpoints, each
with its own reconnect loop) or accepted by ``opensocket.aio.serve`` (binding endpoints).
Pattern frames reach the bridge through the connection's receiver hook; everything the bridge
wants written goes out in one ``send_frames`` batch per link per pump.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from ...codecs import Codec, get_codec
from ...errors import CloseCode, ConnectionClosed, HandshakeError, OpenSocketError, ProtocolError
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
from ...protocol.frame import Frame
from ...protocol.patterns import EncodedFrames, encode_frames
from .._framed import Connection
from ..server import Server

__all__ = ["Socket"]

log = logging.getLogger("opensocket.messaging")
MAX_EVENTS = 10_000  # monitor events kept for a slow (or absent) reader; the oldest go first


@dataclasses.dataclass(slots=True)
class _Endpoint:
    url: str
    peer: int | None = None
    task: asyncio.Task[None] | None = None
    conn: Connection | None = None


class Socket:
    """Base of the asyncio messaging sockets: bind, connect, close, monitor, stats."""

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
        self.loop = asyncio.get_running_loop()
        self._backoff = backoff or BackoffOptions()
        self._options = options or SocketOptions()
        self._protocol = dataclasses.replace(protocol or ProtocolOptions(), pattern=self.pattern)
        core.max_size = self._protocol.max_frame_size  # with sessions, also the peers' limits
        self._limits = limits
        self._tls = tls
        self._secret = secret
        self._on_event = on_event
        self._links: dict[int, Connection] = {}
        self._link_ids = itertools.count(1)
        self._endpoints: list[_Endpoint] = []
        self._servers: list[Server] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._progress: asyncio.Event = asyncio.Event()  # set after each pump: waiters re-check
        self._waiting = 0  # tasks waiting on _progress (none: a pump need not replace it)
        self._pump_soon = False  # kick() scheduled a pump at the end of this loop iteration
        self._monitor: collections.deque[Event] = collections.deque(maxlen=MAX_EVENTS)
        self._monitor_wake = asyncio.Event()
        self._read_paused: set[int] = set()  # links not read while their peer's inbox is full
        self._draining = False  # close() started: no new sends, links stay up for linger
        self._closing = False
        self._closed = False

    # ---- endpoints -------------------------------------------------------------------------

    async def bind(self, url: str) -> str:
        """Accept connections on ``url``; returns the bound address (real port for port 0)."""
        self._check_open()
        from .. import serve

        server = await serve(
            url,
            self._serve_link,
            secret=self._secret,
            tls=self._tls,
            options=self._options,
            protocol=self._protocol,
            limits=self._limits,
        )
        assert isinstance(server, Server)
        self._servers.append(server)
        return str(server.addresses[0])

    async def connect(self, url: str, *, wait: bool = True) -> None:
        """Connect to ``url`` and keep reconnecting (backoff with jitter) until closed.

        With ``wait`` (default) the first attempt is made now and its error raised; with
        ``wait=False`` every attempt, the first included, happens in the background.
        """
        self._check_open()
        endpoint = _Endpoint(url)
        if wait:
            conn = await self._open(url)
            self._attach(conn, endpoint)
        self._endpoints.append(endpoint)
        endpoint.task = self.loop.create_task(self._keep(endpoint, Backoff(self._backoff)))

    async def _open(self, url: str) -> Connection:
        from .. import connect

        conn = await connect(
            url, secret=self._secret, tls=self._tls, options=self._options, protocol=self._protocol
        )
        assert isinstance(conn, Connection)
        return conn

    async def _keep(self, endpoint: _Endpoint, backoff: Backoff) -> None:
        """Reconnect ``endpoint`` whenever its link drops, until the socket closes."""
        loop = self.loop
        while not self._closing:
            if endpoint.conn is not None:
                backoff.connected(loop.time())
                await endpoint.conn.wait_closed()
                endpoint.conn = None
                when = backoff.disconnected(loop.time())
            else:
                try:
                    conn = await self._open(endpoint.url)
                except OpenSocketError as exc:
                    if isinstance(exc, HandshakeError):
                        self._emit(HandshakeFailed(endpoint.url, exc))
                    when = backoff.failed(loop.time())
                else:
                    if self._closing:
                        conn.close_nowait(CloseCode.GOING_AWAY, "socket closing")
                        return
                    self._attach(conn, endpoint)
                    continue
            if self._closing:
                return
            if when is None:
                log.warning("giving up on %s after %d attempts", endpoint.url, backoff.attempts)
                self._gave_up(endpoint.url)
                return
            delay = max(0.0, when - loop.time())
            self._emit(Reconnecting(endpoint.url, backoff.attempts, delay))
            await asyncio.sleep(delay)

    def _gave_up(self, url: str) -> None:
        """A connecting endpoint exhausted its attempts (subclasses fail pending work)."""

    async def _serve_link(self, conn: Connection) -> None:
        self._attach(conn, None)
        await conn.wait_closed()

    # ---- links -----------------------------------------------------------------------------

    def _attach(self, conn: Connection, endpoint: _Endpoint | None) -> None:
        link = next(self._link_ids)
        now = self.loop.time()
        self._links[link] = conn
        peer_max = conn.peer_max_frame_size
        if peer_max is not None:
            self.bridge.peer_frame_limit(peer_max)
        # tuples are cheaper than Frames and the bridge takes them; frames the peer sent right
        # after the handshake are already in the inbox
        early = conn.set_pattern_receiver(lambda items: self._receive(link, items))
        conn.set_writable_callback(lambda writable: self._writable(link, writable))
        conn.add_lost_callback(lambda: self._lost(link, endpoint))
        if endpoint is not None:
            endpoint.conn = conn
            endpoint.peer = peer = self.bridge.connected(link, now, peer=endpoint.peer)
        else:
            self.bridge.accepted(link, now)
            peer = self.bridge.peer_of(link) or 0  # 0: known once its SESSION arrives
        self._emit(Connected(peer, conn.remote_address))
        if early:
            self._receive(link, early)
        else:
            self.pump()

    def _receive(self, link: int, items: list[Any]) -> None:
        frames = items
        if not all(type(f) is tuple for f in items):  # decoded before the switch to tuples
            frames = [(f.type, f.meta, f.payload) if type(f) is Frame else f for f in items]
            frames = [f for f in frames if type(f) is tuple]  # DATA has no place here
        try:
            self.bridge.receive_many(link, frames, self.loop.time())
        except ProtocolError as exc:
            log.warning("link %d: %s; closing it", link, exc)
            conn = self._links.get(link)
            if conn is not None:
                conn.close_nowait(exc.code, str(exc)[:100])
        self.pump()

    def _writable(self, link: int, writable: bool) -> None:
        peer = self.bridge.peer_of(link)
        if peer is not None and peer not in self.bridge.sessions:
            self.core.set_writable(peer, writable)
            if writable:
                self.pump()

    def _lost(self, link: int, endpoint: _Endpoint | None) -> None:
        conn = self._links.pop(link, None)
        if conn is None or self._closed:
            return
        peer = self.bridge.disconnected(link, self.loop.time())
        reason = conn.close_reason or "connection lost"
        self._emit(Disconnected(peer or 0, conn.remote_address, reason))
        self.pump()

    # ---- the pump --------------------------------------------------------------------------

    def kick(self) -> None:
        """Pump once, soon (``call_soon``): a burst of sends from one loop iteration is
        written as one batch; a lone request still goes out without waiting for I/O."""
        if not self._pump_soon:
            self._pump_soon = True
            self.loop.call_soon(self._pump_later)

    def _pump_later(self) -> None:
        self._pump_soon = False
        if not self._closed:
            self.pump()

    def pump(self) -> None:
        """Write what the bridge has, handle its events, re-arm its timer, wake waiters."""
        now = self.loop.time()
        batches = self.bridge.frames_by_link(now)
        # The same frames for several links (a fan-out) are framed once, not once per link.
        shared: dict[tuple[bool, tuple[int, ...]], EncodedFrames] | None = (
            {} if len(batches) > 1 else None
        )
        for link, frames in batches.items():
            conn = self._links.get(link)
            if conn is None or not conn.is_open:
                self.bridge.unwritten(link, frames)  # a session replays them; else counted
                continue
            try:
                if shared is not None and len(frames) > 1:
                    checksum = conn.checksum
                    key = (checksum, tuple(map(id, frames)))
                    batch = shared.get(key)
                    if batch is None:
                        batch = shared[key] = encode_frames(frames, checksum=checksum)
                    conn.send_pattern_batch(batch)
                else:
                    conn.send_pattern_frames(frames)
            except OpenSocketError as exc:  # e.g. a message over the peer's frame limit
                log.warning(
                    "link %d: cannot send %d frame(s): %s; closing it", link, len(frames), exc
                )
                peer = self.bridge.peer_of(link)
                self._handle(peer, MessageDropped(peer, "out", "unsendable", len(frames)))
                self.core.stats.drop("unsendable", peer, len(frames))
                conn.close_nowait(CloseCode.INTERNAL_ERROR, "unsendable frame")
        for link in self.bridge.takeovers:
            old = self._links.get(link)
            if old is not None:
                old.close_nowait(CloseCode.GOING_AWAY, "session taken over by a new link")
        self.bridge.takeovers.clear()
        for peer, event in self.bridge.events():
            self._handle(peer, event)
        if self._read_paused or getattr(self.core, "paused", None):
            self._flow_in()
        self._arm_timer()
        if self._waiting:
            self._progress.set()
            self._progress = asyncio.Event()

    def _flow_in(self) -> None:
        """Stop reading links whose peer's inbox is full (receive BLOCK); resume drained ones."""
        link_of = self.bridge.link_of
        paused: set[int] = getattr(self.core, "paused", set())
        want = {link for peer in paused if (link := link_of(peer)) is not None}
        for link in want - self._read_paused:
            conn = self._links.get(link)
            if conn is not None:
                conn.pause_reading(True)
        for link in self._read_paused - want:
            conn = self._links.get(link)
            if conn is not None:
                conn.pause_reading(False)
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

    def _arm_timer(self) -> None:
        when = self.bridge.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = None if when is None else self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self.bridge.handle_timer(self.loop.time())
        self.pump()

    async def _wait_progress(self, deadline: float | None = None, *, check: bool = True) -> None:
        """Wait for the next pump (or the deadline): callers re-check their condition."""
        if check:
            self._check_open()
        progress = self._progress
        self._waiting += 1
        try:
            if deadline is None:
                await progress.wait()
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await progress.wait()
        finally:
            self._waiting -= 1

    def _check_open(self) -> None:
        if self._closing or self._draining:
            raise ConnectionClosed(CloseCode.NORMAL, f"the {self.pattern} socket is closed")

    # ---- monitor and stats -----------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("on_event callback raised")
        self._monitor.append(event)
        self._monitor_wake.set()

    async def events(self) -> AsyncIterator[Event]:
        """Monitor events (Connected, Disconnected, Reconnecting, HandshakeFailed,
        SessionStarted/Resumed/Lost, MessageDropped, ...) as they happen, until closed."""
        while True:
            while self._monitor:
                yield self._monitor.popleft()
            if self._closed:
                return
            self._monitor_wake.clear()
            await self._monitor_wake.wait()

    @property
    def stats(self) -> SocketStats:
        """Counters: messages and bytes in and out, drops by reason, reconnects, resumes."""
        return self.core.stats.snapshot()

    @property
    def peers(self) -> int:
        """How many peers are up right now."""
        return len(self.core.peers)

    def unsettled(self) -> int:
        """Messages not yet handed over (or, with sessions, not yet acknowledged)."""
        return self.bridge.unsettled()

    # ---- closing ---------------------------------------------------------------------------

    async def close(self, linger: float = 1.0) -> int:
        """Refuse new sends, flush for up to ``linger`` seconds (links and reconnects stay
        up meanwhile), then stop; return how many messages stayed undelivered (also logged).
        Pending requests fail with RequestAborted, other waits with ConnectionClosed."""
        if self._closed:
            return 0
        self._draining = True
        deadline = self.loop.time() + linger
        while self.unsettled() and self.loop.time() < deadline:
            self.pump()
            await self._wait_progress(deadline, check=False)
        undelivered = self.unsettled()
        if undelivered:
            log.warning("%s socket closed with %d undelivered", self.pattern, undelivered)
        self.bridge.ack_now(self.loop.time())  # the peers' lingers end with what we received
        self.pump()
        self._closing = True
        self._closed = True
        self._abort_pending()
        for endpoint in self._endpoints:
            if endpoint.task is not None:
                endpoint.task.cancel()
        for conn in list(self._links.values()):
            conn.close_nowait(CloseCode.GOING_AWAY, "socket closing")
        for endpoint in self._endpoints:
            if endpoint.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await endpoint.task
        for server in self._servers:
            await server.close(0)
        for conn in list(self._links.values()):
            with contextlib.suppress(OpenSocketError):
                await asyncio.wait_for(conn.wait_closed(), self._protocol.close_timeout)
        self._links.clear()
        if self._timer is not None:
            self._timer.cancel()
        self._progress.set()
        self._monitor_wake.set()
        return undelivered

    def _abort_pending(self) -> None:
        """Fail what callers still wait for (subclasses)."""

    async def __aenter__(self) -> Socket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
