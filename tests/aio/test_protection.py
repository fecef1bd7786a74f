"""Hostile clients: each one is dropped with the right code while a good client is served.

Every test also checks that nothing leaks: file descriptors and tasks return to baseline.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import opensocket
from opensocket import CloseCode, ServerLimits
from opensocket.errors import ConnectionClosedError, ConnectionRejected
from opensocket.protocol.frame import MAGIC_VERSION, FrameType, frame_bytes

from .conftest import (
    Watch,
    close_frames,
    echo,
    hand_handshake,
    no_leaks,
    port_of,
    raw_connect,
    read_until_eof,
    served,
)

pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def guarded(
    url: str = "tcp://127.0.0.1:0", **kwargs: Any
) -> AsyncIterator[tuple[opensocket.Server, opensocket.Connection, Watch]]:
    """A leak-checked echo server with one well-behaved client connected to it."""
    watch = Watch()
    async with no_leaks():
        server = await opensocket.serve(url, echo, hooks=watch.hooks, **kwargs)
        try:
            good = await opensocket.connect(f"tcp://127.0.0.1:{port_of(server)}")
            try:
                await served(good)
                yield server, good, watch
                await served(good, b"still served")
            finally:
                await good.close()
        finally:
            await server.close()


def header(ftype: int, length: int, flags: int = 0) -> bytes:
    """A raw 16-byte frame header."""
    return struct.pack(">IIBBHI", MAGIC_VERSION, 0, ftype, flags, 0, length)


@pytest.mark.uvloop
async def test_garbage_bytes_get_a_bad_magic_error() -> None:
    async with guarded() as (server, good, watch):
        sock = await raw_connect("127.0.0.1", port_of(server))
        try:
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, b"\x00\x01garbage that is no frame at all")
            await served(good)
            frames = close_frames(await read_until_eof(sock))
        finally:
            sock.close()
        assert len(frames) == 1
        ftype, code, reason = frames[0]
        assert ftype == FrameType.ERROR
        assert code == CloseCode.BAD_MAGIC
        assert "does not speak the opensocket framed protocol" in reason
        await watch.until(lambda: watch.failed == 1)
        assert server.stats.dropped["bad magic"] == 1


async def test_http_request_is_recognised() -> None:
    async with guarded() as (server, _good, _watch):
        sock = await raw_connect("127.0.0.1", port_of(server))
        try:
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            frames = close_frames(await read_until_eof(sock))
        finally:
            sock.close()
        assert frames[0][1] == CloseCode.BAD_MAGIC
        assert "speaking HTTP" in frames[0][2]


async def test_an_oversize_length_header_is_refused_at_once() -> None:
    async with guarded() as (server, _good, watch):
        sock = await raw_connect("127.0.0.1", port_of(server))
        try:
            loop = asyncio.get_running_loop()
            # Only the header: the server must not wait for (or allocate) 4 GiB.
            await loop.sock_sendall(sock, header(FrameType.DATA, 0xFFFFFFFF))
            frames = close_frames(await read_until_eof(sock))
        finally:
            sock.close()
        assert frames == [(FrameType.ERROR, CloseCode.TOO_LARGE, frames[0][2])]
        assert "4294967295 bytes" in frames[0][2]
        await watch.until(lambda: watch.failed == 1)


@pytest.mark.uvloop
async def test_oversize_frame_after_the_handshake() -> None:
    async with guarded() as (server, _good, watch):
        sock = await raw_connect("127.0.0.1", port_of(server))
        try:
            await hand_handshake(sock)
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, header(FrameType.DATA, 1 << 30, flags=1))
            frames = close_frames(await read_until_eof(sock))
        finally:
            sock.close()
        assert [f[1] for f in frames] == [CloseCode.TOO_LARGE]
        await watch.until(lambda: watch.closes[CloseCode.TOO_LARGE] == 1)


async def test_a_truncated_frame_then_close() -> None:
    async with guarded() as (server, good, watch):
        sock = await raw_connect("127.0.0.1", port_of(server))
        try:
            await hand_handshake(sock)
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, header(FrameType.DATA, 100, flags=1) + b"only ten..")
            sock.shutdown(socket.SHUT_WR)
            await read_until_eof(sock)
        finally:
            sock.close()
        await watch.until(lambda: watch.closes[CloseCode.ABNORMAL] == 1)
        await served(good)
        assert server.stats.active == 1  # only the good client is left


@pytest.mark.uvloop
async def test_metadata_frames_do_not_break_the_server() -> None:
    # A DATA frame with metadata is legal; it is delivered, and queue accounting copes.
    received: list[Any] = []

    async def collect(conn: opensocket.Connection) -> None:
        async for message in conn:
            received.append(message)
            await conn.send(b"got it")

    async with no_leaks():
        server = await opensocket.serve("tcp://127.0.0.1:0", collect)
        sock = await raw_connect("127.0.0.1", port_of(server))
        try:
            await hand_handshake(sock)
            loop = asyncio.get_running_loop()
            frame = frame_bytes(FrameType.DATA, b"payload", meta=b"meta")
            await loop.sock_sendall(sock, frame)
            async with asyncio.timeout(5):
                reply = await loop.sock_recv(sock, 1024)
            assert reply.endswith(b"got it")
        finally:
            sock.close()
            await server.close()
        assert received == [b"payload"]


@pytest.mark.uvloop
async def test_a_handshake_never_sent_is_dropped() -> None:
    limits = ServerLimits(handshake_timeout=0.3)
    async with guarded(limits=limits) as (server, good, watch):
        sock = await raw_connect("127.0.0.1", port_of(server))
        try:
            await served(good)
            frames = close_frames(await read_until_eof(sock))
        finally:
            sock.close()
        assert [f[1] for f in frames] == [CloseCode.HANDSHAKE_TIMEOUT]
        assert "did not complete within 0.3s" in frames[0][2]
        await watch.until(lambda: watch.failed == 1)
        assert server.stats.dropped["handshake timeout"] == 1


async def test_a_slowloris_handshake_is_dropped() -> None:
    limits = ServerLimits(handshake_timeout=0.3)
    async with guarded(limits=limits) as (server, good, watch):
        client = opensocket.protocol.FramedConnection(opensocket.protocol.Role.CLIENT, now=0.0)
        hello = bytes(client.data_to_send())
        sock = await raw_connect("127.0.0.1", port_of(server))
        loop = asyncio.get_running_loop()
        reader = asyncio.create_task(read_until_eof(sock))
        sent = 0
        try:
            for byte in hello:  # one byte every 50 ms: the whole HELLO would take seconds
                if reader.done():
                    break
                try:
                    await loop.sock_sendall(sock, bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += 1
                await asyncio.wait({reader}, timeout=0.05)
            frames = close_frames(await reader)
        finally:
            sock.close()
        assert sent < len(hello)
        assert [f[1] for f in frames] == [CloseCode.HANDSHAKE_TIMEOUT]
        await served(good)
        await watch.until(lambda: watch.failed == 1)


@pytest.mark.uvloop
async def test_a_reader_that_never_reads_is_dropped_as_stuck(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def firehose(conn: opensocket.Connection) -> None:
        chunk = b"z" * 65536
        for _ in range(100_000):  # more than the good client can read while the test runs
            await conn.send(chunk)
        raise AssertionError("the stuck reader was never dropped")

    limits = ServerLimits(stuck_timeout=0.3, send_buffer_limit=64 * 1024)
    small = opensocket.SocketOptions(send_buffer=64 * 1024)
    watch = Watch()
    async with no_leaks():
        server = await opensocket.serve(
            "tcp://127.0.0.1:0", firehose, limits=limits, options=small, hooks=watch.hooks
        )
        good = await opensocket.connect(server.url)
        received = 0

        async def read_good() -> None:
            # All along, from the start: a client that stops reading fills its 64 MiB inbox,
            # pauses, and is itself dropped as stuck stuck_timeout later.
            nonlocal received
            while True:
                received += len(await good.recv(timeout=5))

        reader = asyncio.create_task(read_good())
        sock = await raw_connect("127.0.0.1", port_of(server), rcvbuf=4096)
        try:
            await hand_handshake(sock)
            # never read again
            await watch.until(lambda: watch.closes[CloseCode.SLOW_CONSUMER] == 1)
        finally:
            sock.close()
        # The good client reads its (endless) stream at its pace and is not dropped.
        mark = received
        async with asyncio.timeout(5):
            while received < mark + 10 * 65536 and not reader.done():
                await asyncio.sleep(0.01)
        assert not reader.done(), reader
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        assert not good.closed
        assert server.stats.dropped["slow consumer"] == 1
        assert not [r for r in caplog.records if r.levelname == "ERROR"], "no handler failure"
        await good.close()
        await server.close()


async def test_a_thousand_abandoned_connections(many_fds: None) -> None:
    limits = ServerLimits(handshake_timeout=0.5, max_connections_per_ip=2000)
    async with guarded(limits=limits) as (server, good, watch):
        port = port_of(server)
        socks = await asyncio.gather(*(raw_connect("127.0.0.1", port) for _ in range(1000)))
        try:
            await served(good)
            await watch.until(lambda: watch.failed == 1000, limit=20)
            assert server.stats.active == 1
            assert server.stats.dropped["handshake timeout"] == 1000
        finally:
            for sock in socks:
                sock.close()


@pytest.mark.uvloop
async def test_a_thousand_connections_that_vanish(many_fds: None) -> None:
    limits = ServerLimits(max_connections_per_ip=2000)
    async with guarded(limits=limits) as (server, good, watch):
        port = port_of(server)
        socks = await asyncio.gather(*(raw_connect("127.0.0.1", port) for _ in range(1000)))
        for sock in socks:
            sock.close()
        await watch.until(lambda: watch.failed == 1000, limit=20)
        await served(good)
        assert server.stats.active == 1


async def test_max_connections() -> None:
    limits = ServerLimits(max_connections=2)
    async with guarded(limits=limits) as (server, good, _watch):
        second = await opensocket.connect(server.url)
        try:
            with pytest.raises(ConnectionRejected, match="connection limit reached") as info:
                await opensocket.connect(server.url)
            assert info.value.code == CloseCode.CONNECTION_LIMIT
            await served(good)
            await served(second)
        finally:
            await second.close()
        assert server.stats.dropped["connection limit"] == 1
        # A slot is free again.
        async with await opensocket.connect(server.url) as third:
            await served(third)


@pytest.mark.uvloop
async def test_max_connections_per_ip() -> None:
    limits = ServerLimits(max_connections_per_ip=1)
    async with guarded("tcp://*:0", limits=limits) as (server, good, _watch):
        port = port_of(server)
        with pytest.raises(ConnectionRejected, match=r"too many connections from") as info:
            await opensocket.connect(f"tcp://127.0.0.1:{port}")
        assert info.value.code == CloseCode.CONNECTION_LIMIT
        async with await opensocket.connect(f"tcp://[::1]:{port}") as other_ip:
            await served(other_ip)
        await served(good)


async def test_deny_list() -> None:
    limits = ServerLimits(deny=("127.0.0.0/8",))
    async with no_leaks():
        server = await opensocket.serve("tcp://*:0", echo, limits=limits)
        port = port_of(server)
        try:
            async with await opensocket.connect(f"tcp://[::1]:{port}") as good:
                with pytest.raises(ConnectionRejected, match="denied by the access list") as info:
                    await opensocket.connect(f"tcp://127.0.0.1:{port}")
                assert info.value.code == CloseCode.ACCESS_DENIED
                await served(good)
        finally:
            await server.close()
        assert server.stats.dropped["access denied"] == 1


async def test_allow_list() -> None:
    limits = ServerLimits(allow=("::1/128",))
    async with no_leaks():
        server = await opensocket.serve("tcp://*:0", echo, limits=limits)
        port = port_of(server)
        try:
            async with await opensocket.connect(f"tcp://[::1]:{port}") as good:
                with pytest.raises(ConnectionRejected, match="not in the allow list") as info:
                    await opensocket.connect(f"tcp://127.0.0.1:{port}")
                assert info.value.code == CloseCode.ACCESS_DENIED
                await served(good)
        finally:
            await server.close()


async def test_per_ip_rate_limit() -> None:
    # One token per 100 s: the bucket does not refill during the test.
    limits = ServerLimits(rate=0.01, burst=2)
    async with no_leaks():
        server = await opensocket.serve("tcp://*:0", echo, limits=limits)
        port = port_of(server)
        try:
            first = await opensocket.connect(f"tcp://127.0.0.1:{port}")
            await first.close()
            async with await opensocket.connect(f"tcp://127.0.0.1:{port}") as good:
                with pytest.raises(ConnectionRejected, match="too many new connections") as info:
                    await opensocket.connect(f"tcp://127.0.0.1:{port}")
                assert info.value.code == CloseCode.RATE_LIMITED
                async with await opensocket.connect(f"tcp://[::1]:{port}") as other_ip:
                    await served(other_ip)
                await served(good)
        finally:
            await server.close()
        assert server.stats.dropped["rate limited"] == 1


async def test_idle_timeout() -> None:
    limits = ServerLimits(idle_timeout=0.5)
    async with guarded(limits=limits) as (server, good, _watch):
        idle = await opensocket.connect(server.url)
        try:
            waiting = asyncio.create_task(idle.recv())
            # The good client keeps talking every 50 ms while the idle one is dropped.
            while not waiting.done():
                await served(good)
                await asyncio.wait({waiting}, timeout=0.05)
            with pytest.raises(ConnectionClosedError) as info:
                await waiting
            assert info.value.code == CloseCode.IDLE_TIMEOUT
            assert info.value.by_peer
            assert "idle for 0.5s" in info.value.reason
        finally:
            await idle.close()
        assert server.stats.dropped["idle timeout"] == 1
