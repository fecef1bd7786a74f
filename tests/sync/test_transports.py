"""Raw streams, UDP endpoints and connecting (errors, timeouts, happy eyeballs), blocking."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from opensocket import sync
from opensocket._sockets import literal_info
from opensocket.address import parse_address
from opensocket.errors import (
    CloseCode,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectionRefused,
    ConnectTimeout,
    OpenSocketError,
    ReadTimeout,
    WriteTimeout,
)
from opensocket.options import ProtocolOptions, SocketOptions
from opensocket.protocol.connection import Role
from opensocket.sync._connect import _happy_eyeballs
from tests.sync.conftest import echo_server, hand_handshake, in_thread

pytestmark = pytest.mark.usefixtures("no_leaks")


# ---- raw streams --------------------------------------------------------------------------


def lines_then_bye(stream: sync.Stream) -> None:
    """Echo lines upper-cased until the client shuts its side, then say bye."""
    while line := stream.readline():
        stream.send_all(line.upper())
    stream.send_all(b"bye")


def test_raw_stream_helpers_and_eof() -> None:
    with (
        echo_server(handler=lines_then_bye, raw=True) as server,
        sync.connect(server.url, raw=True) as stream,
    ):
        stream.send_all(b"one\ntw")
        stream.send_all(b"o\nthree\n")
        assert stream.readline(timeout=5) == b"ONE\n"
        assert stream.recv_exactly(4, timeout=5) == b"TWO\n"
        assert stream.readline(timeout=5) == b"THREE\n"
        stream.shutdown_write()
        assert stream.recv_exactly(3, timeout=5) == b"bye"
        assert stream.recv(timeout=5) == b""  # the server returned: end of stream
        assert stream.readline(timeout=5) == b""
        with pytest.raises(ConnectionClosedError, match="ended after 0 of 1 bytes"):
            stream.recv_exactly(1, timeout=5)
        assert stream.bytes_out == 14
        assert stream.bytes_in == 17


def test_raw_stream_limits_and_timeouts() -> None:
    def chatter(stream: sync.Stream) -> None:
        stream.send_all(b"x" * 100 + b"\nlast line without newline")
        stream.recv()  # until the client goes away

    with (
        echo_server(handler=chatter, raw=True) as server,
        sync.connect(server.url, raw=True) as stream,
    ):
        with pytest.raises(ValueError, match="longer than 10 bytes"):
            stream.readline(limit=10, timeout=5)
        assert stream.readline(timeout=5) == b"x" * 100 + b"\n"
        assert stream.recv_exactly(9, timeout=5) == b"last line"
        assert stream.recv(5, timeout=5) == b" with"
        with pytest.raises(ReadTimeout, match=r"within 0\.05s"):
            stream.recv_exactly(100, timeout=0.05)


@pytest.fixture
def socat_echo() -> Iterator[int]:
    """A real ``socat`` echo server on loopback; yields its port, killed by PID afterwards."""
    proc = subprocess.Popen(
        ["socat", "-d", "-d", "TCP-LISTEN:0,bind=127.0.0.1,reuseaddr", "PIPE"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for _ in range(50):
            line = proc.stderr.readline()
            assert line, "socat exited before listening"
            found = re.search(r"listening on .*:(\d+)$", line.strip())
            if found:
                break
        assert found
        yield int(found.group(1))
    finally:
        proc.kill()
        proc.wait(5)
        assert proc.stderr is not None
        proc.stderr.close()


def test_raw_stream_with_socat(socat_echo: int) -> None:
    with sync.connect(f"tcp://127.0.0.1:{socat_echo}", raw=True) as stream:
        payload = bytes(range(256)) * 1000
        stream.send_all(payload)
        assert stream.recv_exactly(len(payload), timeout=5) == payload


# ---- UDP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_udp_send_to_and_recv_from(host: str) -> None:
    with sync.open_datagram(f"udp://{host}:0", bind=True) as server:
        assert server.local_address.port != 0
        with sync.open_datagram(str(server.local_address)) as client:
            client.send(b"ping")
            data, addr = server.recv_from(timeout=5)
            assert data == b"ping"
            assert addr[1] == client.local_address.port
            server.send_to(b"pong", addr)
            assert client.recv(timeout=5) == b"pong"
            server.send_to(b"by url", str(client.local_address))
            assert client.recv(timeout=5) == b"by url"
            with pytest.raises(ReadTimeout):
                server.recv_from(timeout=0.02)
            with pytest.raises(OpenSocketError, match="not connected"):
                server.send(b"where to?")
            with pytest.raises(OpenSocketError, match="larger than UDP allows"):
                client.send(bytes(70_000))
        assert (client.datagrams_out, client.datagrams_in) == (1, 2)


def test_udp_close_wakes_a_waiting_receiver() -> None:
    endpoint = sync.open_datagram("udp://127.0.0.1:0", bind=True)
    thread, results = in_thread(lambda: endpoint.recv_from(timeout=5))
    assert results.empty()
    endpoint.close()
    thread.join(5)
    assert isinstance(results.get(timeout=1), ConnectionClosedOK)
    with pytest.raises(ConnectionClosedOK):
        endpoint.send_to(b"x", ("127.0.0.1", 9))


# ---- connecting ---------------------------------------------------------------------------


def test_connection_refused_is_clear(free_port: int, sock_path: str) -> None:
    with pytest.raises(ConnectionRefused, match="is the server running"):
        sync.connect(f"tcp://127.0.0.1:{free_port}")
    with pytest.raises(ConnectionRefused):
        sync.connect(f"unix://{sock_path}", raw=True)


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full: new connects get no answer (SYNs are dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        yield port
    finally:
        filler.close()
        listener.close()


def test_connect_timeout(full_backlog: int) -> None:
    opts = SocketOptions(connect_timeout=0.2)
    start = time.monotonic()
    with pytest.raises(ConnectTimeout, match=r"timed out after 0\.2s"):
        sync.connect(f"tcp://127.0.0.1:{full_backlog}", options=opts)
    assert time.monotonic() - start < 3


def test_happy_eyeballs_moves_on_from_a_dead_address(full_backlog: int) -> None:
    with echo_server("tcp://[::1]:0") as server:
        port = server.addresses[0].port
        stuck = literal_info(parse_address(f"tcp://127.0.0.1:{full_backlog}"), socket.SOCK_STREAM)
        good = literal_info(parse_address(f"tcp://[::1]:{port}"), socket.SOCK_STREAM)
        refused = literal_info(parse_address("tcp://127.0.0.1:1"), socket.SOCK_STREAM)
        assert stuck
        assert good
        assert refused
        sock = _happy_eyeballs([refused, stuck, good], SocketOptions(), time.monotonic() + 5)
        with sock:
            assert sock.getpeername()[:2] == ("::1", port)


def test_happy_eyeballs_reports_the_last_failure() -> None:
    refused = literal_info(parse_address("tcp://127.0.0.1:1"), socket.SOCK_STREAM)
    assert refused
    with pytest.raises(ConnectionRefusedError):
        _happy_eyeballs([refused], SocketOptions(), None)


def test_write_timeout_drops_a_peer_that_does_not_read() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = listener.getsockname()[1]
    ready = threading.Event()

    def lazy_server() -> socket.socket:
        sock, _ = listener.accept()
        hand_handshake(sock, Role.SERVER, ProtocolOptions(heartbeat=0))
        ready.set()
        return sock  # never reads again

    thread, results = in_thread(lazy_server)
    opts = SocketOptions(write_timeout=0.2, send_buffer=4096)
    try:
        conn = sync.connect(f"tcp://127.0.0.1:{port}", options=opts)
        assert ready.wait(5)

        def flood() -> None:
            for _ in range(1000):
                conn.send(bytes(64 * 1024))

        with pytest.raises(WriteTimeout, match=r"not read for 0\.2s"):
            flood()
        assert conn.closed
        assert conn.close_code == CloseCode.SLOW_CONSUMER
        conn.close()
    finally:
        thread.join(5)
        results.get(timeout=1).close()
        listener.close()


def test_connect_by_host_name() -> None:
    with (
        echo_server() as server,
        sync.connect(f"tcp://localhost:{server.addresses[0].port}") as conn,
    ):
        conn.send(b"by name")
        assert conn.recv(timeout=5) == b"by name"
        assert conn.remote_address.startswith("tcp://localhost:")
