"""The bench server: ``BenchServer`` runs tests for clients (see ``opensocket.tools.bench``)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import sync
from .. import tls as tlsmod
from .._sockets import close_quietly
from ..address import Address, parse_address
from ..errors import (
    AddressError,
    ConfigError,
    ConnectionClosed,
    OpenSocketError,
    ReadTimeout,
    TLSError,
)
from ..options import TLSOptions
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
    make_movers,
    roles,
    stop_flows,
)

__all__ = ["BenchServer"]

log = logging.getLogger("opensocket.bench")


# ---- the server ----------------------------------------------------------------------------


def _local_ip(local_address: str) -> str:
    """The IP of ``host:port`` or ``[v6]:port`` (a v4-mapped IPv6 address as plain IPv4)."""
    host = local_address.rpartition(":")[0].strip("[]")
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return host


ResultCallback = Callable[[str, BenchResult], None]


class BenchServer:
    """The server side: listens on ``urls`` and runs tests for clients.

    ``max_tests`` tests run at once (default 1, like iperf3: others are refused with
    "busy"). ``on_result(peer, result)`` sees each finished test; ``on_error(peer, message)``
    each failed one. Use as a context manager, or ``start()``/``shutdown()``.
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
            raise ConfigError("max_tests must be at least 1")
        self.urls = [self._check(u) for u in urls]
        self.tls = tls
        self.on_result, self.on_error = on_result, on_error
        self._slots = threading.BoundedSemaphore(max_tests)
        self._pending: dict[bytes, _ServerTest] = {}
        self._lock = threading.Lock()
        self._server: sync.Server | None = None
        self._ssl: ssl.SSLContext | None = None
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
        """Bind and start serving in background threads."""
        if any(a.is_tls for a in self.urls):
            self._ssl = tlsmod.server_context(self.tls)
        self._server = sync.serve(
            list(self.urls),
            self._handle,
            codec=("json", "bytes"),
            tls=self._ssl,
        )
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
        if self._server is not None:
            self._server.shutdown(1.0)

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
            log.info("bench client %s went away: %s", peer, exc)
        except (OpenSocketError, OSError) as exc:
            log.info("bench test with %s failed: %s", peer, exc)
            self._report_error(peer, str(exc))
            with contextlib.suppress(OpenSocketError, OSError):  # tell the client why
                conn.send({"type": "error", "message": f"the server ended the test: {exc}"})
        except Exception:  # a bug must not take the server down with it
            log.exception("bench test with %s failed", peer)

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
            control.send(
                {"type": "error", "message": "the server is busy with another test: try later"}
            )
            return
        test = _ServerTest(self, control, params)
        try:
            result = test.run()
        finally:
            test.cleanup()
            self._slots.release()
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
        self.cookie = os.urandom(16)
        self.udp = params.protocol == "udp" and params.mode == "throughput"
        self.flows = [Flow(i, udp=self.udp) for i in range(params.streams)]
        self.sockets: list[socket.socket] = []
        self.attached = threading.Semaphore(0)
        self.over = threading.Event()

    def run(self) -> BenchResult:
        ports = self._listen()
        self.control.send({"type": "accept", "cookie": self.cookie.hex(), "data_ports": ports})
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
        self.control.send({"type": "results", "report": local})
        start = {
            "version": VERSION,
            "timestamp": time.time(),
            "server": self.control.local_address,
            "local": self.control.remote_address,
            "cookie": self.cookie.hex(),
            "params": self.params.to_dict(),
        }
        return BenchResult(build_result(start, self.params, got["report"], local))

    def _bind(self, kind: socket.SocketKind) -> socket.socket:
        host = _local_ip(self.control.local_address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, kind)
        self.sockets.append(sock)
        sock.bind((host, 0))
        return sock

    def _listen(self) -> list[int]:
        """Open what the data streams connect to; return the ports for the client."""
        if self.params.mode != "throughput":
            self.server._register(self.cookie, self)
            return []
        if self.udp:
            ports = []
            for flow in self.flows:
                flow.sock = self._bind(socket.SOCK_DGRAM)
                big_buffers(flow.sock)
                ports.append(flow.sock.getsockname()[1])
            return ports
        listener = self._bind(socket.SOCK_STREAM)
        listener.listen(self.params.streams + 8)
        return [listener.getsockname()[1]]

    def _gather(self) -> None:
        """Wait until every data stream has joined (SETUP_TIMEOUT), in short slices so that a
        client that goes away meanwhile frees the server at once."""
        deadline = time.monotonic() + SETUP_TIMEOUT
        pending = list(self.flows)
        while pending:
            if self.control.closed:
                raise BenchFailed("the client went away before its data streams joined")
            if time.monotonic() >= deadline:
                raise BenchFailed("not every data stream joined the test in time")
            flow = pending[0]
            if self.params.mode != "throughput":
                joined = self.attached.acquire(timeout=SLICE)
            elif self.udp:
                joined = self._udp_hello(flow)
            else:
                self._accept_one(self.sockets[0])
                joined = flow.sock is not None
                pending = [f for f in pending if f.sock is None]
                continue
            if joined:
                pending.pop(0)

    def _udp_hello(self, flow: Flow) -> bool:
        """Wait a moment for the hello of a UDP stream; connect to its sender when it comes."""
        sock = flow.sock
        assert sock is not None
        sock.settimeout(SLICE)
        try:
            data, peer = sock.recvfrom(64)
        except TimeoutError:
            return False
        if data != JOIN.pack(self.cookie, flow.report.id):
            return False
        sock.connect(peer)
        sock.send(UDP_ACK)
        sock.settimeout(None)
        set_recv_timeout(sock, UDP_POLL)
        return True

    def _accept_one(self, listener: socket.socket) -> None:
        listener.settimeout(SLICE)
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            return
        try:
            sock.settimeout(SETUP_TIMEOUT / 2)
            if self.server._ssl is not None:
                sock = self.server._ssl.wrap_socket(sock, server_side=True)
            join = _recv_exactly(sock, JOIN.size)
        except (OSError, ssl.SSLError, TLSError) as exc:
            log.info("a bench data connection failed to join: %s", exc)
            close_quietly(sock)
            return
        cookie, index = JOIN.unpack(join) if join else (b"", -1)
        if cookie != self.cookie or not 0 <= index < len(self.flows) or self.flows[index].sock:
            close_quietly(sock)  # a stranger, or a stream joining twice
            return
        sock.settimeout(None)
        self.sockets.append(sock)
        self.flows[index].sock = sock

    def attach(self, index: int, conn: sync.Connection) -> None:
        """A framed data stream joined: run it in this (handler) thread's lifetime."""
        if not 0 <= index < len(self.flows) or self.flows[index].conn is not None:
            return
        self.flows[index].conn = conn
        self.attached.release()
        self.over.wait(self.params.duration + SETUP_TIMEOUT + 2 * END_GRACE)

    def cleanup(self) -> None:
        """Stop whatever still runs and release every socket."""
        self.server._register(self.cookie, None)
        stop_flows(self.flows, 0.5)
        for sock in self.sockets:
            close_quietly(sock)
        for flow in self.flows:
            if flow.conn is None:
                flow.close()
        self.over.set()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data
