"""The bench server: ``BenchServer`` runs tests for clients (see ``opensocket.tools.bench``)."""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from .. import sync
from .. import tls as tlsmod
from .._sockets import close_quietly
from ..address import Address, parse_address
from ..errors import (
    AddressError,
    AddressInUse,
    ConfigError,
    ConnectionClosed,
    OpenSocketError,
    ReadTimeout,
)
from ..options import ServerLimits, SocketOptions, TLSOptions, merge_protocol_options
from ..sync.server import Server as _SyncServer
from ._bench_flows import (
    UDP_POLL,
    Flow,
    set_recv_timeout,
)
from ._bench_proto import (
    VERSION,
    BenchParams,
    build_result,
)
from ._bench_side import (
    DEFAULT_PORT,
    END_GRACE,
    JOIN,
    SETUP_TIMEOUT,
    SLICE,
    UDP_ACK,
    BenchFailed,
    BenchResult,
    Side,
    big_buffers,
    check_error,
    hostport,
    make_movers,
    roles,
    split_hostport,
    stop_flows,
)

__all__ = ["BenchServer", "new_cookie"]

log = logging.getLogger("opensocket.bench")

_FRAMED_FIRST: Final = frozenset(b"O\x16")  # "OS" magic, or a TLS record (handshake)


def new_cookie() -> bytes:
    """A random test cookie whose first byte cannot be taken for a framed connection's."""
    while True:
        cookie = os.urandom(16)
        if cookie[0] not in _FRAMED_FIRST:
            return cookie


class _Listener(_SyncServer):
    """The framed server, except that connections starting with neither the "OS" magic nor a
    TLS record are data streams, handed to ``on_data`` with their raw socket (the way iperf3
    tells its control and data connections apart on one port)."""

    def __init__(self, on_data: Callable[[socket.socket], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_data = on_data

    def _claim(self, sock: socket.socket) -> bool:
        first = _peek(sock, self.limits.handshake_timeout)
        if first and first[0] in _FRAMED_FIRST:
            return False
        if first:
            self.on_data(sock)
        else:
            close_quietly(sock)
        return True


def _peek(sock: socket.socket, timeout: float) -> bytes:
    """The first byte the peer sent, left in the socket; b"" on EOF, error or timeout."""
    try:
        sock.settimeout(timeout)
        return sock.recv(1, socket.MSG_PEEK)
    except OSError:
        return b""
    finally:
        with contextlib.suppress(OSError):
            sock.setblocking(False)


# ---- the server ----------------------------------------------------------------------------


def _local_ip(local_address: str) -> str:
    """The IP of ``host:port`` or ``[v6]:port`` (a v4-mapped IPv6 address as plain IPv4)."""
    host = split_hostport(local_address)[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return host


ResultCallback = Callable[[str, BenchResult], None]


class BenchServer:
    """The server side: listens on ``urls`` and runs tests for clients.

    ``max_tests`` tests run at once (default 1, like iperf3: others are refused with
    "busy"). Every data stream uses the server's own port, as iperf3 does: TCP and TLS data
    connections arrive on the listener and are told from framed connections by their first
    byte; UDP streams on the same port number over UDP. ``on_result(peer, result)`` sees each
    finished test; ``on_error(peer, message)`` each failed one. Use as a context manager,
    or ``start()``/``shutdown()``.
    """

    def __init__(
        self,
        urls: Sequence[str] = (f"tcp://*:{DEFAULT_PORT}",),
        *,
        tls: TLSOptions | None = None,
        max_tests: int = 1,
        on_result: ResultCallback | None = None,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        if max_tests < 1:
            raise ConfigError(f"max_tests must be at least 1 (got {max_tests})")
        self.urls = [self._check(u) for u in urls]
        if len({a.scheme for a in self.urls}) > 1:
            raise ConfigError("a bench server listens on tls:// or tcp:// addresses, not both")
        self.tls = tls
        self.on_result, self.on_error = on_result, on_error
        self._slots = threading.BoundedSemaphore(max_tests)
        self._pending: dict[bytes, _ServerTest] = {}
        self._lock = threading.Lock()
        self._server: _Listener | None = None
        self._ssl: ssl.SSLContext | None = None
        self._lobby: list[socket.socket] = []
        self._stopping = threading.Event()
        self._lobby_thread: threading.Thread | None = None
        self.tests_run = 0

    @staticmethod
    def _check(url: str) -> Address:
        addr = parse_address(url, default_scheme="tcp")
        if addr.scheme not in ("tcp", "tls"):
            raise AddressError(
                f"a bench server listens on tcp:// or tls:// addresses (got {url}); UDP tests "
                "use the same server"
            )
        return addr

    def start(self) -> BenchServer:
        """Bind (TCP, and UDP on the same ports) and start serving in background threads."""
        tls = self.urls[0].is_tls
        if self.tls is not None and not tls:
            raise ConfigError(
                "TLS options apply to tls:// listeners only: listen on tls://HOST:PORT, or "
                "leave out the TLS options"
            )
        if tls:
            self._ssl = tlsmod.server_context(self.tls)
        server = _Listener(
            self._data_stream,
            handler=self._handle,
            raw=False,
            protocol=merge_protocol_options(None, ("json", "bytes")),
            options=SocketOptions(),
            limits=ServerLimits(),
            tls=self._ssl,
            hooks=None,
            scheme=self.urls[0].scheme,
        )
        try:
            for addr in self.urls:
                server._start(addr)
            for sock in server._listeners:
                self._lobby.append(_udp_twin(sock))
        except BaseException:
            for sock in [*server._listeners, *self._lobby]:
                close_quietly(sock)
            server.shutdown(0)
            raise
        server._launch()
        self._server = server
        self._lobby_thread = threading.Thread(
            target=self._udp_lobby, name="bench-udp-lobby", daemon=True
        )
        self._lobby_thread.start()
        return self

    @property
    def addresses(self) -> list[Address]:
        """The bound addresses (real ports when 0 was asked)."""
        assert self._server is not None, "start() the server first"
        return self._server.addresses

    @property
    def url(self) -> str:
        """The first bound address as a URL."""
        return str(self.addresses[0])

    def serve_forever(self) -> None:
        """Block until ``shutdown()``."""
        assert self._server is not None, "start() the server first"
        self._server.serve_forever()

    def shutdown(self) -> None:
        """Stop accepting; running tests are cut short."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown(1.0)
        if self._lobby_thread is not None:
            self._lobby_thread.join(2 * SLICE + 1.0)
        for sock in self._lobby:
            close_quietly(sock)

    def __enter__(self) -> BenchServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---- connections -----------------------------------------------------------------------

    def _handle(self, conn: sync.Connection) -> None:
        peer = conn.remote_address
        try:
            first = conn.recv(timeout=SETUP_TIMEOUT)
            if isinstance(first, bytes):
                self._join(conn, first)
            elif isinstance(first, dict) and first.get("type") == "start":
                self._test(conn, first)
            else:
                conn.send({"type": "error", "message": "expected a 'start' message"})
        except (ConnectionClosed, ReadTimeout) as exc:
            log.warning("bench client %s went away: %s", peer, exc)  # e.g. its Ctrl-C
        except (OpenSocketError, OSError) as exc:
            log.info("bench test with %s failed: %s", peer, exc)
            self._report_error(peer, str(exc))
            with contextlib.suppress(OpenSocketError, OSError):  # tell the client why
                conn.send({"type": "error", "message": f"the server ended the test: {exc}"})
        except Exception:  # a bug must not take the server down with it
            log.exception("bench test with %s failed", peer)

    def _data_stream(self, sock: socket.socket) -> None:
        """A TCP/TLS data stream on the server's port: cookie and stream index in the clear,
        then (tls://) the TLS handshake; a stranger is dropped."""
        try:
            sock.settimeout(SETUP_TIMEOUT / 2)
            join = _recv_exactly(sock, JOIN.size)
            cookie, index = JOIN.unpack(join) if join else (b"", -1)
            with self._lock:
                test = self._pending.get(cookie)
            if test is None:
                close_quietly(sock)
                return
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.info("a bench data connection failed to join: %s", exc)
            close_quietly(sock)
            return
        if not test.attach_socket(index, sock):
            close_quietly(sock)  # a stream joining twice, or too late

    def _udp_lobby(self) -> None:
        """Hellos of UDP data streams on the server's port number: each gets a socket of its
        own, bound to the same port and connected to the stream's sender (iperf3's way)."""
        with selectors.DefaultSelector() as sel:
            for sock in self._lobby:
                sel.register(sock, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select(SLICE):
                    lobby = key.fileobj
                    assert isinstance(lobby, socket.socket)
                    try:
                        data, peer = lobby.recvfrom(64)
                    except OSError:
                        continue
                    if len(data) == JOIN.size:
                        self._udp_hello(data, peer)

    def _udp_hello(self, data: bytes, peer: Any) -> None:
        cookie, index = JOIN.unpack(data)
        with self._lock:
            test = self._pending.get(cookie)
        if test is not None:
            try:
                test.udp_join(index, peer)
            except OSError as exc:
                log.info("a bench UDP stream from %s failed to join: %s", peer, exc)

    def _report_error(self, peer: str, message: str) -> None:
        if self.on_error is not None:
            self.on_error(peer, message)

    def _join(self, conn: sync.Connection, first: bytes) -> None:
        """A framed data stream: attach it to its test and keep it open while the test runs."""
        if len(first) != JOIN.size:
            return
        cookie, index = JOIN.unpack(first)
        with self._lock:
            test = self._pending.get(cookie)
        if test is not None:
            test.attach(index, conn)

    def _test(self, control: sync.Connection, start: dict[str, Any]) -> None:
        try:
            if start.get("version") != VERSION:
                raise ConfigError(f"unsupported bench version {start.get('version')!r}")
            params = BenchParams.from_dict(start.get("params"))
        except ConfigError as exc:
            control.send({"type": "error", "message": f"the server refused the test: {exc}"})
            return
        if params.protocol == "tls" and self._ssl is None:
            control.send({"type": "error", "message": "this server does not speak TLS"})
            return
        if not self._slots.acquire(blocking=False):
            log.warning("refused a test from %s: busy with another test", control.remote_address)
            control.send(
                {"type": "error", "message": "the server is busy with another test: try later"}
            )
            return
        test = _ServerTest(self, control, params)
        try:
            result = test.run()
        finally:
            test.end()
        self.tests_run += 1
        if self.on_result is not None:
            self.on_result(control.remote_address, result)

    def _register(self, cookie: bytes, test: _ServerTest | None) -> None:
        with self._lock:
            if test is None:
                self._pending.pop(cookie, None)
            else:
                self._pending[cookie] = test


class _ServerTest:
    """One test on the server: data stream setup, the run, the results exchange."""

    def __init__(self, server: BenchServer, control: sync.Connection, params: BenchParams):
        self.server, self.control, self.params = server, control, params
        self.cookie = new_cookie()
        self.udp = params.protocol == "udp" and params.mode == "throughput"
        self.flows = [Flow(i, udp=self.udp) for i in range(params.streams)]
        self.attached = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.closing = False
        self.over = threading.Event()
        self.ended = False  # cleaned up and the test slot given back

    def run(self) -> BenchResult:
        self.server._register(self.cookie, self)
        self.control.send({"type": "accept", "cookie": self.cookie.hex()})
        self._gather()
        self.control.send({"type": "ready"})
        role = roles(self.params)[1]
        side = Side(self.params, role, self.flows)
        side.start(lambda s: make_movers(self.params, s, client=False))
        got: dict[str, Any] = {}

        def handle(message: dict[str, Any]) -> None:
            check_error(message)
            if message.get("type") == "results":
                got["report"] = message["report"]
                side.drain()

        if role == "sender":
            side.drive(self.control, side.done, handle)
            self.control.send({"type": "done"})
        side.drive(self.control, lambda: "report" in got and side.done(), handle)
        side.finish()
        local = side.report()
        # free the slot before the client has its results: a script that starts the next
        # test at once must not find this server "busy"
        self.end()
        self.control.send({"type": "results", "report": local})
        start = {
            "version": VERSION,
            "timestamp": time.time(),
            "server": f"{self.params.protocol}://{hostport(self.control.local_address)}",
            "local": f"{self.params.protocol}://{hostport(self.control.remote_address)}",
            "cookie": self.cookie.hex(),
            "params": self.params.to_dict(),
        }
        return BenchResult(build_result(start, self.params, got["report"], local))

    def _gather(self) -> None:
        """Wait until every data stream has joined (SETUP_TIMEOUT), in short slices so that a
        client that goes away meanwhile frees the server at once."""
        deadline = time.monotonic() + SETUP_TIMEOUT
        for _ in self.flows:
            while not self.attached.acquire(timeout=SLICE):
                if self.control.closed:
                    raise BenchFailed("the client went away before its data streams joined")
                if time.monotonic() >= deadline:
                    raise BenchFailed("not every data stream joined the test in time")
                if self.udp:
                    self._ack_again()

    def _ack_again(self) -> None:
        """Answer hellos repeated on joined UDP streams (our first ack was lost)."""
        hello = {f.report.id: JOIN.pack(self.cookie, f.report.id) for f in self.flows}
        for flow in self.flows:
            sock = flow.sock
            with contextlib.suppress(OSError):
                while (
                    sock is not None and sock.recv(64, socket.MSG_DONTWAIT) == hello[flow.report.id]
                ):
                    sock.send(UDP_ACK)

    def _claim(self, index: int) -> Flow | None:
        """The flow ``index`` if it is free and the test still gathers (call under lock)."""
        if self.closing or not 0 <= index < len(self.flows):
            return None
        flow = self.flows[index]
        return None if flow.sock is not None or flow.conn is not None else flow

    def attach_socket(self, index: int, sock: socket.socket) -> bool:
        """A TCP/TLS data stream joined; False if it cannot (the caller closes it)."""
        with self.lock:
            flow = self._claim(index)
            if flow is None:
                return False
            sock.settimeout(None)
            flow.sock = sock
        self.attached.release()
        return True

    def udp_join(self, index: int, peer: Any) -> None:
        """A UDP stream's hello: a socket on the server's port, connected to its sender."""
        host = _local_ip(self.control.local_address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if family == socket.AF_INET and peer[0].startswith("::ffff:"):
            peer = (peer[0][len("::ffff:") :], peer[1])
        with self.lock:
            flow = self._claim(index)
            if flow is None:
                return
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                big_buffers(sock)
                sock.bind((host, split_hostport(self.control.local_address)[1]))
                sock.connect(peer)
                sock.send(UDP_ACK)
                set_recv_timeout(sock, UDP_POLL)
            except OSError:
                sock.close()
                raise
            flow.sock = sock
        self.attached.release()

    def attach(self, index: int, conn: sync.Connection) -> None:
        """A framed data stream joined: run it in this (handler) thread's lifetime."""
        with self.lock:
            if self._claim(index) is None:
                return
            self.flows[index].conn = conn
        self.attached.release()
        self.over.wait(self.params.duration + SETUP_TIMEOUT + 2 * END_GRACE)

    def end(self) -> None:
        """Clean up and give the test slot back (once)."""
        if self.ended:
            return
        self.ended = True
        try:
            self.cleanup()
        finally:
            self.server._slots.release()

    def cleanup(self) -> None:
        """Stop whatever still runs and release every socket."""
        self.server._register(self.cookie, None)
        with self.lock:
            self.closing = True
        stop_flows(self.flows, 0.5)
        for flow in self.flows:
            if flow.conn is None:
                flow.close()
        self.over.set()


def _udp_twin(listener: socket.socket) -> socket.socket:
    """A UDP socket on the address and port of a TCP listener (SO_REUSEPORT, so that each
    UDP stream can have a connected socket on the same port)."""
    family, address = listener.family, listener.getsockname()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            v6only = listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind(address)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        port = address[1]
        raise AddressInUse(
            exc.errno or 0,
            f"UDP port {port} (for UDP tests on the bench port) cannot be bound: {exc.strerror}; "
            "stop what uses it or pick another port",
        ) from exc
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data
