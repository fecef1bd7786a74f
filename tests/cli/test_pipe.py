"""``opensocket connect`` and ``opensocket listen`` with socat, nc and plain sockets as peers."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opensocket.cli import main
from opensocket.cli import pipe as pipe_cli
from tests.tlsutil import make_pki

from .conftest import WAIT, EchoServers, run_cli, socat_echo, tool


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """Replace stdin by an in-memory stream (read by the thread fallback)."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))


# ---- connect ---------------------------------------------------------------------------------


def test_connect_pipes_a_binary_blob_through_socat(spawn: Any, free_port: int) -> None:
    socat_echo(spawn, f"TCP-LISTEN:{free_port},bind=127.0.0.1,reuseaddr")
    blob = os.urandom(1 << 20)
    done = run_cli("connect", f"tcp://127.0.0.1:{free_port}", input=blob)
    assert done.returncode == 0, done.stderr
    assert done.stdout == blob


def test_connect_in_process_over_unix(
    spawn: Any,
    sock_path: str,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    socat_echo(spawn, f"UNIX-LISTEN:{sock_path}")
    blob = bytes(range(256)) * 512
    _stdin(monkeypatch, blob)
    assert main(["connect", f"unix://{sock_path}", "--no-uvloop"]) == 0
    assert capsysbinary.readouterr().out == blob


def test_connect_without_half_close_quits_after_q(
    spawn: Any, free_port: int, monkeypatch: pytest.MonkeyPatch, capsysbinary: Any
) -> None:
    """socat never sees our EOF, so only -q ends the run (with the echo received)."""
    socat_echo(spawn, f"TCP-LISTEN:{free_port},bind=127.0.0.1,reuseaddr")
    _stdin(monkeypatch, b"kept open\n")
    url = f"tcp://127.0.0.1:{free_port}"
    assert main(["connect", url, "--no-half-close", "-q", "0.3"]) == 0
    assert capsysbinary.readouterr().out == b"kept open\n"


def test_connect_refused_exits_1(free_port: int) -> None:
    done = run_cli("connect", f"tcp://127.0.0.1:{free_port}")
    assert done.returncode == 1
    assert done.stderr.startswith(b"opensocket connect: error: nothing is listening on 127.0.0.1:")


def test_connect_udp_to_the_echo_server(echo_servers: EchoServers) -> None:
    done = run_cli("connect", echo_servers.urls["udp"], "-q", "0.3", input=b"datagram")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"datagram"


def test_connect_tls_to_a_raw_tls_echo_server(spawn: Any, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = spawn(
        "echo", "serve", "tls://127.0.0.1:0", "--raw", "--json",
        "--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
    )  # fmt: skip
    url = server.json_line()["addresses"][0]
    # TLS cannot half-close in asyncio: -q ends the run once the echo is back
    done = run_cli("connect", url, "--tls-ca", pki.ca_cert, "-q", "0.5", input=b"secret\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"secret\n"
    refused = run_cli("connect", url, "--tls-ca", pki.other_ca_cert, input=b"x")
    assert refused.returncode == 1
    assert refused.stderr.startswith(b"opensocket connect: error: ")
    assert server.stop() == 0


# ---- listen ----------------------------------------------------------------------------------


def test_listen_with_socat_as_the_peer(spawn: Any) -> None:
    listener = spawn("listen", "tcp://127.0.0.1:0", stdin=b"to the peer\n")
    port = listener.expect(r"^listening on tcp://127\.0\.0\.1:(\d+)$", which="err").group(1)
    peer = subprocess.run(
        [tool("socat"), "-", f"TCP:127.0.0.1:{port}"],
        input=b"to the listener\n",
        capture_output=True,
        timeout=WAIT,
    )
    assert peer.returncode == 0
    assert peer.stdout == b"to the peer\n"
    assert listener.wait() == 0
    assert listener.rest() == "to the listener\n"
    assert listener.line("err").startswith("connection from 127.0.0.1:")


def test_listen_keep_open_serves_nc_one_after_another(spawn: Any) -> None:
    listener = spawn("listen", "tcp://127.0.0.1:0", "--keep-open")
    port = listener.expect(r"listening on tcp://127\.0\.0\.1:(\d+)", which="err").group(1)
    for text in (b"first\n", b"second\n"):
        peer = subprocess.run(
            [tool("nc"), "-N", "127.0.0.1", port], input=text, capture_output=True, timeout=WAIT
        )
        assert peer.returncode == 0
        assert listener.line() == text.decode()
    assert listener.stop() == 0


def test_listen_in_process_with_a_retrying_peer(
    free_port: int, monkeypatch: pytest.MonkeyPatch, capsysbinary: Any
) -> None:
    """socat retries until the listener is up; the listener ends when socat closes."""
    peer = subprocess.Popen(
        [tool("socat"), "-", f"TCP:127.0.0.1:{free_port},retry=100,interval=0.05"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert peer.stdin is not None
        peer.stdin.write(b"\x00\xffpeer")
        peer.stdin.close()
        _stdin(monkeypatch, b"listener\n")
        assert main(["listen", f"tcp://127.0.0.1:{free_port}"]) == 0
        assert peer.wait(timeout=WAIT) == 0
        assert peer.stdout is not None
        assert peer.stdout.read() == b"listener\n"
    finally:
        if peer.poll() is None:
            peer.kill()
        peer.wait(timeout=WAIT)
        if peer.stdout is not None:
            peer.stdout.close()
    captured = capsysbinary.readouterr()
    assert captured.out == b"\x00\xffpeer"
    assert re.search(rb"listening on tcp://127\.0\.0\.1:\d+\nconnection from ", captured.err)


def test_listen_udp_answers_the_last_sender(spawn: Any) -> None:
    listener = spawn("listen", "udp://127.0.0.1:0", "-q", "0.2", stdin=b"answer")
    port = int(listener.expect(r"listening on udp://127\.0\.0\.1:(\d+)", which="err").group(1))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.settimeout(WAIT)
        peer.sendto(b"question", ("127.0.0.1", port))
        assert peer.recvfrom(100) == (b"answer", ("127.0.0.1", port))
    assert listener.wait() == 0
    assert listener.rest() == "question"


def _when_listening(monkeypatch: pytest.MonkeyPatch, peer: Any) -> threading.Thread:
    """Run ``peer(addresses)`` in a thread once the in-process listener has announced."""
    started = threading.Event()
    addresses: list[Any] = []
    announce = pipe_cli._announce

    def announced(bound: list[Any]) -> None:
        announce(bound)
        addresses.extend(bound)
        started.set()

    def run() -> None:
        if started.wait(WAIT):
            peer(addresses)

    monkeypatch.setattr(pipe_cli, "_announce", announced)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_listen_udp_in_process(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    replies: list[bytes] = []

    def peer(addresses: list[Any]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(WAIT)
            sock.sendto(b"question", (addresses[0].host, addresses[0].port))
            replies.append(sock.recv(100))

    _stdin(monkeypatch, b"answer")
    thread = _when_listening(monkeypatch, peer)
    try:
        assert main(["listen", "udp://127.0.0.1:0", "-q", "0", "--no-uvloop"]) == 0
    finally:
        thread.join(WAIT)
    assert replies == [b"answer"]
    assert capsysbinary.readouterr().out == b"question"


def test_listen_keep_open_stops_on_sigint_with_a_peer_connected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stdin is empty: the peer sees our EOF at once and stays; SIGINT still exits 0."""
    seen: list[bytes] = []

    def peer(addresses: list[Any]) -> None:
        with socket.create_connection((addresses[0].host, addresses[0].port), WAIT) as sock:
            try:
                seen.append(sock.recv(100))  # b"": the listener half-closed
            finally:
                os.kill(os.getpid(), signal.SIGINT)

    _stdin(monkeypatch, b"")
    thread = _when_listening(monkeypatch, peer)
    try:
        assert main(["listen", "tcp://127.0.0.1:0", "--keep-open"]) == 0
    finally:
        thread.join(WAIT)
    assert seen == [b""]


def test_connect_udp_in_process(
    echo_servers: EchoServers,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    _stdin(monkeypatch, b"one datagram")
    assert main(["connect", echo_servers.urls["udp"], "-q", "0.2"]) == 0
    assert capsysbinary.readouterr().out == b"one datagram"


# ---- the peer half-closes first: stdin still goes out until it ends --------------------------


@contextlib.contextmanager
def _late_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> Iterator[None]:
    """stdin is a pipe that gets ``data`` (then ends) only after the peer's bytes were written
    to stdout, that is once the peer has already shut down its sending side."""
    read_fd, write_fd = os.pipe()
    stdin = os.fdopen(read_fd, "rb", buffering=0)
    monkeypatch.setattr("sys.stdin", stdin)
    written = threading.Event()
    write_out = pipe_cli._write_out

    def noted(out: Any, chunk: bytes) -> None:
        write_out(out, chunk)
        written.set()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as pipe:
            if written.wait(WAIT):
                pipe.write(data)

    monkeypatch.setattr(pipe_cli, "_write_out", noted)
    thread = threading.Thread(target=feed)
    thread.start()
    try:
        yield
    finally:
        written.set()
        thread.join(WAIT)
        stdin.close()


def _half_closing_peer(sock: socket.socket, received: list[bytes]) -> None:
    """Send, shut down the sending side, then read everything until the other side ends."""
    with sock:
        sock.settimeout(WAIT)
        sock.sendall(b"from the peer\n")
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(4096):
            received.append(chunk)


def test_connect_keeps_sending_stdin_after_the_peer_half_closes(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    received: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        peer = threading.Thread(target=lambda: _half_closing_peer(listener.accept()[0], received))
        peer.start()
        try:
            with _late_stdin(monkeypatch, b"stdin after the peer's EOF\n"):
                assert main(["connect", url]) == 0
        finally:
            peer.join(WAIT)
    assert b"".join(received) == b"stdin after the peer's EOF\n"
    assert capsysbinary.readouterr().out == b"from the peer\n"


def test_listen_keeps_sending_stdin_after_the_peer_half_closes(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    received: list[bytes] = []

    def peer(addresses: list[Any]) -> None:
        sock = socket.create_connection((addresses[0].host, addresses[0].port), WAIT)
        _half_closing_peer(sock, received)

    thread = _when_listening(monkeypatch, peer)
    try:
        with _late_stdin(monkeypatch, b"listener's stdin\n"):
            assert main(["listen", "tcp://127.0.0.1:0"]) == 0
    finally:
        thread.join(WAIT)
    assert b"".join(received) == b"listener's stdin\n"
    assert capsysbinary.readouterr().out == b"from the peer\n"


@pytest.mark.parametrize("command", ["connect", "listen"])
def test_rudp_is_not_a_byte_stream(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "rudp://127.0.0.1:9000"]) == 2
    assert "carries messages, not a byte stream" in capsys.readouterr().err
