"""Reliable UDP (``rudp://``) for asyncio: a DatagramProtocol driving the sans-IO core.

One endpoint per UDP socket. A client endpoint drives one ``RudpConnection`` over a connected
socket; a server endpoint drives a ``RudpServer`` and runs the handler for each connection it
accepts. Input and timers only mark the endpoint for a pump; one pump per loop iteration
feeds the timers, flushes ``datagrams_to_send`` and re-arms a single ``loop.call_at`` timer
from ``get_timer()``, so a burst of datagrams costs one flush.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from .._sockets import bind_sockets, connect_datagram, connect_error
from ..address import Address, format_sockaddr, from_sockaddr, rudp_address
from ..admission import Admission
from ..codecs import Codec, get_codec
from ..errors import (
    CloseCode,
    ConfigError,
    ConnectionClosed,
    ConnectionClosedOK,
    ConnectionRejected,
    ConnectTimeout,
    ReadTimeout,
    SendBufferFull,
    WriteTimeout,
    closed_error,
)
from ..options import ServerLimits, SocketOptions
from ..rudp import (
    Connected,
    ConnectionAccepted,
    ConnectionTerminated,
    MessageReceived,
    RudpConnection,
    RudpOptions,
    RudpServer,
    RudpStats,
    State,
    Writable,
)
from ..stats import ServerStats
from .datagram import _infos

__all__ = ["ReliableConnection", "ReliableServer", "connect_rudp", "rudp_options", "serve_rudp"]

log = logging.getLogger("opensocket.rudp")
Handler = Callable[[Any], Awaitable[Any]]


def rudp_options(rudp: RudpOptions | None, secret: bytes | str | None) -> RudpOptions:
    """The endpoint options: ``rudp`` (or defaults) with ``secret`` filled in."""
    opts = rudp or RudpOptions()
    if secret is None:
        return opts
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if opts.secret is not None and opts.secret != key:
        raise ConfigError("secret= and RudpOptions.secret differ: give the secret once")
    return replace(opts, secret=key)


def codec_of(codec: str | tuple[str, ...] | None) -> Codec:
    """The codec both sides agreed on out of band (rudp has no codec negotiation)."""
    if isinstance(codec, tuple):
        if len(codec) != 1:
            raise ConfigError("rudp:// does not negotiate codecs: give exactly one codec")
        codec = codec[0]
    return get_codec(codec or "bytes")


def handshake_error(event: ConnectionTerminated, where: str, timeout: float) -> Exception:
    """What a failed rudp handshake means for the caller of ``connect``."""
    if event.code == CloseCode.HANDSHAKE_TIMEOUT:
        return ConnectTimeout(
            f"no answer from {where} to the rudp handshake within {timeout:g}s: "
            "is a rudp server running there, and does the firewall pass UDP?"
        )
    if event.by_peer:
        return ConnectionRejected(event.reason, event.code)
    return closed_error(event.code, event.reason)


def copy_stats(core: RudpConnection) -> RudpStats:
    """A snapshot of a connection's counters (RTT, loss, retransmits, bytes, drops)."""
    stats = core.get_stats()
    return replace(stats, dropped=Counter(stats.dropped))


class _Endpoint(asyncio.DatagramProtocol):
    """One UDP socket under a RudpConnection (client) or a RudpServer."""

    def __init__(self, core: RudpConnection | RudpServer, on_events: Callable[[], None]) -> None:
        self.core = core
        self.on_events = on_events
        self.loop = asyncio.get_running_loop()
        self.client = isinstance(core, RudpConnection)
        self.transport: asyncio.DatagramTransport | None = None
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.refused: OSError | None = None
        self._pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def itself(self) -> _Endpoint:
        """The protocol factory for ``create_datagram_endpoint``."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start: the client's INITIAL goes out now."""
        self.transport = transport  # type: ignore[assignment]
        self.pump()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Feed the core; the pump runs once per loop iteration."""
        core = self.core
        # A connected client socket only receives from its peer: name it as the core knows it.
        source = core.addr if isinstance(core, RudpConnection) else addr
        core.receive_datagram(data, source, self.loop.time())
        self.schedule()

    def error_received(self, exc: Exception) -> None:
        """ICMP errors: during a client handshake "port unreachable" means nobody is there."""
        if self.client and isinstance(exc, OSError):
            self.refused = exc
            self.on_events()

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.lost.done():
            self.lost.set_result(None)

    def schedule(self) -> None:
        """Pump at the end of this loop iteration (coalesces a burst of input or sends)."""
        if not self._pending:
            self._pending = True
            self.loop.call_soon(self.pump)

    def pump(self) -> None:
        """Run due timers, report events, flush datagrams, re-arm the timer."""
        self._pending = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        core = self.core
        now = self.loop.time()
        timer = core.get_timer()
        if timer is not None and timer <= now:
            core.handle_timer(now)
        self.on_events()
        out = core.datagrams_to_send(now)
        if out and not transport.is_closing():
            sendto = transport.sendto
            if self.client:
                for data, _ in out:
                    sendto(data)
            else:
                for data, addr in out:
                    sendto(data, addr)  # type: ignore[arg-type]
        self.on_events()  # sending can report events too (Writable, a terminated close)
        self._arm(core.get_timer())

    def _arm(self, when: float | None) -> None:
        if when is not None and self._timer_at is not None and self._timer_at <= when:
            return  # the armed timer fires first: it re-arms from get_timer() then
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
        if when is not None:
            self._timer_at = when
            self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        self.pump()

    def close(self) -> None:
        """Flush what is left and close the socket."""
        if self.transport is not None and not self.transport.is_closing():
            self.pump()
            self.transport.close()


class ReliableConnection:
    """A reliable-UDP connection (asyncio): messages on channels. Use ``opensocket.connect``.

    ``send(message, channel=0)``; ``recv()`` returns the next message of any channel and
    ``recv_message()`` the pair ``(channel, message)``. Channel kinds come from
    ``RudpOptions.channels`` (default: 0 reliable-ordered, 1 unreliable-sequenced, 2
    reliable-unordered).
    """

    def __init__(
        self,
        endpoint: _Endpoint,
        core: RudpConnection,
        codec: Codec,
        *,
        local: str,
        remote: str,
        read_timeout: float | None,
        write_timeout: float | None,
        on_done: Callable[[ReliableConnection], None] | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._core = core
        self.codec = codec
        self.local_address = local
        self.remote_address = remote
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self._on_done = on_done
        loop = endpoint.loop
        self._inbox: collections.deque[tuple[int, bytes]] = collections.deque()
        self._inbox_bytes = 0
        self._readers: list[asyncio.Future[None]] = []
        self._writers: list[asyncio.Future[None]] = []
        self.ready: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[None] = loop.create_future()
        self._term: ConnectionTerminated | None = None
        self._stopped = False
        self._draining_all = False

    # ---- events from the core --------------------------------------------------------------

    def _drain_events(self) -> None:
        core = self._core
        # Messages stay in the core beyond a window of unread bytes: the core grants the peer
        # flow credit only as we take them, so a slow reader slows the sender.
        limit = core.options.receive_window
        while self._draining_all or self._inbox_bytes <= limit:
            event = core.next_event()
            if event is None:
                break
            kind = type(event)
            if kind is MessageReceived:
                assert isinstance(event, MessageReceived)
                self._inbox.append((event.channel, event.data))
                self._inbox_bytes += len(event.data)
                _wake(self._readers)
            elif kind is Writable:
                _wake(self._writers)
            elif kind is Connected:
                if not self.ready.done():
                    self.ready.set_result(None)
            elif isinstance(event, ConnectionTerminated):
                self._terminated(event)

    def _terminated(self, event: ConnectionTerminated) -> None:
        self._term = event
        if not self.ready.done():
            timeout = self._core.options.handshake_timeout
            self.ready.set_exception(handshake_error(event, self.remote_address, timeout))
            self.ready.exception()
        level = logging.DEBUG if event.code in (CloseCode.NORMAL, CloseCode.GOING_AWAY) else 20
        log.log(level, "[%s] closed: %s (%s)", self.remote_address, event.reason, event.code)
        _wake(self._readers)
        _wake(self._writers)
        if not self._done.done():
            self._done.set_result(None)
        if self._on_done is not None:
            self._on_done(self)

    def _closed_error(self) -> ConnectionClosed:
        term = self._term
        if term is not None:
            return closed_error(term.code, term.reason, by_peer=term.by_peer)
        return closed_error(self._core.close_code or CloseCode.NORMAL, self._core.close_reason)

    # ---- sending ---------------------------------------------------------------------------

    async def send(self, message: Any, channel: int = 0) -> None:
        """Send one message on ``channel``; waits while the send buffer is full (backpressure,
        at most ``write_timeout`` seconds, then WriteTimeout)."""
        data = self.codec.dumps(message)
        while True:
            try:
                self._core.send(channel, data)
                break
            except SendBufferFull:
                await self._wait(self._writers, self.write_timeout, write=True)
        self._endpoint.schedule()

    def send_nowait(self, message: Any, channel: int = 0) -> None:
        """Queue one message without waiting; raises SendBufferFull when the buffer is full."""
        self._core.send(channel, self.codec.dumps(message))
        self._endpoint.schedule()

    async def _wait(
        self, waiters: list[asyncio.Future[None]], timeout: float | None, *, write: bool = False
    ) -> None:
        if self._term is not None or self._core.state is State.CLOSED:
            raise self._closed_error()
        waiter = self._endpoint.loop.create_future()
        waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            what = "took no data" if write else "sent no message"
            error = WriteTimeout if write else ReadTimeout
            raise error(f"{self.remote_address} {what} within {timeout:g}s") from None
        finally:
            if waiter in waiters:
                waiters.remove(waiter)

    # ---- receiving -------------------------------------------------------------------------

    async def recv_message(self, timeout: float | None = None) -> tuple[int, Any]:
        """Return ``(channel, message)``; ReadTimeout after ``timeout`` s (default
        ``read_timeout``); ConnectionClosed once the connection has ended."""
        inbox = self._inbox
        while not inbox:
            self._drain_events()
            if inbox:
                break
            if self._term is not None or self._core.state is State.CLOSED:
                raise self._closed_error()
            if self._stopped:
                raise ConnectionClosedOK(CloseCode.GOING_AWAY, "server shutting down")
            await self._wait(self._readers, self.read_timeout if timeout is None else timeout)
        channel, data = inbox.popleft()
        self._inbox_bytes -= len(data)
        if self._core._events:
            self._drain_events()
            self._endpoint.schedule()  # taking messages may have opened the flow window
        decode = self.codec.decode
        return channel, (data if decode is None else self.codec.loads(data))

    async def recv(self, timeout: float | None = None) -> Any:
        """Return the next message of any channel (see ``recv_message`` for the channel)."""
        return (await self.recv_message(timeout))[1]

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

    def stop_delivering(self) -> None:
        """Server shutdown: a recv() with nothing queued raises 'going away'."""
        self._stopped = True
        _wake(self._readers)

    # ---- lifecycle -------------------------------------------------------------------------

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close gracefully: deliver what is queued, exchange CLOSE (bounded by the core's
        ``close_timeout``), then close the socket of a client."""
        self._draining_all = True
        self._core.close(code, reason)
        self._endpoint.schedule()
        self._drain_events()
        await asyncio.shield(self._done)
        if self._endpoint.client:
            self._endpoint.close()
            await asyncio.shield(self._endpoint.lost)

    async def wait_closed(self) -> None:
        """Wait until the connection has ended, whoever ended it."""
        self._draining_all = True
        self._drain_events()
        await asyncio.shield(self._done)

    @property
    def closed(self) -> bool:
        """True once the connection has ended."""
        return self._term is not None or self._core.state is State.CLOSED

    @property
    def close_code(self) -> int | None:
        """The close code once closed."""
        return self._core.close_code if self.closed else None

    @property
    def close_reason(self) -> str:
        """The close reason once closed."""
        return self._core.close_reason if self.closed else ""

    @property
    def stats(self) -> RudpStats:
        """Counters: srtt/min_rtt, retransmits, lost, bytes, messages, dropped by reason."""
        return copy_stats(self._core)

    @property
    def channels(self) -> int:
        """How many channels this connection has."""
        return len(self._core.options.channels)

    async def __aenter__(self) -> ReliableConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = self._core.state.value
        return f"<ReliableConnection {self.local_address} -> {self.remote_address} {state}>"


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


async def connect_rudp(
    url: str | Address,
    *,
    codec: str | tuple[str, ...] | None = None,
    secret: bytes | str | None = None,
    options: SocketOptions | None = None,
    rudp: RudpOptions | None = None,
) -> ReliableConnection:
    """Open a reliable-UDP connection to ``url`` and complete its handshake."""
    addr = rudp_address(url)
    opts = options or SocketOptions()
    ropts = rudp_options(rudp, secret)
    chosen = codec_of(codec)
    loop = asyncio.get_running_loop()
    udp = addr.with_scheme("udp")
    sock = connect_datagram(udp, await _infos(udp, passive=False), opts)
    core = RudpConnection.connect(sock.getpeername(), ropts, now=loop.time())
    handle: ReliableConnection | None = None

    def on_events() -> None:
        if handle is not None:
            if endpoint.refused is not None and core.state is State.HANDSHAKE:
                _refused(handle, endpoint.refused, addr, opts)
            handle._drain_events()

    endpoint = _Endpoint(core, on_events)
    local = format_sockaddr(sock.getsockname())
    handle = ReliableConnection(
        endpoint,
        core,
        chosen,
        local=local,
        remote=str(addr),
        read_timeout=opts.read_timeout,
        write_timeout=opts.write_timeout,
    )

    # Once over, a client's socket closes (after the pump has sent the last ack or CLOSE).
    def over(_: ReliableConnection) -> None:
        loop.call_soon(endpoint.close)

    handle._on_done = over
    try:
        await loop.create_datagram_endpoint(endpoint.itself, sock=sock)
    except BaseException:
        sock.close()
        raise
    limit = min(opts.connect_timeout or ropts.handshake_timeout, ropts.handshake_timeout)
    try:
        async with asyncio.timeout(limit + 1.0):  # the core's own deadline comes first
            await asyncio.shield(handle.ready)
    except BaseException as exc:
        core.close()
        endpoint.close()
        if isinstance(exc, TimeoutError):
            raise connect_error(exc, addr, limit) from None
        raise
    return handle


def _refused(handle: ReliableConnection, exc: OSError, addr: Address, opts: SocketOptions) -> None:
    if not handle.ready.done():
        handle.ready.set_exception(connect_error(exc, addr, opts.connect_timeout))
        handle.ready.exception()


class ReliableServer:
    """A running reliable-UDP server; ``addresses`` lists the bound addresses (real ports)."""

    def __init__(
        self,
        handler: Handler,
        *,
        rudp: RudpOptions,
        codec: Codec,
        options: SocketOptions,
        limits: ServerLimits,
    ) -> None:
        self.handler = handler
        self.rudp = rudp
        self.codec = codec
        self.options = options
        self.limits = limits
        self.addresses: list[Address] = []
        self._admission = Admission(limits)
        self._stats = ServerStats()
        self._endpoints: list[_Endpoint] = []
        self._live: dict[ReliableConnection, tuple[str | None, asyncio.Task[Any]]] = {}
        self._closing = False
        self._closed = asyncio.get_running_loop().create_future()

    async def _start(self, addr: Address) -> None:
        loop = asyncio.get_running_loop()
        socks = bind_sockets(addr.with_scheme("udp"), self.options, kind=socket.SOCK_DGRAM)
        for sock in socks:
            core = RudpServer(
                self.rudp, now=loop.time(), max_connections=self.limits.max_connections
            )
            endpoint = self._endpoint(core)
            try:
                await loop.create_datagram_endpoint(endpoint.itself, sock=sock)
            except BaseException:
                for other in socks:
                    other.close()
                raise
            self._endpoints.append(endpoint)
            self.addresses.append(from_sockaddr("rudp", sock.getsockname()))
        log.info("rudp listening on %s", ", ".join(map(str, self.addresses)))

    def _endpoint(self, core: RudpServer) -> _Endpoint:
        endpoint = _Endpoint(core, lambda: self._dispatch(endpoint))
        return endpoint

    def _dispatch(self, endpoint: _Endpoint) -> None:
        core = endpoint.core
        assert isinstance(core, RudpServer)
        while (event := core.next_event()) is not None:
            if isinstance(event, ConnectionAccepted):
                self._accept(endpoint, event.connection)
        for handle in [h for h in self._live if h._endpoint is endpoint]:
            handle._drain_events()

    def _accept(self, endpoint: _Endpoint, conn: RudpConnection) -> None:
        peer = format_sockaddr(conn.addr)
        ip = str(conn.addr[0]) if isinstance(conn.addr, tuple) else None
        if self._closing:
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        refusal = self._admission.admit(ip, endpoint.loop.time())
        if refusal is not None:
            conn.close(refusal.code, refusal.reason)
            self._stats.dropped[CloseCode.describe(refusal.code)] += 1
            log.info("[%s] refused: %s", peer, refusal.reason)
            return
        self._stats.accepted += 1
        transport = endpoint.transport
        local = format_sockaddr(transport.get_extra_info("sockname")) if transport else ""
        handle = ReliableConnection(
            endpoint,
            conn,
            self.codec,
            local=local,
            remote=peer,
            read_timeout=None,
            write_timeout=self.limits.stuck_timeout,
            on_done=self._finished,
        )
        task = endpoint.loop.create_task(self._run(handle))
        self._live[handle] = (ip, task)

    async def _run(self, conn: ReliableConnection) -> None:
        try:
            await self.handler(conn)
        except (ConnectionClosed, WriteTimeout):
            pass
        except asyncio.CancelledError:
            conn._core.close(CloseCode.GOING_AWAY, "server shutting down")
            conn._endpoint.schedule()
            raise
        except Exception as exc:
            log.exception("[%s] handler failed", conn.remote_address)
            self._stats.errors += 1
            conn._core.close(CloseCode.INTERNAL_ERROR, f"internal server error: {exc!r}"[:200])
            conn._endpoint.schedule()
            return
        if not conn.closed:
            code = CloseCode.GOING_AWAY if self._closing else CloseCode.NORMAL
            await conn.close(code, "server shutting down" if self._closing else "")

    def _finished(self, conn: ReliableConnection) -> None:
        ip, _task = self._live.pop(conn, (None, None))
        self._admission.release(ip)
        stats = conn._core.stats
        self._stats.bytes_in += stats.bytes_received
        self._stats.bytes_out += stats.bytes_sent
        self._stats.messages_in += stats.messages_received
        self._stats.messages_out += stats.messages_sent
        term = conn._term
        if term is not None and term.code not in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
            self._stats.dropped[CloseCode.describe(term.code)] += 1

    # ---- public ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The first bound address as a URL (handy with port 0)."""
        return str(self.addresses[0])

    @property
    def stats(self) -> ServerStats:
        """Counters: accepted, active, bytes/messages in and out, closes by reason."""
        snap = replace(self._stats, dropped=self._stats.dropped.copy())
        snap.active = len(self._live)
        return snap

    @property
    def dropped_datagrams(self) -> Counter[str]:
        """Datagrams the endpoints and live connections discarded, by reason."""
        total: Counter[str] = Counter()
        for endpoint in self._endpoints:
            core = endpoint.core
            assert isinstance(core, RudpServer)
            total.update(core.stats.dropped)
            for conn in core.connections.values():
                total.update(conn.stats.dropped)
        return total

    async def serve_forever(self) -> None:
        """Run until ``close()`` is called or the task is cancelled."""
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            await self.close()
            raise

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting, let handlers finish up to ``timeout`` (default shutdown_grace),
        then close the remaining connections with 'going away' and the sockets."""
        if self._closing:
            await asyncio.shield(self._closed)
            return
        self._closing = True
        grace = self.limits.shutdown_grace if timeout is None else timeout
        for conn in list(self._live):
            conn.stop_delivering()
        tasks = {task for _, task in self._live.values()}
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        conns = list(self._live)
        for conn in conns:
            conn._draining_all = True
            conn._core.close(CloseCode.GOING_AWAY, "server shutting down")
            conn._endpoint.schedule()
        done = [conn._done for conn in conns if not conn._done.done()]
        if done:
            await asyncio.wait(done, timeout=self.rudp.close_timeout + 1.0)
        tasks = {task for _, task in self._live.values() if not task.done()}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for endpoint in self._endpoints:
            endpoint.close()
        lost = [ep.lost for ep in self._endpoints if not ep.lost.done()]
        if lost:
            await asyncio.wait(lost, timeout=1.0)
        if not self._closed.done():
            self._closed.set_result(None)
        log.info("rudp server on %s closed", ", ".join(map(str, self.addresses)))

    async def __aenter__(self) -> ReliableServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<ReliableServer {', '.join(map(str, self.addresses))}>"


async def serve_rudp(
    url: str | Address | list[str | Address],
    handler: Handler,
    *,
    codec: str | tuple[str, ...] | None = None,
    secret: bytes | str | None = None,
    options: SocketOptions | None = None,
    limits: ServerLimits | None = None,
    rudp: RudpOptions | None = None,
) -> ReliableServer:
    """Listen on ``url`` (rudp://host:port, or several) and run ``await handler(conn)`` per
    connection."""
    urls = url if isinstance(url, list) else [url]
    addrs = [rudp_address(u) for u in urls]
    server = ReliableServer(
        handler,
        rudp=rudp_options(rudp, secret),
        codec=codec_of(codec),
        options=options or SocketOptions(),
        limits=limits or ServerLimits(),
    )
    try:
        for addr in addrs:
            await server._start(addr)
    except BaseException:
        await server.close(0)
        raise
    return server
