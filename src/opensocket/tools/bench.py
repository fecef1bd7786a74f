"""An iperf3-like throughput, message-rate and latency tester: ``run_client`` and ``BenchServer``.

A test has one control connection (the framed protocol with the JSON codec, on the server's
address) and one data stream per ``streams``:

* throughput over TCP or TLS: raw sockets to an ephemeral port the server opens for the test;
* throughput over UDP: one datagram socket per stream, each on an ephemeral server port;
* ``mode="rate"`` and ``mode="rtt"``: framed opensocket connections to the server's address.

Each data stream first presents the test's random cookie, so strangers cannot join a test. The
sender of each stream is the client, or the server with ``reverse=True``. Both sides sample
their counters every ``interval`` seconds and trade their reports at the end; the result is
the document described by ``opensocket.tools._bench_proto`` (``BenchResult.data``)::

    from opensocket.tools.bench import BenchServer, run_client

    with BenchServer(["tcp://127.0.0.1:0"]) as server:
        result = run_client(server.url, duration=1.0, streams=2)
        print(result.receiver_bps)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from typing import Any

from .. import sync
from .. import tls as tlsmod
from .._sockets import close_quietly
from ..address import Address, parse_address
from ..errors import (
    ConfigError,
    OpenSocketError,
)
from ..options import SocketOptions, TLSOptions
from ._bench_flows import (
    UDP_POLL,
    Flow,
    set_recv_timeout,
)
from ._bench_proto import (
    DEFAULT_UDP_BITRATE,
    VERSION,
    BenchParams,
    Mode,
    build_result,
)
from ._bench_server import BenchServer
from ._bench_side import (
    DEFAULT_PORT,
    END_GRACE,
    JOIN,
    SETUP_TIMEOUT,
    UDP_ACK,
    UDP_HELLO_TRIES,
    BenchFailed,
    BenchResult,
    IntervalCallback,
    Side,
    big_buffers,
    check_error,
    expect,
    make_movers,
    roles,
    stop_flows,
)

__all__ = ["DEFAULT_PORT", "BenchFailed", "BenchResult", "BenchServer", "run_client"]

log = logging.getLogger("opensocket.bench")


# ---- the client ----------------------------------------------------------------------------


def run_client(
    url: str,
    *,
    protocol: str | None = None,
    mode: Mode = "throughput",
    streams: int = 1,
    duration: float = 10.0,
    interval: float = 1.0,
    length: int = 0,
    bitrate: float | None = None,
    reverse: bool = False,
    gso: bool = True,
    tls: TLSOptions | None = None,
    connect_timeout: float = 10.0,
    on_interval: IntervalCallback | None = None,
) -> BenchResult:
    """Run one test against the bench server at ``url`` and return its result.

    The protocol is the URL's scheme (tcp, tls, udp) unless ``protocol`` says otherwise.
    ``length`` 0 takes the default (128 KiB writes, 1400-byte datagrams, 64-byte messages);
    ``bitrate`` is bits/s per stream (UDP default 1 Mbit/s like iperf3; 0: unlimited).
    ``gso`` lets UDP senders hand the kernel up to 64 datagrams per call (UDP GSO, where
    supported); the datagrams on the wire are the same. ``on_interval`` sees each interval
    record as it is taken. Raises ConnectError, TLSError,
    ConfigError or BenchFailed.
    """
    addr = parse_address(url, default_scheme="tcp", schemes=frozenset({"tcp", "tls", "udp"}))
    proto = protocol or addr.scheme
    if bitrate is None:
        bitrate = DEFAULT_UDP_BITRATE if proto == "udp" and mode == "throughput" else 0.0
    params = BenchParams(
        protocol=proto,  # type: ignore[arg-type]  # checked by BenchParams
        mode=mode,
        streams=streams,
        duration=duration,
        interval=interval,
        length=length,
        bitrate=bitrate,
        reverse=reverse,
        gso=gso,
    )
    if proto != "tls" and tls is not None:
        raise ConfigError("TLS options apply to tls:// tests only: use a tls:// URL")
    control_addr = Address("tls" if proto == "tls" else "tcp", addr.host, addr.port)
    opts = SocketOptions(connect_timeout=connect_timeout)
    control = sync.connect(control_addr, codec="json", tls=tls, options=opts)
    try:
        return _Client(control, control_addr, params, tls, opts, on_interval).run()
    finally:
        with contextlib.suppress(OpenSocketError, OSError):
            control.close()


class _Client:
    def __init__(
        self,
        control: sync.Connection,
        addr: Address,
        params: BenchParams,
        tls: TLSOptions | None,
        opts: SocketOptions,
        on_interval: IntervalCallback | None,
    ) -> None:
        self.control, self.addr, self.params = control, addr, params
        self.tls, self.opts, self.on_interval = tls, opts, on_interval
        self.flows: list[Flow] = []

    def run(self) -> BenchResult:
        params, control = self.params, self.control
        control.send({"type": "start", "version": VERSION, "params": params.to_dict()})
        accept = expect(control, "accept", SETUP_TIMEOUT)
        cookie = bytes.fromhex(str(accept["cookie"]))
        start = {
            "version": VERSION,
            "timestamp": time.time(),
            "server": str(self.addr),
            "local": control.local_address,
            "cookie": accept["cookie"],
            "params": params.to_dict(),
        }
        try:
            self._open(cookie, [int(p) for p in accept.get("data_ports", [])])
            expect(control, "ready", SETUP_TIMEOUT)
            side = self._run_side()
            control.send({"type": "results", "report": side.report()})
            remote = expect(control, "results", END_GRACE)["report"]
        finally:
            stop_flows(self.flows, 0.5)
            for flow in self.flows:
                flow.close()
        latencies = [x for flow in self.flows for x in flow.latencies]
        for problem in side.errors():
            log.warning("%s", problem)
        return BenchResult(build_result(start, params, side.report(), remote, latencies), latencies)

    def _run_side(self) -> Side:
        role = roles(self.params)[0]
        side = Side(self.params, role, self.flows, self.on_interval)
        side.start(lambda s: make_movers(self.params, s, client=True))

        def handle(message: dict[str, Any]) -> None:
            check_error(message)
            if message.get("type") == "done":
                side.drain()

        side.drive(self.control, side.done, handle)
        side.finish()
        return side

    def _open(self, cookie: bytes, ports: list[int]) -> None:
        params = self.params
        udp = params.protocol == "udp" and params.mode == "throughput"
        for i in range(params.streams):
            flow = Flow(i, udp=udp)
            self.flows.append(flow)
            if params.mode != "throughput":
                flow.conn = sync.connect(self.addr, codec="bytes", tls=self.tls, options=self.opts)
                flow.conn.send(JOIN.pack(cookie, i))
            elif udp:
                flow.sock = self._udp_socket(ports[i], cookie, i)
            else:
                flow.sock = self._tcp_socket(ports[0], cookie, i)

    def _tcp_socket(self, port: int, cookie: bytes, index: int) -> socket.socket:
        target = Address("tcp", self.addr.host, port)
        sock: socket.socket = sync.open_socket(target, self.opts)
        sock.setblocking(True)
        if self.params.protocol == "tls":
            sock = self._wrap(sock, target)
        sock.sendall(JOIN.pack(cookie, index))
        return sock

    def _wrap(self, sock: socket.socket, target: Address) -> ssl.SSLSocket:
        ctx = tlsmod.client_context(self.tls)
        name = tlsmod.server_hostname(self.addr, self.tls) if ctx.check_hostname else None
        sock.settimeout(SETUP_TIMEOUT)
        try:
            wrapped = ctx.wrap_socket(sock, server_hostname=name)
        except (ssl.SSLError, OSError) as exc:
            close_quietly(sock)
            raise tlsmod.tls_error(exc, target.hostport) from exc
        wrapped.settimeout(None)
        return wrapped

    def _udp_socket(self, port: int, cookie: bytes, index: int) -> socket.socket:
        infos = socket.getaddrinfo(self.addr.host, port, type=socket.SOCK_DGRAM)
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            big_buffers(sock)
            sock.connect(sockaddr)
            sock.settimeout(0.2)
            for _ in range(UDP_HELLO_TRIES):
                sock.send(JOIN.pack(cookie, index))
                with contextlib.suppress(TimeoutError, ConnectionRefusedError):
                    if sock.recv(64) == UDP_ACK:
                        break
            else:
                raise BenchFailed(
                    f"no answer to UDP datagrams sent to port {port}: a firewall may drop UDP"
                )
            sock.settimeout(None)
            set_recv_timeout(sock, UDP_POLL)
        except BaseException:
            sock.close()
            raise
        return sock
