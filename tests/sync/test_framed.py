"""The blocking framed Connection over real loopback sockets."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from opensocket import sync
from opensocket.errors import (
    AuthenticationFailed,
    CloseCode,
    CodecError,
    ConnectionClosedError,
    ConnectionClosedOK,
    FrameTooLarge,
    NegotiationFailed,
    PeerDisconnected,
    ReadTimeout,
)
from opensocket.hooks import Hooks
from opensocket.options import ProtocolOptions
from opensocket.protocol.connection import Role
from tests.conftest import has_ipv6
from tests.sync.conftest import Recorder, echo_server, hand_handshake, in_thread, served

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_echo_over_tcp(host: str) -> None:
    assert has_ipv6(), "::1 must be bindable on this machine"
    url = f"tcp://[{host}]:0" if ":" in host else f"tcp://{host}:0"
    with echo_server(url) as server:
        assert server.addresses[0].port != 0
        with sync.connect(server.url, name="tester") as conn:
            served(conn, b"hello")
            served(conn, b"")
            assert conn.remote_address == server.url
            assert conn.local_address.startswith(f"[{host}]:" if ":" in host else f"{host}:")
            assert conn.codec.name == "bytes"
        assert conn.closed
        assert conn.close_code == CloseCode.NORMAL
        stats = conn.stats
        assert (stats.messages_out, stats.messages_in) == (2, 2)
        assert stats.bytes_in > 0
        assert stats.bytes_out > 0


def test_echo_over_unix_path(sock_path: str) -> None:
    with echo_server(f"unix://{sock_path}") as server:
        assert server.url == f"unix://{sock_path}"
        with sync.connect(server.url) as conn:
            served(conn, b"over a file")
    assert not os.path.exists(sock_path), "the socket file is removed at shutdown"


def test_echo_over_abstract_unix() -> None:
    name = f"@opensocket-sync-{os.getpid()}-{threading.get_ident()}"
    with echo_server(f"unix://{name}") as server, sync.connect(server.url) as conn:
        served(conn, b"abstract")


@pytest.mark.parametrize(
    ("codec", "message"),
    [
        ("bytes", b"\x00\xffraw"),
        ("json", {"a": [1, 2.5, "x"], "b": None}),
        ("msgpack", {"bin": b"\x00\x01", "n": -7, "list": [True, "é"]}),
    ],
)
def test_every_codec(codec: str, message: Any) -> None:
    with echo_server(codec=codec) as server, sync.connect(server.url, codec=codec) as conn:
        assert conn.codec.name == codec
        served(conn, message)
        conn.send_many([message, message])
        assert conn.recv_batch(max_messages=2, timeout=5) in ([message, message], [message])


def test_codec_preference_and_mismatch() -> None:
    with echo_server(codec=("msgpack", "json")) as server:
        with sync.connect(server.url, codec=("json", "msgpack")) as conn:
            assert conn.codec.name == "json"
        with pytest.raises(NegotiationFailed, match="codec"):
            sync.connect(server.url, codec="bytes")


def test_codec_errors_are_local_and_clear() -> None:
    with echo_server(codec="json") as server, sync.connect(server.url, codec="json") as conn:
        with pytest.raises(CodecError, match="json"):
            conn.send({1, 2})  # a set is not JSON
        served(conn, [1, 2])  # the connection is untouched
    with (
        echo_server() as server,
        sync.connect(server.url) as conn,
        pytest.raises(CodecError, match="bytes codec sends bytes, not str"),
    ):
        conn.send("text")


def test_shared_secret_right() -> None:
    with (
        echo_server(secret="correct horse", name="srv") as server,
        sync.connect(server.url, secret="correct horse") as conn,
    ):
        assert conn.peer_name == "srv"
        served(conn)


def test_shared_secret_wrong_fails_clearly_on_both_sides() -> None:
    failed = Recorder()
    hooks = Hooks(on_handshake_failed=failed)
    with echo_server(secret="correct horse", hooks=hooks) as server:
        with pytest.raises(AuthenticationFailed) as info:
            sync.connect(server.url, secret="battery staple")
        assert "secret" in str(info.value) or "proof" in str(info.value)
        peer, error = failed.get()
        assert isinstance(error, AuthenticationFailed)
        assert peer.startswith("127.0.0.1:")
        with pytest.raises(AuthenticationFailed, match="secret"):
            sync.connect(server.url)  # none at all
        failed.get()
        assert server.stats.handshakes_failed == 2


def test_many_outstanding_messages_in_order() -> None:
    count = 20_000
    with echo_server() as server, sync.connect(server.url) as conn:
        messages = [i.to_bytes(4, "big") for i in range(count)]

        def send_all() -> None:
            for start in range(0, count, 500):
                conn.send_many(messages[start : start + 500])

        thread, results = in_thread(send_all)
        received: list[bytes] = []
        while len(received) < count:
            received.extend(conn.recv_batch(timeout=5))
        thread.join(5)
        assert results.get(timeout=1) is None
        assert received == messages


def test_backpressure_bounds_the_inbox_and_drops_nothing() -> None:
    size, count = 8192, 4000  # 32 MiB: far more than the kernel buffers hold
    done = threading.Event()

    def flood(conn: sync.Connection) -> None:
        payload = bytes(size)
        for i in range(count):
            conn.send(i.to_bytes(4, "big") + payload)
        done.set()
        conn.recv()

    small = ProtocolOptions(max_queued_messages=16, max_queued_bytes=64 * 1024)
    with echo_server(handler=flood) as server, sync.connect(server.url, protocol=small) as conn:
        assert not done.wait(0.3), "the sender must be held back while we do not read"
        link = conn._link
        assert len(link.inbox) <= 16 + 64
        assert link._queued_bytes <= 64 * 1024 + 512 * 1024
        for i in range(count):
            assert conn.recv(timeout=5)[:4] == i.to_bytes(4, "big")
        assert done.wait(5)


def test_large_messages_near_and_over_the_limit() -> None:
    limit = 1 << 20
    opts = ProtocolOptions(max_frame_size=limit)
    with echo_server(protocol=opts) as server, sync.connect(server.url, protocol=opts) as conn:
        big = os.urandom(limit)
        served(conn, big)
        with pytest.raises(FrameTooLarge, match="exceeds"):
            conn.send(big + b"x")
        served(conn, b"still fine")


def test_recv_timeout_then_close() -> None:
    with echo_server() as server, sync.connect(server.url) as conn:
        with pytest.raises(ReadTimeout, match=r"within 0\.05s"):
            conn.recv(timeout=0.05)
        with pytest.raises(ReadTimeout):
            conn.recv_batch(timeout=0.01)
        served(conn)
    with pytest.raises(ConnectionClosedOK):
        conn.recv()
    with pytest.raises(ConnectionClosedOK):
        conn.send(b"late")


def test_iteration_ends_when_the_server_closes() -> None:
    def two_then_close(conn: sync.Connection) -> None:
        conn.send(b"a")
        conn.send(b"b")

    closed = Recorder()
    with echo_server(handler=two_then_close) as server:
        with sync.connect(server.url, hooks=Hooks(on_close=closed)) as conn:
            assert list(conn) == [b"a", b"b"]
            assert conn.close_code == CloseCode.NORMAL
        hooked_conn, code, _ = closed.get()
        assert hooked_conn is conn
        assert code == CloseCode.NORMAL


def test_heartbeat_keeps_an_idle_connection_alive() -> None:
    # Eight misses (0.4 s): one stall of the whole process (a full GC pass in the suite takes
    # 0.1-0.4 s) must not make a live peer look dead; two misses died of a 0.26 s stall.
    beat = ProtocolOptions(heartbeat=0.05, heartbeat_misses=8)
    with echo_server(protocol=beat) as server, sync.connect(server.url, protocol=beat) as conn:
        before = conn.stats
        with pytest.raises(ReadTimeout):
            conn.recv(timeout=1.0)  # silence from the application for over twice the dead time
        after = conn.stats
        assert not conn.closed
        assert after.bytes_in > before.bytes_in, "pings or pongs kept flowing"
        assert after.bytes_out > before.bytes_out
        assert after.messages_in == before.messages_in
        served(conn)


def test_silent_peer_is_declared_dead() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def silent_server() -> socket.socket:
        sock, _ = listener.accept()
        hand_handshake(sock, Role.SERVER, ProtocolOptions(heartbeat=0.05))
        return sock  # ...and never reads or writes again

    thread, results = in_thread(silent_server)
    beat = ProtocolOptions(heartbeat=0.05, heartbeat_misses=2)
    try:
        conn = sync.connect(f"tcp://127.0.0.1:{port}", protocol=beat)
        with pytest.raises(ConnectionClosedError) as info:
            conn.recv(timeout=5)
        assert info.value.code == CloseCode.HEARTBEAT_TIMEOUT
        assert "declared dead" in info.value.reason
        conn.close()
    finally:
        thread.join(5)
        results.get(timeout=1).close()
        listener.close()


def test_send_from_many_threads() -> None:
    with echo_server() as server, sync.connect(server.url) as conn:
        barrier = threading.Barrier(4)

        def sender(tag: int) -> None:
            barrier.wait(5)
            for i in range(500):
                conn.send(bytes([tag]) + i.to_bytes(2, "big"))

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        got: list[bytes] = []
        while len(got) < 2000:
            got.extend(conn.recv_batch(timeout=5))
        for thread in threads:
            thread.join(5)
        for tag in range(4):
            mine = [int.from_bytes(m[1:], "big") for m in got if m[0] == tag]
            assert mine == list(range(500)), "each sender's messages stay in order and whole"


@pytest.fixture
def hand_server() -> Iterator[tuple[str, Callable[[], socket.socket]]]:
    """A peer that does the server handshake by hand; yields its URL and its socket getter."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> socket.socket:
        sock, _ = listener.accept()
        hand_handshake(sock, Role.SERVER, ProtocolOptions(heartbeat=0))
        return sock

    thread, results = in_thread(accept)
    socks: list[socket.socket] = []

    def get() -> socket.socket:
        if not socks:
            thread.join(5)
            socks.append(results.get(timeout=1))
        return socks[0]

    try:
        yield f"tcp://127.0.0.1:{port}", get
    finally:
        thread.join(5)
        if not socks and not results.empty():
            socks.append(results.get())
        for sock in socks:
            sock.close()
        listener.close()


def test_close_gives_up_on_a_peer_that_never_answers(
    hand_server: tuple[str, Callable[[], socket.socket]],
) -> None:
    url, peer = hand_server
    conn = sync.connect(url, protocol=ProtocolOptions(close_timeout=0.1))
    peer()  # handshake done; the peer reads nothing from now on
    conn.close(CloseCode.NORMAL, "bye")
    assert conn.closed
    assert conn.close_code == CloseCode.NORMAL
    assert conn.close_reason == "bye"  # our close, ended by its deadline


def test_peer_reset_is_a_lost_connection(
    hand_server: tuple[str, Callable[[], socket.socket]],
) -> None:
    url, peer = hand_server
    with sync.connect(url) as conn:
        sock = peer()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # linger 0: a reset instead of a FIN
        with pytest.raises(ConnectionClosedError) as info:
            conn.recv(timeout=5)
        assert info.value.code == CloseCode.ABNORMAL
        assert info.value.reason == "connection lost: [Errno 104] Connection reset by peer"


def test_peer_closing_without_a_close_frame(
    hand_server: tuple[str, Callable[[], socket.socket]],
) -> None:
    url, peer = hand_server
    with sync.connect(url) as conn:
        peer().shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionClosedError, match="without a close frame") as info:
            conn.recv(timeout=5)
        assert info.value.code == CloseCode.ABNORMAL


def test_reset_during_the_handshake_is_a_lost_connection() -> None:
    """A server that accepts, reads the HELLO and resets: the connect error says the peer went
    away (a ConnectionClosedError, so callers that retry lost links retry it)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def reset() -> None:
            sock, _ = listener.accept()
            sock.recv(65536)  # the HELLO
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

        thread, _ = in_thread(reset)
        with pytest.raises(PeerDisconnected) as info:
            sync.connect(f"tcp://127.0.0.1:{port}")
        thread.join(5)
    assert isinstance(info.value, ConnectionClosedError) and info.value.by_peer
    assert str(info.value).startswith("connection lost: ")
