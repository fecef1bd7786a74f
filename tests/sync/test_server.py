"""The blocking Server: lifecycle, protection, handler pool, TLS."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import pytest

from opensocket import sync
from opensocket.errors import (
    CloseCode,
    ConfigError,
    ConnectionClosedError,
    ConnectionRefused,
    ConnectionRejected,
    HandshakeTimeout,
    TLSHandshakeError,
    UnknownCA,
)
from opensocket.hooks import Hooks
from opensocket.options import ServerLimits
from opensocket.protocol.frame import FrameType
from tests.conftest import fd_count
from tests.sync.conftest import (
    Recorder,
    close_frames,
    echo,
    echo_server,
    raw_connect,
    read_until_eof,
    served,
)
from tests.tlsutil import Pki, make_pki

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("sync-pki"))


def test_shutdown_with_a_running_handler() -> None:
    finished = Recorder()

    def handler(conn: sync.Connection) -> None:
        try:
            echo(conn)
        finally:
            finished("handler returned")

    server = sync.serve("tcp://127.0.0.1:0", handler)
    url = server.url
    conn = sync.connect(url)
    served(conn)
    server.shutdown(timeout=0.05)
    assert finished.get() == "handler returned"
    assert list(conn) == []  # 'going away' ends iteration normally
    assert conn.close_code == CloseCode.GOING_AWAY
    assert "shutting down" in conn.close_reason
    with pytest.raises(ConnectionRefused, match="nothing is listening"):
        sync.connect(url)
    server.shutdown()  # a second shutdown is harmless


def test_shutdown_lets_a_handler_finish_within_the_grace_period() -> None:
    started = threading.Event()
    release = threading.Event()

    def handler(conn: sync.Connection) -> None:
        started.set()
        release.wait(5)
        conn.send(b"finished in time")

    with sync.serve("tcp://127.0.0.1:0", handler) as server, sync.connect(server.url) as conn:
        assert started.wait(5)
        stopper = threading.Thread(target=server.shutdown, kwargs={"timeout": 5})
        stopper.start()
        release.set()
        assert conn.recv(timeout=5) == b"finished in time"
        stopper.join(5)
        assert list(conn) == []
        assert conn.close_code == CloseCode.GOING_AWAY  # finished, while the server goes away


def test_shutdown_ends_idle_handlers_at_once_and_delivers_what_was_queued() -> None:
    import time

    got: list[bytes] = []

    def handler(conn: sync.Connection) -> None:
        for message in conn:  # ends with 'going away' once the server shuts down
            got.append(message)
            conn.send(message)

    server = sync.serve("tcp://127.0.0.1:0", handler)
    with sync.connect(server.url) as conn:
        conn.send(b"last")
        assert conn.recv(timeout=5) == b"last"
        started = time.monotonic()
        server.shutdown(timeout=30)
        assert time.monotonic() - started < 5  # not the 30 s grace: the idle handler ended
        assert got == [b"last"]
        assert list(conn) == []
        assert conn.close_code == CloseCode.GOING_AWAY


def test_handler_exception_gives_the_peer_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    def broken(conn: sync.Connection) -> None:
        conn.recv()
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, "opensocket"):
        with echo_server(handler=broken) as server, sync.connect(server.url) as conn:
            conn.send(b"trigger")
            with pytest.raises(ConnectionClosedError) as info:
                conn.recv(timeout=5)
            assert info.value.code == CloseCode.INTERNAL_ERROR
            assert "RuntimeError" in info.value.reason
            assert "boom" not in info.value.reason, "internals stay on the server"
        assert server.stats.errors == 1
    assert any("handler failed" in r.getMessage() for r in caplog.records)


def test_connection_limit_rejects_with_a_clear_error() -> None:
    limits = ServerLimits(max_connections=1)
    with echo_server(limits=limits) as server, sync.connect(server.url) as first:
        with pytest.raises(ConnectionRejected, match="connection limit"):
            sync.connect(server.url)
        served(first)
        assert server.stats.dropped["connection limit"] == 1


def test_busy_workers_queue_then_refuse() -> None:
    limits = ServerLimits(workers=1, max_pending=1)
    with echo_server(limits=limits) as server:
        first = sync.connect(server.url)
        served(first)  # holds the only worker
        waiting = sync.connect(server.url)  # admitted: waits for a worker
        waiting.send(b"queued")
        with pytest.raises(ConnectionRejected, match="server busy"):
            sync.connect(server.url)
        first.close()
        assert waiting.recv(timeout=5) == b"queued"
        waiting.close()


def test_silent_client_is_dropped_after_the_handshake_timeout() -> None:
    failed = Recorder()
    limits = ServerLimits(handshake_timeout=1.0, workers=1)  # the good client's too
    with echo_server(limits=limits, hooks=Hooks(on_handshake_failed=failed)) as server:
        port = server.addresses[0].port
        with raw_connect("127.0.0.1", port) as silent, sync.connect(server.url) as good:
            served(good)  # the silent client holds no worker
            frames = close_frames(read_until_eof(silent))
            assert frames == [(FrameType.ERROR, CloseCode.HANDSHAKE_TIMEOUT, frames[0][2])]
            assert "1s" in frames[0][2]
            served(good)
        peer, error = failed.get()
        assert isinstance(error, HandshakeTimeout)
        assert peer.startswith("127.0.0.1:")
        assert server.stats.handshakes_failed == 1


def test_hooks_see_connect_and_close() -> None:
    connected, closed = Recorder(), Recorder()
    hooks = Hooks(on_connect=connected, on_close=closed)
    with echo_server(hooks=hooks, name="hooked") as server:
        with sync.connect(server.url, name="visitor") as conn:
            served(conn)
        server_conn = connected.get()
        assert server_conn.peer_name == "visitor"
        hooked, code, _ = closed.get()
        assert hooked is server_conn
        assert code == CloseCode.NORMAL


def test_idle_timeout_closes_quiet_connections() -> None:
    limits = ServerLimits(idle_timeout=0.1)
    with echo_server(limits=limits) as server, sync.connect(server.url) as conn:
        with pytest.raises(ConnectionClosedError) as info:
            conn.recv(timeout=5)
        assert info.value.code == CloseCode.IDLE_TIMEOUT


def test_no_thread_or_fd_leak_after_shutdown() -> None:
    threads, fds = threading.active_count(), fd_count()
    server = sync.serve(["tcp://127.0.0.1:0", "tcp://[::1]:0"], echo)
    assert len(server.addresses) == 2
    conns = [sync.connect(str(addr)) for addr in server.addresses for _ in range(3)]
    for conn in conns:
        served(conn)
    idle = raw_connect("127.0.0.1", server.addresses[0].port)  # stuck in the handshake
    conns[0].close()
    server.shutdown(timeout=0.05)
    assert all(conn.wait_closed(5) for conn in conns)
    with idle:
        frames = close_frames(read_until_eof(idle))
    assert [code for _, code, _ in frames] == [CloseCode.GOING_AWAY]
    for thread in threading.enumerate():
        if thread.name.startswith("opensocket-"):
            thread.join(5)
    assert threading.active_count() <= threads  # earlier tests' threads may end meanwhile
    assert fd_count() <= fds


def test_serve_rejects_bad_configurations() -> None:
    with pytest.raises(ConfigError, match="needs a certificate and its key"):
        sync.serve("tls://127.0.0.1:0", echo)
    with pytest.raises(ConfigError, match="two servers"):
        sync.serve(["tls://127.0.0.1:0", "tcp://127.0.0.1:0"], echo, tls=None)


def test_address_in_use_is_reported(free_port: int) -> None:
    from opensocket.errors import AddressInUse

    with (
        echo_server(f"tcp://127.0.0.1:{free_port}"),
        pytest.raises(AddressInUse, match="already in use"),
    ):
        sync.serve(f"tcp://127.0.0.1:{free_port}", echo)


# ---- TLS ----------------------------------------------------------------------------------


def test_framed_echo_over_tls(pki: Pki) -> None:
    with echo_server("tls://127.0.0.1:0", tls=pki.server_tls()) as server:
        assert server.url.startswith("tls://")
        with sync.connect(server.url, tls=pki.client_tls()) as conn:
            served(conn, b"secret" * 10_000)
            conn.send_many([b"x"] * 1000)
            got = 0
            while got < 1000:
                got += len(conn.recv_batch(timeout=5))


def test_tls_failures_are_clear_on_both_sides(pki: Pki) -> None:
    failed = Recorder()
    with echo_server(
        "tls://127.0.0.1:0", tls=pki.server_tls(), hooks=Hooks(on_handshake_failed=failed)
    ) as server:
        with pytest.raises(UnknownCA, match="trusted"):
            sync.connect(server.url, tls=pki.client_tls(ca_file=pki.other_ca_cert))
        _, error = failed.get()
        assert isinstance(error, UnknownCA | TLSHandshakeError)
        plain = server.url.replace("tls://", "tcp://")
        with pytest.raises(Exception, match=r"TLS|handshake"):
            sync.connect(plain)
        failed.get()
        assert server.stats.handshakes_failed == 2


def test_tls_handshake_timeout_frees_the_connection(pki: Pki) -> None:
    failed = Recorder()
    limits = ServerLimits(handshake_timeout=0.2)
    with (
        echo_server(
            "tls://127.0.0.1:0",
            tls=pki.server_tls(),
            limits=limits,
            hooks=Hooks(on_handshake_failed=failed),
        ) as server,
        raw_connect("127.0.0.1", server.addresses[0].port) as silent,
    ):
        _, error = failed.get()
        assert "in time" in str(error)
        assert read_until_eof(silent) == b""


def test_raw_stream_over_tls(pki: Pki, tmp_path: Path) -> None:
    def upper(stream: sync.Stream) -> None:
        while line := stream.readline():
            stream.send_all(line.upper())

    with (
        echo_server("tls://127.0.0.1:0", handler=upper, raw=True, tls=pki.server_tls()) as server,
        sync.connect(server.url, raw=True, tls=pki.client_tls()) as stream,
    ):
        stream.send_all(b"hello\nworld\n")
        assert stream.readline(timeout=5) == b"HELLO\n"
        assert stream.recv_exactly(6, timeout=5) == b"WORLD\n"


def test_unix_listener_survives_a_stale_socket_file(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()  # leaves the file behind, as a crashed server would
    with echo_server(f"unix://{sock_path}") as server, sync.connect(server.url) as conn:
        served(conn)


def test_raw_handler_failure_is_counted_and_the_stream_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(stream: sync.Stream) -> None:
        stream.readline()
        raise RuntimeError("raw boom")

    with caplog.at_level(logging.ERROR, "opensocket"):
        with (
            echo_server(handler=broken, raw=True) as server,
            sync.connect(server.url, raw=True) as stream,
        ):
            stream.send_all(b"go\n")
            assert stream.recv(timeout=5) == b""
        assert server.stats.errors == 1
    assert any("handler failed" in r.getMessage() for r in caplog.records)
