"""BackgroundProxy: the proxy on its own thread, driven from blocking code."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from opensocket import sync
from opensocket.errors import ConfigError
from opensocket.proxy import BackgroundProxy, Proxy

from ..conftest import fd_count


def _echo(conn: sync.Stream) -> None:
    while data := conn.recv(65536):
        conn.send_all(data)


@pytest.fixture
def raw_echo() -> object:
    with sync.serve("tcp://127.0.0.1:0", _echo, raw=True) as server:
        yield server


def _proxy_threads() -> list[threading.Thread]:
    """Threads a proxy started: its loop's, and its executor's (name resolution)."""
    names = ("opensocket-proxy", "asyncio_")
    return [t for t in threading.enumerate() if t.name.startswith(names)]


def _read_until_closed(sock: socket.socket, into: bytearray) -> None:
    while data := sock.recv(100):
        into += data


def _client(url: str) -> socket.socket:
    host, port = url[len("tcp://") :].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def test_blocking_code_gets_faults(raw_echo: sync.Server) -> None:
    with Proxy.in_thread("tcp://127.0.0.1:0", raw_echo.url, seed=5) as proxy:
        fault = proxy.add_latency(0.05)
        with _client(proxy.url) as sock:
            start = time.monotonic()
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            assert time.monotonic() - start >= 0.1
            assert [f["id"] for f in proxy.list_faults()] == [fault]
            proxy.clear()
            proxy.reset_after(nbytes=6, direction="down")
            sock.sendall(b"0123456789")
            got = bytearray()
            with pytest.raises(ConnectionResetError):
                _read_until_closed(sock, got)
            assert got == b"01"  # offsets count from the connection start: "ping" + 2
        assert proxy.stats["resets"] == 1


def test_close_leaves_no_thread_and_no_fd() -> None:
    with socket.socket() as upstream:
        upstream.bind(("127.0.0.1", 0))
        upstream.listen()
        fds = fd_count()
        with (
            BackgroundProxy(
                "tcp://127.0.0.1:0", f"tcp://127.0.0.1:{upstream.getsockname()[1]}"
            ) as proxy,
            _client(proxy.url) as sock,
        ):
            accepted, _ = upstream.accept()
            sock.sendall(b"x")
            assert accepted.recv(1) == b"x"
            accepted.close()
            assert sock.recv(1) == b""  # the close was passed on
        assert not _proxy_threads()
        assert fd_count() <= fds


def test_methods_need_a_started_proxy() -> None:
    proxy = BackgroundProxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:9")
    with pytest.raises(RuntimeError, match="start"):
        proxy.stall()
    proxy.close()  # closing an unstarted proxy is harmless


def test_bad_fault_raises_in_the_caller(raw_echo: sync.Server) -> None:
    with BackgroundProxy("tcp://127.0.0.1:0", raw_echo.url) as proxy:
        with pytest.raises(ConfigError, match="fraction"):
            proxy.loss(1.5)
        assert proxy.list_faults() == []


def test_datagram_faults_refused_on_a_stream_proxy(raw_echo: sync.Server) -> None:
    with BackgroundProxy("tcp://127.0.0.1:0", raw_echo.url) as proxy:
        for add in (lambda: proxy.loss(0.2), lambda: proxy.duplicate(1), lambda: proxy.reorder(1)):
            with pytest.raises(ConfigError, match=r"applies to udp:// .* proxies only"):
                add()
        assert proxy.list_faults() == []
        assert proxy.stall() == 1  # a stream fault still goes in


def test_start_failure_stops_the_thread(raw_echo: sync.Server) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            BackgroundProxy(f"tcp://127.0.0.1:{port}", raw_echo.url).start()
    assert not _proxy_threads()


def test_background_proxy_shows_its_address_and_kind() -> None:
    with Proxy.in_thread("udp://127.0.0.1:0", "udp://127.0.0.1:9") as proxy:
        assert proxy.address is not None and proxy.address.port > 0
        assert proxy.url == str(proxy.address)
        assert proxy.is_datagram
