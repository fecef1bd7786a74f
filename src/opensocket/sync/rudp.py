"""Reliable UDP (``rudp://``) for threaded programs: a reader thread per UDP socket.

Each endpoint (a client's connected socket, or one server socket) has one reader thread that
polls the socket with the core's timer as its timeout, feeds datagrams and timers to the
sans-IO core and sends what it has to say. Application threads call the core under the same
lock and flush at once; when their action moves the timer earlier, they wake the reader
through a socket pair. Each connection has its own inbox and condition variable.
"""

from __future__ import annotations

import contextlib
import errno
import math
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Final

from .._reliable import (
    QUIET,
    SHUTTING_DOWN,
    ReliableConnectionBase,
    ReliableServerBase,
    client_setup,
    count_dropped,
    log,
    peer_ip,
    run_core,
    server_addresses,
)
from .._sockets import bind_sockets, close_quietly, connect_datagram, connect_error
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
    RudpStats,
    State,
)
from ..stats import ServerStats
from .datagram import _resolve

__all__ = ["ReliableConnection", "ReliableServer", "connect_rudp", "serve_rudp"]

RECV_BATCH: Final = 256  # datagrams read per wake-up before timers and output get a turn
RECV_SIZE: Final = 65536
JOIN_TIMEOUT: Final = 5.0
# A send that fails for want of buffer space is a lost datagram: recovery resends it.
_TRANSIENT: Final = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.EHOSTUNREACH, errno.ENETUNREACH})


class _Endpoint:
    """One UDP socket, its core (RudpConnection or RudpServer) and its reader thread."""

    def __init__(self, sock: socket.socket, core: RudpConnection | RudpServer, name: str) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.core = core
        self.client = isinstance(core, RudpConnection)
        self.lock = threading.RLock()
        self.on_events: Callable[[], None] = lambda: None
        self.refused: OSError | None = None
        self.send_errors = 0
        self.stopped = threading.Event()
        self._stop = False
        self._closed = False
        self.close_when_stopped = False  # a client whose connection ended closes its socket
        self._poll_until = math.inf  # when the reader thread looks at the timer next
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the reader thread (the client's INITIAL goes out at once)."""
        with self.lock:
            self.pump()
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not self._stop:
                with self.lock:
                    timer = self.core.get_timer()
                    self._poll_until = math.inf if timer is None else timer
                wait = (
                    None if timer is None else max(0, math.ceil((timer - time.monotonic()) * 1000))
                )
                ready = poller.poll(wait)
                with self.lock:
                    if self._stop:
                        break
                    for fd, _ in ready:
                        if fd == self.sock.fileno():
                            self._read()
                        else:
                            with contextlib.suppress(OSError):
                                self._wake_r.recv(4096)
                    self.pump()
        finally:
            self.stopped.set()
            if self.close_when_stopped:
                self._close_sockets()

    def _read(self) -> None:
        core = self.core
        sock = self.sock
        peer = core.addr if isinstance(core, RudpConnection) else None
        now = time.monotonic()
        for _ in range(RECV_BATCH):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors surface here on a connected socket
                if self.client:
                    self.refused = exc
                continue
            core.receive_datagram(data, addr if peer is None else peer, now)

    def pump(self) -> None:
        """Run due timers, report events, send datagrams (call with the lock held)."""
        out = run_core(self.core, time.monotonic(), self.on_events)
        if out:
            self._send(out)
            self.on_events()

    def _send(self, out: list[tuple[bytes, Any]]) -> None:
        sock = self.sock
        for data, addr in out:
            try:
                if self.client:
                    sock.send(data)
                else:
                    sock.sendto(data, addr)
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED and self.client:
                    self.refused = exc
                elif exc.errno not in _TRANSIENT and exc.errno != errno.ECONNREFUSED:
                    log.debug("sending a datagram failed: %s", exc)
                self.send_errors += 1

    def kick(self) -> None:
        """After an application call: flush now, and wake the reader if its timer moved."""
        with self.lock:
            if self._stop:
                return
            self.pump()
            timer = self.core.get_timer()
            if timer is not None and timer < self._poll_until:
                with contextlib.suppress(OSError):
                    self._wake_w.send(b"\0")

    def close(self) -> None:
        """Flush, stop the reader thread and close the socket."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            if not self._stop:
                self.pump()
            self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(JOIN_TIMEOUT)
        self._close_sockets()

    def _close_sockets(self) -> None:
        close_quietly(self.sock)
        close_quietly(self._wake_r)
        close_quietly(self._wake_w)


class ReliableConnection(ReliableConnectionBase[_Endpoint]):
    """A reliable-UDP connection (blocking): messages on channels. Use ``sync.connect``.

    ``send`` may be called from several threads; one thread at a time should receive.
    """

    def _init_waiting(self) -> None:
        self._cond = threading.Condition(self._endpoint.lock)
        self._writable = 0  # Writable events seen: a blocked sender waits for a change
        self.ready = threading.Event()
        self.error: Exception | None = None
        self.done = threading.Event()

    # ---- how waiters wake (lock held) ------------------------------------------------------

    def _wake(self, readers: bool, writers: bool) -> None:
        if writers:
            self._writable += 1
        self._cond.notify_all()

    def _connected(self) -> None:
        self.ready.set()

    def _handshake_failed(self, event: ConnectionTerminated) -> None:
        if not self.ready.is_set():
            if self.error is None:
                self.error = self._handshake_error(event)
            self.ready.set()

    def _ended(self) -> None:
        self.done.set()

    def _flush(self) -> None:
        self._endpoint.kick()

    # ---- sending ---------------------------------------------------------------------------

    def send(self, message: Any, channel: int = 0, timeout: float | None = None) -> None:
        """Send one message on ``channel``; blocks while the send buffer is full, at most
        ``timeout`` (default ``write_timeout``) seconds, then raises WriteTimeout."""
        data = self.codec.dumps(message)
        limit = self.write_timeout if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit
        with self._cond:
            while True:
                try:
                    self._core.send(channel, data)
                    break
                except SendBufferFull:
                    seen = self._writable
                    while self._writable == seen and self._term is None:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise WriteTimeout(
                                f"{self.remote_address} took no data within {limit:g}s"
                            ) from None
                        self._cond.wait(left)
            self._endpoint.kick()

    # ---- receiving -------------------------------------------------------------------------

    def recv_message(self, timeout: float | None = None) -> tuple[int, Any]:
        """Return ``(channel, message)``; ReadTimeout after ``timeout`` s (default
        ``read_timeout``); ConnectionClosed once the connection has ended."""
        limit = self.read_timeout if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit
        with self._cond:
            while not self._has_message():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ReadTimeout(f"{self.remote_address} sent no message within {limit:g}s")
                self._cond.wait(left)
            channel, data = self._take()
        return self._decoded(channel, data)

    def recv(self, timeout: float | None = None) -> Any:
        """Return the next message of any channel (see ``recv_message`` for the channel)."""
        return self.recv_message(timeout)[1]

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.recv()
            except ConnectionClosed as exc:
                if exc.code in QUIET:
                    return
                raise

    def stop_delivering(self) -> None:
        """Server shutdown: a recv() with nothing queued raises 'going away'."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # ---- lifecycle -------------------------------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close gracefully: deliver what is queued, exchange CLOSE (bounded by the core's
        ``close_timeout``), then close the socket of a client."""
        with self._cond:
            self._start_close(code, reason)
            self._drain_events()
        self._endpoint.kick()
        self.done.wait(self._core.options.close_timeout + 1.0)
        if self._endpoint.client:
            self._endpoint.close()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the connection has ended, whoever ended it; False on timeout."""
        with self._cond:
            self._drain_all()
        return self.done.wait(timeout)

    @property
    def stats(self) -> RudpStats:
        """Counters: srtt/min_rtt, retransmits, lost, bytes, messages, dropped by reason."""
        with self._cond:
            return super().stats

    def __enter__(self) -> ReliableConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_rudp(
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
    udp = addr.with_scheme("udp")
    sock = connect_datagram(udp, _resolve(udp), opts)
    core = RudpConnection.connect(sock.getpeername(), setup.rudp, now=time.monotonic())
    endpoint = _Endpoint(sock, core, f"rudp {addr.hostport}")
    handle = ReliableConnection(
        endpoint,
        core,
        setup.codec,
        local=format_sockaddr(sock.getsockname()),
        remote=str(addr),
        read_timeout=opts.read_timeout,
        write_timeout=opts.write_timeout,
    )

    def on_events() -> None:
        if endpoint.refused is not None and core.state is State.HANDSHAKE:
            handle.error = connect_error(endpoint.refused, addr, opts.connect_timeout)
            core.close()
        handle._drain_events()

    def over(_: ReliableConnection) -> None:
        # Lock held, after the last datagrams went out: the reader stops, closing the socket.
        endpoint._stop = True
        endpoint.close_when_stopped = True
        with contextlib.suppress(OSError):
            endpoint._wake_w.send(b"\0")

    endpoint.on_events = on_events
    handle._on_done = over
    endpoint.start()
    limit = setup.handshake_limit
    handle.ready.wait(limit + 1.0)  # the core's own deadline comes first
    if handle.error is not None or not handle.ready.is_set():
        with endpoint.lock:
            core.close()
        endpoint.close()
        raise handle.error or connect_error(TimeoutError(), addr, limit)
    return handle


class ReliableServer(ReliableServerBase[ReliableConnection, threading.Thread]):
    """A running reliable-UDP server (blocking): a handler thread per connection."""

    def __init__(
        self,
        handler: Callable[[ReliableConnection], Any],
        *,
        rudp: RudpOptions,
        codec: Codec,
        options: SocketOptions,
        limits: ServerLimits,
    ) -> None:
        super().__init__(handler, rudp=rudp, codec=codec, options=options, limits=limits)
        self.handler: Callable[[ReliableConnection], Any] = handler
        self._endpoints: list[_Endpoint] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._done = threading.Event()

    def _start(self, addr: Address) -> None:
        socks = bind_sockets(addr.with_scheme("udp"), self.options, kind=socket.SOCK_DGRAM)
        for sock in socks:
            core = self._new_core(time.monotonic())
            endpoint = _Endpoint(sock, core, f"rudp server {format_sockaddr(sock.getsockname())}")
            endpoint.on_events = self._dispatcher(endpoint)
            self._endpoints.append(endpoint)
            self.addresses.append(from_sockaddr("rudp", sock.getsockname()))

    def _launch(self) -> None:
        for endpoint in self._endpoints:
            endpoint.start()
        self._log_listening()

    def _dispatcher(self, endpoint: _Endpoint) -> Callable[[], None]:
        core = endpoint.core
        assert isinstance(core, RudpServer)
        handles: dict[RudpConnection, ReliableConnection] = {}

        def dispatch() -> None:
            while (event := core.next_event()) is not None:
                if isinstance(event, ConnectionAccepted):
                    handle = self._accept(endpoint, event.connection)
                    if handle is not None:
                        handles[event.connection] = handle
            for conn, handle in list(handles.items()):
                handle._drain_events()
                if handle.done.is_set():
                    del handles[conn]

        return dispatch

    def _accept(self, endpoint: _Endpoint, conn: RudpConnection) -> ReliableConnection | None:
        peer = format_sockaddr(conn.addr)
        ip = peer_ip(conn.addr)
        with self._lock:
            if not self._admit(conn, ip, time.monotonic()):
                return None
        handle = ReliableConnection(
            endpoint,
            conn,
            self.codec,
            local=format_sockaddr(endpoint.sock.getsockname()),
            remote=peer,
            read_timeout=None,
            write_timeout=self.limits.stuck_timeout,
            on_done=self._finished,
        )
        thread = threading.Thread(target=self._run, args=(handle,), name=f"rudp {peer}")
        with self._lock:
            self._live[handle] = (ip, thread)
        thread.start()
        return handle

    def _run(self, conn: ReliableConnection) -> None:
        try:
            self.handler(conn)
        except (ConnectionClosed, WriteTimeout):
            pass
        except Exception as exc:
            log.exception("[%s] handler failed", conn.remote_address)
            with self._lock:
                self._stats.errors += 1
            conn.close(CloseCode.INTERNAL_ERROR, f"internal server error: {exc!r}"[:200])
        else:
            if not conn.closed:
                if self._closing:
                    conn.close(CloseCode.GOING_AWAY, SHUTTING_DOWN)
                else:
                    conn.close()
        finally:
            with self._idle:
                self._idle.notify_all()

    def _finished(self, conn: ReliableConnection) -> None:
        with self._lock:
            self._forget(conn)
            self._idle.notify_all()

    # ---- public ----------------------------------------------------------------------------

    @property
    def stats(self) -> ServerStats:
        """Counters: accepted, active, bytes/messages in and out, closes by reason."""
        with self._lock:
            return super().stats

    @property
    def dropped_datagrams(self) -> Counter[str]:
        """Datagrams the endpoints and live connections discarded, by reason."""
        total: Counter[str] = Counter()
        for endpoint in self._endpoints:
            with endpoint.lock:
                count_dropped(endpoint.core, total)
        return total

    def serve_forever(self) -> None:
        """Block until ``shutdown()`` is called (from another thread or a signal handler)."""
        try:
            self._done.wait()
        except KeyboardInterrupt:
            self.shutdown()
            raise

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, let handlers finish up to ``timeout`` (default shutdown_grace),
        then close the remaining connections with 'going away' and the sockets."""
        with self._lock:
            if self._closing:
                closing_already = True
            else:
                closing_already, self._closing = False, True
            conns = list(self._live)
        if closing_already:
            self._done.wait()
            return
        for conn in conns:
            conn.stop_delivering()
        grace = self.limits.shutdown_grace if timeout is None else timeout
        with self._idle:
            self._idle.wait_for(
                lambda: all(not t.is_alive() for _, t in self._live.values()), grace
            )
            conns = list(self._live)
        for conn in conns:
            with conn._cond:
                conn._start_close(CloseCode.GOING_AWAY, SHUTTING_DOWN)
            conn._endpoint.kick()
        deadline = time.monotonic() + self.rudp.close_timeout + 1.0
        for conn in conns:
            conn.done.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            threads = [t for _, t in self._live.values()]
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        for endpoint in self._endpoints:
            endpoint.close()
        self._done.set()
        self._log_closed()

    def __enter__(self) -> ReliableServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def serve_rudp(
    url: str | Address | list[str | Address],
    handler: Callable[[ReliableConnection], Any],
    *,
    codec: str | tuple[str, ...] | None = None,
    secret: bytes | str | None = None,
    options: SocketOptions | None = None,
    limits: ServerLimits | None = None,
    rudp: RudpOptions | None = None,
) -> ReliableServer:
    """Listen on ``url`` (rudp://host:port, or several) and run ``handler(conn)`` in a thread
    per connection."""
    addrs = server_addresses(url)
    server = ReliableServer._configured(handler, codec, secret, options, limits, rudp)
    try:
        for addr in addrs:
            server._start(addr)
    except BaseException:
        for endpoint in server._endpoints:
            close_quietly(endpoint.sock)
        raise
    server._launch()
    return server
