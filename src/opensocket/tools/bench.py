"""An iperf3-like throughput, message-rate and latency tester: ``run_client`` and ``BenchServer``.

A test has one control connection (the framed protocol with the JSON codec, on the server's
address) and one data stream per ``streams``:

* throughput over TCP or TLS: raw sockets to the server's own port;
* throughput over UDP: one datagram socket per stream, to the same port number over UDP;
* ``mode="rate"`` and ``mode="rtt"``: framed opensocket connections to the server's address.

Every data stream uses the server's one port, as iperf3 does (one port to open in a firewall).
Each first presents the test's random cookie (TCP/TLS: 16 bytes and the stream index in the
clear, before any TLS; its first byte is never "O" nor 0x16, which is how the server tells it
from a framed connection), so strangers cannot join a test. The
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
from typing import Any, Final

from .. import sync
from .. import tls as tlsmod
from .._sockets import close_quietly
from ..address import Address, parse_address
from ..errors import (
    AddressError,
    BadMagic,
    ConfigError,
    HandshakeError,
    OpenSocketError,
    ProtocolError,
    TLSError,
)
from ..options import ProtocolOptions, SocketOptions, TLSOptions
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
    hostport,
    make_movers,
    roles,
    split_hostport,
    stop_flows,
)

__all__ = [
    "DEFAULT_PORT",
    "BenchFailed",
    "BenchResult",
    "BenchServer",
    "bench_address",
    "make_params",
    "run_client",
]

log = logging.getLogger("opensocket.bench")

SCHEMES: Final = frozenset({"tcp", "tls", "udp"})
HANDSHAKE_TIMEOUT: Final = 3.0  # a bench server answers at once; anything else is not one
_EXAMPLES: Final = (
    f"127.0.0.1, host:{DEFAULT_PORT}, tcp://host:{DEFAULT_PORT}, udp://[::1]:{DEFAULT_PORT}"
)
_SERVE_HINT: Final = "start one with: opensocket bench serve --listen tcp://*:PORT"


# ---- addresses and parameters --------------------------------------------------------------


def _with_port(rest: str) -> str:
    """``rest`` (what follows ``scheme://``) with the default port when it names none."""
    if rest.startswith("["):
        return rest if "]:" in rest else f"{rest}:{DEFAULT_PORT}"
    if rest.count(":") > 1:  # a bare IPv6 literal: ::1
        return f"[{rest}]:{DEFAULT_PORT}"
    return rest if ":" in rest else f"{rest}:{DEFAULT_PORT}"


def bench_address(url: str) -> Address:
    """The server address of ``url``: ``tcp://h:p``, ``tls://``, ``udp://``, or a bare
    ``host``/``host:port`` (tcp); the port defaults to DEFAULT_PORT (5210)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "tcp", url
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise AddressError(
            f"bench runs over tcp://, tls:// or udp://, not {scheme}:// (got {url!r}); "
            f"examples: {_EXAMPLES}"
        )
    full = f"{scheme}://{_with_port(rest)}"
    try:
        return parse_address(full, schemes=SCHEMES)
    except AddressError as exc:
        problem = str(exc).partition("; examples:")[0]
        raise AddressError(f"{problem}; examples: {_EXAMPLES}") from None


def make_params(
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
) -> tuple[Address, BenchParams]:
    """The server address and the checked test parameters (AddressError, ConfigError)."""
    addr = bench_address(url)
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
    return addr, params


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
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    on_interval: IntervalCallback | None = None,
) -> BenchResult:
    """Run one test against the bench server at ``url`` and return its result.

    The protocol is the URL's scheme (tcp, tls, udp) unless ``protocol`` says otherwise.
    ``length`` 0 takes the default (128 KiB writes, 1400-byte datagrams, 64-byte messages);
    ``bitrate`` is bits/s per stream (UDP default 1 Mbit/s like iperf3; 0: unlimited).
    ``gso`` lets UDP senders hand the kernel up to 64 datagrams per call (UDP GSO, where
    supported); the datagrams on the wire are the same. ``on_interval`` sees each interval
    record as it is taken (``interval`` 0: one record for the whole test). A server that does
    not complete the opensocket handshake within ``handshake_timeout`` is not a bench server.
    Raises AddressError, ConfigError, ConnectError, TLSError or BenchFailed.
    """
    addr, params = make_params(
        url,
        protocol=protocol,
        mode=mode,
        streams=streams,
        duration=duration,
        interval=interval,
        length=length,
        bitrate=bitrate,
        reverse=reverse,
        gso=gso,
    )
    if params.protocol != "tls" and tls is not None:
        raise ConfigError("TLS options apply to tls:// tests only: use a tls:// URL")
    control_addr = Address("tls" if params.protocol == "tls" else "tcp", addr.host, addr.port)
    opts = SocketOptions(connect_timeout=connect_timeout)
    try:
        control = _connect_control(control_addr, tls, opts, handshake_timeout)
        try:
            return _Client(control, control_addr, params, tls, opts, on_interval).run()
        finally:
            with contextlib.suppress(OpenSocketError, OSError):
                control.close()
    except OpenSocketError as exc:  # TLS 1.3 reports it on the first read, as a lost connection
        if "CERTIFICATE_REQUIRED" in str(exc).upper():
            raise TLSError(
                f"{control_addr.hostport} requires a client certificate: pass --tls-cert FILE "
                "--tls-key FILE (in Python: TLSOptions cert_file and key_file)"
            ) from exc
        raise


def _connect_control(
    addr: Address, tls: TLSOptions | None, opts: SocketOptions, handshake_timeout: float
) -> sync.Connection:
    """The control connection; a peer that does not answer as opensocket is a BenchFailed."""
    proto = ProtocolOptions(handshake_timeout=handshake_timeout)
    try:
        return sync.connect(addr, codec="json", tls=tls, options=opts, protocol=proto)
    except (HandshakeError, BadMagic, ProtocolError) as exc:
        if isinstance(exc, BadMagic):
            what = "answered with something other than the opensocket protocol"
        elif isinstance(exc, TimeoutError):
            what = f"did not answer the opensocket handshake within {handshake_timeout:g}s"
        else:
            what = f"failed the opensocket handshake ({exc})"
        raise BenchFailed(
            f"{addr.hostport} {what}: is this an opensocket bench server? {_SERVE_HINT}"
        ) from exc


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
            "server": f"{params.protocol}://{self.addr.hostport}",
            "local": f"{params.protocol}://{hostport(control.local_address)}",
            "cookie": accept["cookie"],
            "params": params.to_dict(),
        }
        try:
            self._open(cookie)
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

    def _open(self, cookie: bytes) -> None:
        params = self.params
        udp = params.protocol == "udp" and params.mode == "throughput"
        # the data streams go where the control connection went: same IP, same port
        host = split_hostport(self.control.remote_address)[0]
        for i in range(params.streams):
            flow = Flow(i, udp=udp)
            self.flows.append(flow)
            if params.mode != "throughput":
                flow.conn = sync.connect(self.addr, codec="bytes", tls=self.tls, options=self.opts)
                flow.conn.send(JOIN.pack(cookie, i))
            elif udp:
                flow.sock = self._udp_socket(host, cookie, i)
            else:
                flow.sock = self._tcp_socket(host, cookie, i)

    def _tcp_socket(self, host: str, cookie: bytes, index: int) -> socket.socket:
        target = Address("tcp", host, self.addr.port)
        sock: socket.socket = sync.open_socket(target, self.opts)
        sock.setblocking(True)
        sock.sendall(JOIN.pack(cookie, index))  # in the clear: the server routes on it
        if self.params.protocol == "tls":
            sock = self._wrap(sock, target)
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

    def _udp_socket(self, host: str, cookie: bytes, index: int) -> socket.socket:
        port = self.addr.port
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
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
                    f"no answer to UDP datagrams sent to {host} port {port}: a firewall may "
                    f"drop UDP (the bench server needs UDP port {port} open as well as TCP)"
                )
            sock.settimeout(None)
            set_recv_timeout(sock, UDP_POLL)
        except BaseException:
            sock.close()
            raise
        return sock
