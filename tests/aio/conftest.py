"""Fixtures and helpers for the asyncio runtime tests (real loopback sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop

import opensocket
from opensocket import Hooks
from opensocket.options import ProtocolOptions
from opensocket.protocol.connection import FramedConnection, Role, State, decode_close
from opensocket.protocol.decoder import FrameDecoder
from opensocket.protocol.frame import FrameType
from tests.conftest import fd_count

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "uvloop: also run this test on a uvloop event loop")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    """Run every test on the default loop, and the ones marked ``uvloop`` on uvloop too."""
    if item.get_closest_marker("uvloop") is not None:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


# ---- leak checks --------------------------------------------------------------------------


def _other_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current}


async def settle(rounds: int = 20) -> None:
    """Let pending callbacks (connection_lost, socket close) run: loop iterations, no clock."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def open_fds() -> dict[int, str]:
    """This process's file descriptors and what they point to."""
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


@contextlib.asynccontextmanager
async def no_leaks(extra_fds: int = 0) -> AsyncIterator[None]:
    """Fail when the body leaves file descriptors or tasks behind."""
    await settle()
    before = open_fds()
    count = fd_count()
    tasks = _other_tasks()
    yield
    await settle()
    leaked_tasks = _other_tasks() - tasks
    assert not leaked_tasks, f"tasks left running: {leaked_tasks}"
    # libuv (uvloop) opens /dev/null once per loop as a spare descriptor for EMFILE handling.
    new = {fd: target for fd, target in open_fds().items() if before.get(fd) != target}
    spare = sum(1 for target in new.values() if target == "/dev/null")
    assert fd_count() - spare <= count + extra_fds, f"file descriptors leaked: {new}"


# ---- servers ------------------------------------------------------------------------------


async def echo(conn: Any) -> None:
    """Framed echo handler."""
    async for message in conn:
        await conn.send(message)


async def served(conn: opensocket.Connection, message: Any = b"ping") -> None:
    """Assert that a connection still gets its messages echoed."""
    await conn.send(message)
    assert await conn.recv(timeout=5) == message


@contextlib.asynccontextmanager
async def echo_server(url: str = "tcp://127.0.0.1:0", **kwargs: Any) -> AsyncIterator[Any]:
    """An echo server that is closed on the way out."""
    server = await opensocket.serve(url, kwargs.pop("handler", echo), **kwargs)
    try:
        yield server
    finally:
        await server.close()


def port_of(server: opensocket.Server) -> int:
    """The TCP port of a server's first address."""
    return server.addresses[0].port


class Watch:
    """Hooks that record what happened and wake waiters (no polling of stats)."""

    def __init__(self) -> None:
        self.connected: list[Any] = []
        self.closes: Counter[int] = Counter()
        self.reasons: list[tuple[int, str]] = []
        self.errors: list[BaseException] = []
        self._changed = asyncio.Event()
        self.hooks = Hooks(
            on_connect=self._on_connect,
            on_close=self._on_close,
            on_handshake_failed=self._on_failed,
        )

    @property
    def failed(self) -> int:
        """How many handshakes failed."""
        return len(self.errors)

    def _on_connect(self, conn: Any) -> None:
        self.connected.append(conn)
        self._changed.set()

    def _on_close(self, conn: Any, code: int, reason: str) -> None:
        self.closes[code] += 1
        self.reasons.append((code, reason))
        self._changed.set()

    def _on_failed(self, peer: str, error: BaseException) -> None:
        self.errors.append(error)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], limit: float = 10.0) -> None:
        """Wait (bounded) until ``predicate()`` holds, re-checking after every hook call."""
        async with asyncio.timeout(limit):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


# ---- raw peers ----------------------------------------------------------------------------


async def raw_connect(
    host: str, port: int, family: socket.AddressFamily = socket.AF_INET, rcvbuf: int = 0
) -> socket.socket:
    """A non-blocking raw TCP socket connected to ``host:port``."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return sock


async def read_until_eof(sock: socket.socket, limit: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (a reset counts as a close)."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    async with asyncio.timeout(limit):
        while True:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


async def hand_handshake(
    sock: socket.socket, options: ProtocolOptions | None = None
) -> FramedConnection:
    """Complete the client handshake over a raw socket with the sans-IO core, by hand."""
    loop = asyncio.get_running_loop()
    core = FramedConnection(Role.CLIENT, options, now=time.monotonic())
    await loop.sock_sendall(sock, core.data_to_send())
    async with asyncio.timeout(5):
        while core.state is State.HANDSHAKE:
            data = await loop.sock_recv(sock, 65536)
            core.receive_data(data, time.monotonic())
    assert core.state is State.OPEN, core.terminated
    out = core.data_to_send()
    if out:
        await loop.sock_sendall(sock, out)
    return core


# ---- processes and limits -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def socat(*addresses: str) -> AsyncIterator[int]:
    """Run ``socat -d -d ADDRESS...`` with a listening first address; yield its real port.

    A TCP address should listen on port 0: socat reports the port it got on stderr, so there
    is no race for a free port (0 is yielded for a Unix socket). The process is killed by its
    PID on the way out.
    """
    proc = await asyncio.create_subprocess_exec(
        "socat", "-d", "-d", *addresses, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(5):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "socat exited before listening"
                if "listening on" in line:
                    break
        found = re.search(r":(\d+)$", line.strip())  # no port for a Unix socket
        yield int(found.group(1)) if found else 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Raise the soft RLIMIT_NOFILE to the hard limit for tests that open many sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def close_frames(data: bytes) -> list[tuple[int, int, str]]:
    """Decode the CLOSE and ERROR frames in bytes a server sent: (type, code, reason)."""
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
