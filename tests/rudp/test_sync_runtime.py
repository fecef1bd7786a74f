"""The blocking reliable-UDP runtime over real loopback sockets (IPv4 and ::1)."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from opensocket import sync
from opensocket.errors import (
    CloseCode,
    ConfigError,
    ConnectionClosed,
    ConnectionRefused,
    ConnectTimeout,
    ReadTimeout,
    WriteTimeout,
)
from opensocket.options import ServerLimits, SocketOptions
from opensocket.proxy import Proxy
from opensocket.rudp import RudpOptions

from ..conftest import fd_count
from .test_aio_runtime import hostile_datagrams

QUICK = RudpOptions(handshake_timeout=0.5, close_timeout=1.0)


def echo(conn: sync.ReliableConnection) -> None:
    """Send every message back on the channel it came on."""
    while True:
        try:
            channel, message = conn.recv_message()
        except ConnectionClosed:
            return
        conn.send(message, channel)


@contextmanager
def running(
    handler: Callable[[Any], Any] = echo, host: str = "127.0.0.1", **kw: Any
) -> Iterator[sync.ReliableServer]:
    url = f"rudp://[{host}]:0" if ":" in host else f"rudp://{host}:0"
    server = sync.serve(url, handler, **kw)
    assert isinstance(server, sync.ReliableServer)
    try:
        yield server
    finally:
        server.shutdown(0.5)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_echo_on_every_channel(host: str) -> None:
    with running(host=host) as server:
        with sync.connect(server.url, codec="json") as conn:
            assert isinstance(conn, sync.ReliableConnection)
            for channel in range(3):
                conn.send([channel], channel=channel)
            got = sorted(conn.recv_message(timeout=2) for _ in range(3))
            assert got == [(0, [0]), (1, [1]), (2, [2])]
            assert conn.stats.srtt > 0
        assert conn.closed and conn.close_code == CloseCode.NORMAL


def test_large_and_many_messages_from_several_threads() -> None:
    big = os.urandom(500_000)
    with running() as server, sync.connect(server.url, rudp=RudpOptions()) as conn:
        conn.send(big)
        assert conn.recv(timeout=5) == big

        def sender(tag: int) -> None:
            for i in range(500):
                conn.send(bytes([tag]) + i.to_bytes(4, "big"))

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(3)]
        for thread in threads:
            thread.start()
        got: dict[int, list[int]] = {0: [], 1: [], 2: []}
        for _ in range(1500):
            message = conn.recv(timeout=5)
            got[message[0]].append(int.from_bytes(message[1:], "big"))
        for thread in threads:
            thread.join()
        assert all(seq == list(range(500)) for seq in got.values())  # ordered per sender


def test_close_code_reaches_the_server_and_iteration_ends() -> None:
    seen: list[ConnectionClosed] = []
    done = threading.Event()

    def record(conn: sync.ReliableConnection) -> None:
        try:
            conn.recv()
        except ConnectionClosed as exc:
            seen.append(exc)
            done.set()

    with running(record) as server:
        conn = sync.connect(server.url)
        conn.close(4321, "bye now")
        assert done.wait(3)
        assert (seen[0].code, seen[0].reason, seen[0].by_peer) == (4321, "bye now", True)

    def talk(conn: sync.ReliableConnection) -> None:
        for word in ("a", "b"):
            conn.send(word)

    with running(talk, codec="json") as server:
        conn = sync.connect(server.url, codec="json")
        assert list(conn) == ["a", "b"]
        assert conn.close_code == CloseCode.NORMAL


def test_server_shutdown_says_going_away() -> None:
    with running() as server:
        conn = sync.connect(server.url)
        conn.send(b"x")
        assert conn.recv(timeout=2) == b"x"
        server.shutdown(0.5)
        assert list(conn) == []
        assert conn.close_code == CloseCode.GOING_AWAY
        assert server.stats.active == 0


def test_silent_server_times_out_and_closed_port_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        url = f"rudp://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(ConnectTimeout, match="no answer"):
            sync.connect(url, rudp=QUICK)
        assert time.monotonic() - start < 3
    with pytest.raises(ConnectionRefused):
        sync.connect(url, rudp=QUICK)


def test_read_timeout_and_admission() -> None:
    with running() as server, sync.connect(server.url) as conn, pytest.raises(ReadTimeout):
        conn.recv(timeout=0.05)
    with running(limits=ServerLimits(deny=("127.0.0.0/8",))) as server:
        conn = sync.connect(server.url)
        with pytest.raises(ConnectionClosed) as info:
            conn.recv(timeout=3)
        assert info.value.code == CloseCode.ACCESS_DENIED


def test_backpressure_blocks_then_write_timeout() -> None:
    small = RudpOptions(max_message=16_384, receive_window=32_768, send_buffer=32_768)
    gate = threading.Event()
    received: list[int] = []

    def slow(conn: sync.ReliableConnection) -> None:
        gate.wait(5)
        received.extend(len(m) for m in conn)

    with running(slow, rudp=small) as server:
        conn = sync.connect(server.url, rudp=small, options=SocketOptions(write_timeout=0.3))

        def fill() -> None:
            for _ in range(100):  # the server reads nothing: credit and buffer run out
                conn.send(bytes(16_000))

        with pytest.raises(WriteTimeout):
            fill()
        gate.set()
        for _ in range(20):
            conn.send(bytes(16_000), timeout=5)
        conn.close()
        server.shutdown(2.0)
        assert len(received) >= 20


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="does not take tls="):
        sync.connect("rudp://127.0.0.1:9", tls=True)  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match="need a rudp:// address"):
        sync.serve("udp://127.0.0.1:0", echo, rudp=RudpOptions())


def test_hostile_datagrams_keep_the_server_serving() -> None:
    with running() as server:
        port = server.addresses[0].port
        conn = sync.connect(server.url)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            datagrams = hostile_datagrams(random.Random(3))
            for start in range(0, len(datagrams), 20):
                batch = datagrams[start : start + 20]
                expected = sum(server.dropped_datagrams.values()) + len(batch)
                for datagram in batch:
                    attacker.sendto(datagram, ("127.0.0.1", port))
                deadline = time.monotonic() + 2
                while sum(server.dropped_datagrams.values()) < expected:
                    assert time.monotonic() < deadline, "bad datagrams were not counted"
                    time.sleep(0.005)
        conn.send(b"still serving")
        assert conn.recv(timeout=2) == b"still serving"
        assert server.dropped_datagrams["unknown connection id"] >= 50
        conn.close()


def test_no_leaked_sockets_or_threads() -> None:
    before_fds, before_threads = fd_count(), threading.active_count()
    with running() as server:
        for _ in range(3):
            with sync.connect(server.url) as conn:
                conn.send(b"x")
                conn.recv(timeout=2)
    deadline = time.monotonic() + 2
    while threading.active_count() > before_threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fd_count() <= before_fds
    assert threading.active_count() <= before_threads


def test_dead_peer_is_detected() -> None:
    short = RudpOptions(idle_timeout=0.6, keepalive_interval=0.1, close_timeout=0.5)
    with running(rudp=short) as server:
        upstream = server.url.replace("rudp://", "udp://")
        with Proxy.in_thread("udp://127.0.0.1:0", upstream, seed=1) as proxy:
            conn = sync.connect(proxy.url.replace("udp://", "rudp://"), rudp=short)
            conn.send(b"x")
            assert conn.recv(timeout=2) == b"x"
            proxy.loss(1.0)  # the path dies: no CLOSE gets through either way
            start = time.monotonic()
            with pytest.raises(ConnectionClosed) as info:
                conn.recv(timeout=5)
            assert info.value.code in (CloseCode.IDLE_TIMEOUT, CloseCode.HEARTBEAT_TIMEOUT)
            assert time.monotonic() - start < 2
