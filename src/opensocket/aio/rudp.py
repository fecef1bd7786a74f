"""Reliable UDP (``rudp://``) for asyncio: a DatagramProtocol driving the sans-IO core.

One endpoint per UDP socket. A client endpoint drives one ``RudpConnection`` over a connected
socket; a server endpoint drives a ``RudpServer`` and runs the handler for each connection it
accepts. Input and timers only mark the endpoint for a pump; one pump per loop iteration
feeds the timers, flushes ``datagrams_to_send`` and re-arms a single ``loop.call_at`` timer
from ``get_timer()``, so a burst of datagrams costs one flush.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .._reliable import (
    QUIET,
    SHUTTING_DOWN,
    ReliableConnectionBase,
    ReliableServerBase,
    client_setup,
    count_dropped,
    log,
    peer_ip,
    rudp_options,
    run_core,
    server_addresses,
)
from .._sockets import bind_sockets, connect_datagram, connect_error
from ..address import Address, format_sockaddr, from_sockaddr
from ..codecs import Codec
from ..errors import CloseCode, ConnectionClosed, ReadTimeout, SendBufferFull, WriteTimeout
from ..options import ServerLimits, SocketOptions
from ..rudp import (
    ConnectionAccepted,
    ConnectionTerminated,
    RudpConnection,
    RudpOptions,
    RudpServer,
    State,
)
from .datagram import _infos

__all__ = ["ReliableConnection", "ReliableServer", "connect_rudp", "rudp_options", "serve_rudp"]

Handler = Callable[[Any], Awaitable[Any]]


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
        out = run_core(core, self.loop.time(), self.on_events)
        if out and not transport.is_closing():
            sendto = transport.sendto
            if self.client:
                for data, _ in out:
                    sendto(data)
            else:
                for data, addr in out:
                    sendto(data, addr)
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


class ReliableConnection(ReliableConnectionBase[_Endpoint]):
    """A reliable-UDP connection (asyncio): messages on channels. Use ``opensocket.connect``.

    ``send(message, channel=0)``; ``recv()`` returns the next message of any channel and
    ``recv_message()`` the pair ``(channel, message)``. Channel kinds come from
    ``RudpOptions.channels`` (default: 0 reliable-ordered, 1 unreliable-sequenced, 2
    reliable-unordered).
    """

    def _init_waiting(self) -> None:
        loop = self._endpoint.loop
        self._readers: list[asyncio.Future[None]] = []
        self._writers: list[asyncio.Future[None]] = []
        self.ready: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[None] = loop.create_future()

    # ---- how waiters wake ------------------------------------------------------------------

    def _wake(self, readers: bool, writers: bool) -> None:
        if readers:
            _wake(self._readers)
        if writers:
            _wake(self._writers)

    def _connected(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def _handshake_failed(self, event: ConnectionTerminated) -> None:
        if not self.ready.done():
            self.ready.set_exception(self._handshake_error(event))
            self.ready.exception()

    def _ended(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    def _flush(self) -> None:
        self._endpoint.schedule()

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
        self._raise_if_closed()
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
        while not self._has_message():
            await self._wait(self._readers, self.read_timeout if timeout is None else timeout)
        return self._decoded(*self._take())

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
                if exc.code in QUIET:
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
        self._start_close(code, reason)
        self._endpoint.schedule()
        self._drain_events()
        await asyncio.shield(self._done)
        if self._endpoint.client:
            self._endpoint.close()
            await asyncio.shield(self._endpoint.lost)

    async def wait_closed(self) -> None:
        """Wait until the connection has ended, whoever ended it."""
        self._drain_all()
        await asyncio.shield(self._done)

    async def __aenter__(self) -> ReliableConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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
    setup = client_setup(url, codec, secret, options, rudp)
    addr, opts = setup.addr, setup.options
    loop = asyncio.get_running_loop()
    udp = addr.with_scheme("udp")
    sock = connect_datagram(udp, await _infos(udp, passive=False), opts)
    core = RudpConnection.connect(sock.getpeername(), setup.rudp, now=loop.time())
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
        setup.codec,
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
    limit = setup.handshake_limit
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


class ReliableServer(ReliableServerBase[ReliableConnection, "asyncio.Task[Any]"]):
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
        super().__init__(handler, rudp=rudp, codec=codec, options=options, limits=limits)
        self.handler: Handler = handler
        self._endpoints: list[_Endpoint] = []
        self._closed = asyncio.get_running_loop().create_future()

    async def _start(self, addr: Address) -> None:
        loop = asyncio.get_running_loop()
        socks = bind_sockets(addr.with_scheme("udp"), self.options, kind=socket.SOCK_DGRAM)
        for sock in socks:
            endpoint = self._endpoint(self._new_core(loop.time()))
            try:
                await loop.create_datagram_endpoint(endpoint.itself, sock=sock)
            except BaseException:
                for other in socks:
                    other.close()
                raise
            self._endpoints.append(endpoint)
            self.addresses.append(from_sockaddr("rudp", sock.getsockname()))
        self._log_listening()

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
        ip = peer_ip(conn.addr)
        if not self._admit(conn, ip, endpoint.loop.time()):
            return
        transport = endpoint.transport
        local = format_sockaddr(transport.get_extra_info("sockname")) if transport else ""
        handle = ReliableConnection(
            endpoint,
            conn,
            self.codec,
            local=local,
            remote=format_sockaddr(conn.addr),
            read_timeout=None,
            write_timeout=self.limits.stuck_timeout,
            on_done=self._forget,
        )
        task = endpoint.loop.create_task(self._run(handle))
        self._live[handle] = (ip, task)

    async def _run(self, conn: ReliableConnection) -> None:
        try:
            await self.handler(conn)
        except (ConnectionClosed, WriteTimeout):
            pass
        except asyncio.CancelledError:
            conn._core.close(CloseCode.GOING_AWAY, SHUTTING_DOWN)
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
            await conn.close(code, SHUTTING_DOWN if self._closing else "")

    # ---- public ----------------------------------------------------------------------------

    @property
    def dropped_datagrams(self) -> Counter[str]:
        """Datagrams the endpoints and live connections discarded, by reason."""
        total: Counter[str] = Counter()
        for endpoint in self._endpoints:
            count_dropped(endpoint.core, total)
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
            conn._start_close(CloseCode.GOING_AWAY, SHUTTING_DOWN)
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
        self._log_closed()

    async def __aenter__(self) -> ReliableServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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
    addrs = server_addresses(url)
    server = ReliableServer._configured(handler, codec, secret, options, limits, rudp)
    try:
        for addr in addrs:
            await server._start(addr)
    except BaseException:
        await server.close(0)
        raise
    return server
