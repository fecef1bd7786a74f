"""Raw byte streams (raw=True) against socat as the peer, and raw servers."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

import opensocket
from opensocket.errors import ConnectionClosedError, ReadTimeout
from tests.conftest import fd_count

from .conftest import no_leaks, raw_connect, settle, socat

ECHO = ("TCP-LISTEN:0,bind=127.0.0.1,reuseaddr", "PIPE")


@pytest.mark.uvloop
async def test_send_all_and_recv_against_socat() -> None:
    async with socat(*ECHO) as port, no_leaks():
        stream = await opensocket.connect(f"tcp://127.0.0.1:{port}", raw=True)
        async with stream:
            assert stream.remote_address == f"127.0.0.1:{port}"
            await stream.send_all(b"hello socat")
            got = b""
            while len(got) < 11:
                got += await stream.recv(1024, timeout=5)
            assert got == b"hello socat"
            assert stream.bytes_out == 11
            assert stream.bytes_in == 11


async def test_recv_exactly_and_memoryview_input() -> None:
    async with (
        socat(*ECHO) as port,
        await opensocket.connect(f"tcp://127.0.0.1:{port}", raw=True) as stream,
    ):
        data = bytes(range(256)) * 1024
        await stream.send_all(memoryview(data))
        assert await stream.recv_exactly(len(data), timeout=5) == data


async def test_readline_lines_limit_and_eof() -> None:
    async with (
        socat(*ECHO) as port,
        await opensocket.connect(f"tcp://127.0.0.1:{port}", raw=True) as stream,
    ):
        await stream.send_all(b"one\ntwo\n" + b"x" * 100 + b"\nshort\n")
        assert await stream.readline(timeout=5) == b"one\n"
        assert await stream.readline(timeout=5) == b"two\n"
        with pytest.raises(ValueError, match="line longer than 50 bytes"):
            await stream.readline(limit=50, timeout=5)
        assert await stream.readline(timeout=5) == b"short\n"
        await stream.send_all(b"last line without newline")
        await stream.shutdown_write()
        assert await stream.readline(timeout=5) == b"last line without newline"
        assert await stream.readline(timeout=5) == b""


async def test_readline_limit_above_the_reader_buffer() -> None:
    # A 200 KiB line with a 256 KiB limit is fine, although the reader buffer is 64 KiB.
    line = b"L" * (200 * 1024) + b"\n"
    async with (
        socat(*ECHO) as port,
        await opensocket.connect(f"tcp://127.0.0.1:{port}", raw=True) as stream,
    ):
        sending = asyncio.create_task(stream.send_all(line + b"next\n"))
        assert await stream.readline(limit=256 * 1024, timeout=5) == line
        assert await stream.readline(timeout=5) == b"next\n"
        await sending


async def test_readline_without_newline_is_bounded() -> None:
    async with (
        socat(*ECHO) as port,
        await opensocket.connect(f"tcp://127.0.0.1:{port}", raw=True) as stream,
    ):
        sending = asyncio.create_task(stream.send_all(b"n" * (300 * 1024)))
        with pytest.raises(ValueError, match="line longer than 100000 bytes"):
            await stream.readline(limit=100_000, timeout=5)
        await sending


async def test_recv_exactly_reports_a_short_stream() -> None:
    async with (
        socat(*ECHO) as port,
        await opensocket.connect(f"tcp://127.0.0.1:{port}", raw=True) as stream,
    ):
        await stream.send_all(b"12345")
        await stream.shutdown_write()
        with pytest.raises(ConnectionClosedError, match="ended after 5 of 10 bytes"):
            await stream.recv_exactly(10, timeout=5)


async def test_recv_timeout() -> None:
    async with (
        socat(*ECHO) as port,
        await opensocket.connect(f"tcp://127.0.0.1:{port}", raw=True) as stream,
    ):
        with pytest.raises(ReadTimeout, match=r"within 0\.05s"):
            await stream.recv(timeout=0.05)
        await stream.send_all(b"alive")
        assert await stream.recv_exactly(5, timeout=5) == b"alive"


async def test_raw_stream_over_unix_socket(sock_path: str) -> None:
    async with (
        socat(f"UNIX-LISTEN:{sock_path}", "PIPE") as _,
        await opensocket.connect(f"unix://{sock_path}", raw=True) as stream,
    ):
        await stream.send_all(b"via unix\n")
        assert await stream.readline(timeout=5) == b"via unix\n"


async def test_raw_server_with_socat_as_the_client() -> None:
    async def upper(stream: opensocket.Stream) -> None:
        while line := await stream.readline():
            await stream.send_all(line.upper())

    async with no_leaks():
        server = await opensocket.serve("tcp://127.0.0.1:0", upper, raw=True)
        try:
            proc = await asyncio.create_subprocess_exec(
                "socat",
                "-t",
                "5",
                "STDIO",
                f"TCP:127.0.0.1:{server.addresses[0].port}",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(b"abc\nxyz\n"), 10)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert out == b"ABC\nXYZ\n"
            assert server.stats.bytes_in == 8
        finally:
            await server.close()


async def test_raw_server_idle_timeout_and_close() -> None:
    async def read_forever(stream: opensocket.Stream) -> None:
        await stream.recv()

    limits = opensocket.ServerLimits(idle_timeout=0.2)
    async with no_leaks():
        server = await opensocket.serve("tcp://127.0.0.1:0", read_forever, raw=True, limits=limits)
        try:
            async with await opensocket.connect(server.url, raw=True) as stream:
                assert await stream.recv(timeout=5) == b""  # the server dropped us
            assert server.stats.dropped["idle timeout"] == 1
        finally:
            await server.close()


async def test_raw_server_close_cancels_a_stuck_handler() -> None:
    async def stuck(stream: opensocket.Stream) -> None:
        await asyncio.Event().wait()

    async with no_leaks():
        server = await opensocket.serve("tcp://127.0.0.1:0", stuck, raw=True)
        stream = await opensocket.connect(server.url, raw=True)
        await stream.send_all(b"x")
        await asyncio.wait_for(server.close(timeout=0.1), 5)
        assert await stream.recv(timeout=5) == b""
        await stream.close()


async def test_raw_server_drops_a_peer_that_does_not_read() -> None:
    async def firehose(stream: opensocket.Stream) -> None:
        for _ in range(10_000):
            await stream.send_all(b"f" * 65536)

    limits = opensocket.ServerLimits(stuck_timeout=0.3, send_buffer_limit=64 * 1024)
    small = opensocket.SocketOptions(send_buffer=64 * 1024)
    async with no_leaks():
        server = await opensocket.serve(
            "tcp://127.0.0.1:0", firehose, raw=True, limits=limits, options=small
        )
        try:
            before = fd_count()
            sock = await raw_connect("127.0.0.1", server.addresses[0].port, rcvbuf=4096)
            try:
                async with asyncio.timeout(5):
                    # The drop is counted before the server closes the stream and forgets it
                    # (``active``): wait for both, or the poll can wake up in between.
                    while server.stats.active or not server.stats.dropped:
                        await asyncio.sleep(0.02)
                assert server.stats.dropped["slow consumer"] == 1
                assert server.stats.active == 0
                await settle()
                # The server's socket is gone although the stuck peer is still connected.
                assert fd_count() == before + 1
            finally:
                sock.close()
        finally:
            await server.close()


async def test_raw_server_close_with_a_peer_that_does_not_read() -> None:
    writing = asyncio.Event()

    async def flood(stream: opensocket.Stream) -> None:
        writing.set()
        await stream.send_all(b"w" * (32 * 1024 * 1024))

    async with no_leaks():
        server = await opensocket.serve("tcp://127.0.0.1:0", flood, raw=True)
        sock = await raw_connect("127.0.0.1", server.addresses[0].port, rcvbuf=4096)
        try:
            before = fd_count()
            await asyncio.wait_for(writing.wait(), 5)
            await asyncio.wait_for(server.close(timeout=0.1), 5)
            await settle()
            # The listener and the server's side are closed; our socket is still open.
            assert fd_count() == before - 2
            assert server.stats.active == 0
        finally:
            sock.close()
