"""Fixtures and helpers for the blocking runtime tests (real loopback sockets, real threads)."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from opensocket import sync
from opensocket.options import ProtocolOptions
from opensocket.protocol.connection import FramedConnection, Role, State, decode_close
from opensocket.protocol.decoder import FrameDecoder
from opensocket.protocol.frame import FrameType
from tests.conftest import fd_count

JOIN = 5.0


def echo(conn: Any) -> None:
    """Framed echo handler."""
    for message in conn:
        conn.send(message)


def served(conn: sync.Connection, message: Any = b"ping") -> None:
    """Assert that a connection still gets its messages echoed."""
    conn.send(message)
    assert conn.recv(timeout=5) == message


@contextlib.contextmanager
def echo_server(url: str = "tcp://127.0.0.1:0", **kwargs: Any) -> Iterator[sync.Server]:
    """A blocking echo server, shut down on the way out."""
    grace = kwargs.pop("grace", 1.0)
    server = sync.serve(url, kwargs.pop("handler", echo), **kwargs)
    try:
        yield server
    finally:
        server.shutdown(grace)


def _our_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("opensocket-")]


def open_fds() -> dict[int, str]:
    """This process's file descriptors and what they point to."""
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail when the test leaves threads or file descriptors behind."""
    threads = threading.active_count()
    fds = fd_count()
    before = open_fds()
    # Only this test's threads: one left behind by an earlier failed test must fail that test,
    # not every test after it (5 s of joining each, then a misleading failure).
    earlier = set(_our_threads())
    yield
    # Reader threads set ``closed`` a moment before they return: join them, bounded.
    for thread in set(_our_threads()) - earlier:
        thread.join(JOIN)
    left = set(_our_threads()) - earlier
    assert not left, f"threads left running: {left}"
    assert threading.active_count() <= threads, threading.enumerate()
    new = {fd: t for fd, t in open_fds().items() if before.get(fd) != t}
    assert fd_count() <= fds, f"file descriptors leaked: {new}"


class Recorder:
    """Collects what hooks and handlers report, across threads."""

    def __init__(self) -> None:
        self.items: queue.Queue[Any] = queue.Queue()

    def __call__(self, *args: Any) -> None:
        self.items.put(args if len(args) != 1 else args[0])

    def get(self, timeout: float = 5.0) -> Any:
        """The next recorded item (fails the test after ``timeout``)."""
        return self.items.get(timeout=timeout)


def raw_connect(
    host: str, port: int, family: socket.AddressFamily = socket.AF_INET
) -> socket.socket:
    """A blocking raw TCP socket connected to ``host:port`` (5 s timeout on every call)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect((host, port))
    return sock


def read_until_eof(sock: socket.socket, limit: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (a reset counts as a close)."""
    sock.settimeout(limit)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def close_frames(data: bytes) -> list[tuple[int, int, str]]:
    """Decode the CLOSE and ERROR frames in bytes a peer sent: (type, code, reason)."""
    decoder = FrameDecoder()
    decoder.feed(data)
    out = []
    for _ in range(100):
        frames, decoder.frames = decoder.frames, []
        if not frames:
            break
        for _, frame in frames:
            if frame.type in (FrameType.CLOSE, FrameType.ERROR):
                code, reason = decode_close(frame.payload)
                out.append((frame.type, code, reason))
        decoder.decode_pending()  # the decoder stops after each handshake frame
    return out


def hand_handshake(
    sock: socket.socket, role: Role, options: ProtocolOptions | None = None
) -> FramedConnection:
    """Complete the handshake over a blocking raw socket with the sans-IO core, by hand."""
    core = FramedConnection(role, options, now=time.monotonic())
    sock.settimeout(5)
    deadline = time.monotonic() + 5
    while core.state is State.HANDSHAKE and time.monotonic() < deadline:
        out = core.data_to_send()
        if out:
            sock.sendall(out)
        core.receive_data(sock.recv(65536), time.monotonic())
    out = core.data_to_send()
    if out:
        sock.sendall(out)
    assert core.state is State.OPEN, core.terminated
    return core


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, queue.Queue[Any]]:
    """Run ``fn`` in a thread; its result (or exception) lands in the returned queue."""
    results: queue.Queue[Any] = queue.Queue()

    def run() -> None:
        try:
            results.put(fn())
        except BaseException as exc:
            results.put(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results
