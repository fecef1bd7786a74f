"""The stream proxy over real loopback sockets: every fault measured on the wire."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from opensocket.errors import ConfigError
from opensocket.proxy import Proxy

from .conftest import Recorder, open_client, read_all

PAYLOAD = bytes(range(256)) * 64  # 16 KiB with a position-dependent pattern


async def test_passes_bytes_both_ways_untouched(tcp_echo: Recorder) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        reader, writer = await open_client(proxy.url)
        data = os.urandom(1 << 20)
        writer.write(data)
        echoed = await reader.readexactly(len(data))
        writer.close()
        assert echoed == data
        stats = proxy.stats
        assert stats["connections"] == 1
        assert stats["up"]["bytes_out"] == stats["down"]["bytes_out"] == len(data)


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    start = time.monotonic()
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    return time.monotonic() - start


@pytest.mark.parametrize("direction", ["up", "down"])
async def test_latency_is_added_to_each_round_trip(tcp_echo: Recorder, direction: str) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url, seed=1) as proxy:
        reader, writer = await open_client(proxy.url)
        await _round_trip(reader, writer)
        proxy.add_latency("60ms", jitter="10ms", direction=direction)
        rtts = [await _round_trip(reader, writer) for _ in range(4)]
        writer.close()
    assert min(rtts) >= 0.050  # 60 ms - 10 ms of jitter, at least
    assert max(rtts) < 1.0


async def test_latency_both_directions_adds_up(tcp_echo: Recorder) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        proxy.add_latency(0.04)
        reader, writer = await open_client(proxy.url)
        rtt = await _round_trip(reader, writer)
        writer.close()
    assert 0.08 <= rtt < 1.0


async def test_latency_keeps_stream_order(tcp_echo: Recorder) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url, seed=3) as proxy:
        proxy.add_latency(0.005, jitter=0.005, direction="up")
        reader, writer = await open_client(proxy.url)
        for i in range(50):
            writer.write(i.to_bytes(2, "big") * 10)
            await asyncio.sleep(0)
        echoed = await reader.readexactly(50 * 20)
        writer.close()
    assert echoed == b"".join(i.to_bytes(2, "big") * 10 for i in range(50))


@pytest.mark.parametrize("kind", ["reset", "close"])
async def test_cut_after_exact_byte_count(tcp_echo: Recorder, kind: str) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        if kind == "reset":
            proxy.reset_after(nbytes=10_000, direction="down")
        else:
            proxy.close_after(nbytes=10_000, direction="down")
        reader, writer = await open_client(proxy.url)
        writer.write(PAYLOAD * 4)
        got, how = await read_all(reader)
        writer.close()
        assert got == (PAYLOAD * 4)[:10_000]
        assert how == ("reset" if kind == "reset" else "eof")
        assert proxy.stats["resets" if kind == "reset" else "closes"] == 1


async def test_reset_up_reaches_the_upstream_exactly(tcp_echo: Recorder) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        proxy.reset_after(nbytes=3000, direction="up")
        reader, writer = await open_client(proxy.url)
        writer.write(PAYLOAD)
        got, how = await read_all(reader)
        writer.close()
    assert bytes(tcp_echo.received) == PAYLOAD[:3000]
    assert how == "reset"
    assert got == PAYLOAD[: len(got)]  # what was echoed before the reset, if anything


async def test_reset_after_seconds(tcp_echo: Recorder) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        proxy.reset_after(seconds=0.5)  # counted from the accept: the echo must come back first
        start = time.monotonic()
        reader, writer = await open_client(proxy.url)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        got, how = await read_all(reader)
        writer.close()
    assert (got, how) == (b"", "reset")
    assert time.monotonic() - start >= 0.5


async def test_offsets_count_from_the_start_of_each_connection(tcp_echo: Recorder) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        reader, writer = await open_client(proxy.url)
        writer.write(b"x" * 100)
        await reader.readexactly(100)
        proxy.close_after(nbytes=150, direction="down")
        writer.write(b"y" * 100)
        got, how = await read_all(reader)
        writer.close()
        assert (got, how) == (b"y" * 50, "eof")
        reader, writer = await open_client(proxy.url)  # a new connection starts at 0
        writer.write(b"z" * 200)
        got, how = await read_all(reader)
        writer.close()
        assert (got, how) == (b"z" * 150, "eof")


@pytest.mark.parametrize("offset", [0, 1, 4095, 4096, 16383])
async def test_corrupts_exactly_one_byte_at_the_offset(tcp_echo: Recorder, offset: int) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        proxy.corrupt(offset, xor=0x5A, direction="down")
        reader, writer = await open_client(proxy.url)
        for i in range(0, len(PAYLOAD), 1000):  # offsets cross chunk boundaries
            writer.write(PAYLOAD[i : i + 1000])
        got = await reader.readexactly(len(PAYLOAD))
        writer.close()
    await tcp_echo.wait_for(len(PAYLOAD))
    assert bytes(tcp_echo.received) == PAYLOAD  # the up direction is untouched
    diff = [i for i in range(len(PAYLOAD)) if got[i] != PAYLOAD[i]]
    assert diff == [offset]
    assert got[offset] == PAYLOAD[offset] ^ 0x5A


async def test_corrupt_up_reaches_upstream(tcp_echo: Recorder) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        proxy.corrupt(7, direction="up")
        reader, writer = await open_client(proxy.url)
        writer.write(b"0123456789")
        got = await reader.readexactly(10)
        writer.close()
    assert bytes(tcp_echo.received) == b"0123456\xc889"
    assert got == b"0123456\xc889"


async def test_stall_holds_then_releases_everything(tcp_echo: Recorder) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        reader, writer = await open_client(proxy.url)
        stall = proxy.stall(direction="down")
        data = os.urandom(300_000)
        writer.write(data)
        await tcp_echo.wait_for(len(data))  # the upstream got it all and echoed it
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.1)
        assert proxy.clear(stall) == [stall]
        echoed = await reader.readexactly(len(data))
        writer.close()
    assert echoed == data


async def test_bandwidth_limit_paces_the_transfer(tcp_echo: Recorder) -> None:
    rate = 200_000
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        proxy.limit_bandwidth(rate, direction="down")
        reader, writer = await open_client(proxy.url)
        data = os.urandom(100_000)
        start = time.monotonic()
        writer.write(data)
        echoed = await reader.readexactly(len(data))
        elapsed = time.monotonic() - start
        writer.close()
    assert echoed == data
    assert elapsed >= (len(data) - rate * 0.02) / rate  # less one burst


async def test_probability_is_per_connection_and_seeded(tcp_echo: Recorder) -> None:
    async def outcomes(seed: int) -> list[str]:
        results = []
        async with Proxy("tcp://127.0.0.1:0", tcp_echo.url, seed=seed) as proxy:
            proxy.close_after(nbytes=2, direction="down", probability=0.5)
            for _ in range(16):
                reader, writer = await open_client(proxy.url)
                writer.write(b"abcd")
                writer.write_eof()
                got, _ = await read_all(reader)
                writer.close()
                results.append("cut" if got == b"ab" else "whole")
        return results

    first = await outcomes(42)
    assert "cut" in first and "whole" in first
    assert await outcomes(42) == first


async def test_half_close_is_passed_on(tcp_echo: Recorder) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        reader, writer = await open_client(proxy.url)
        writer.write(b"last words")
        writer.write_eof()
        got, how = await read_all(reader)
        writer.close()
    assert (got, how) == (b"last words", "eof")
    assert tcp_echo.eofs == 1


async def test_unix_listener(tcp_echo: Recorder, sock_path: str) -> None:
    async with Proxy(f"unix://{sock_path}", tcp_echo.url) as proxy:
        assert proxy.url == f"unix://{sock_path}"
        reader, writer = await open_client(proxy.url)
        writer.write(b"via unix")
        assert await reader.readexactly(8) == b"via unix"
        writer.close()
    assert not os.path.exists(sock_path)


async def test_unreachable_upstream_resets_the_client(
    free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with Proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{free_port}") as proxy:
        for _ in range(2):
            reader, writer = await open_client(proxy.url)
            got, how = await read_all(reader)
            writer.close()
            assert (got, how) == (b"", "reset")
        assert proxy.stats["upstream_failures"] == 2
    said = [r.getMessage() for r in caplog.records if r.name == "opensocket.proxy"]
    assert len(said) == 1  # said once, not once per client
    assert said[0].startswith(f"cannot reach the upstream tcp://127.0.0.1:{free_port} (")
    assert "connection refused" in said[0] and said[0].endswith("the client was reset (1 so far)")


def test_rejects_mixed_and_tls_pairs() -> None:
    with pytest.raises(ConfigError, match="udp:// on both sides"):
        Proxy("tcp://127.0.0.1:0", "udp://127.0.0.1:9")
    with pytest.raises(ConfigError, match="opaque bytes"):
        Proxy("tls://127.0.0.1:0", "tcp://127.0.0.1:9")
    with pytest.raises(ConfigError, match="direction must be"):
        Proxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:9").stall(direction="sideways")


async def test_close_drops_open_connections(tcp_echo: Recorder) -> None:
    proxy = await Proxy("tcp://127.0.0.1:0", tcp_echo.url).start()
    reader, writer = await open_client(proxy.url)
    writer.write(b"x")
    await reader.readexactly(1)
    await proxy.close()
    got, _how = await read_all(reader)
    writer.close()
    assert got == b""
    assert proxy.stats["active"] == 0
    with pytest.raises(OSError):
        socket.create_connection((proxy.address.host, proxy.address.port), timeout=1)  # type: ignore[union-attr]


def test_runs_on_uvloop() -> None:
    """The CLI runs the proxy on uvloop: its transports are not asyncio's classes."""
    from opensocket import aio

    async def scenario() -> tuple[bytes, str, bytes]:
        server = await aio.serve("tcp://127.0.0.1:0", _raw_echo, raw=True)
        async with Proxy("tcp://127.0.0.1:0", server.url) as proxy:
            reader, writer = await open_client(proxy.url)
            writer.write(b"hello")
            first = await reader.readexactly(5)
            proxy.reset_after(nbytes=5 + 3000, direction="down")
            writer.write(PAYLOAD)
            got, how = await read_all(reader)
            writer.close()
        await server.close()
        return first, how, got

    first, how, got = aio.run(scenario(), use_uvloop=True)
    assert (first, how, got) == (b"hello", "reset", PAYLOAD[:3000])


async def _raw_echo(stream: object) -> None:
    while data := await stream.recv(65536):  # type: ignore[attr-defined]
        await stream.send_all(data)  # type: ignore[attr-defined]


async def test_unix_upstream_and_ipv6_listener(tcp_echo: Recorder, sock_path: str) -> None:
    async with (
        Proxy(f"unix://{sock_path}", tcp_echo.url) as inner,
        Proxy("tcp://[::1]:0", inner.url) as outer,
    ):
        assert outer.url.startswith("tcp://[::1]:")
        host, port = outer.url[len("tcp://[") :].split("]:")
        reader, writer = await asyncio.open_connection(host, int(port))
        outer.corrupt(0, xor=0x20, direction="up")
        inner.add_latency(0.01)
        writer.write(b"abc")
        assert await reader.readexactly(3) == b"Abc"
        writer.close()
        assert inner.stats["connections"] == outer.stats["connections"] == 1


async def test_client_gone_while_connecting_leaves_nothing_open(tcp_echo: Recorder) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        for _ in range(5):
            _, writer = await open_client(proxy.url)
            writer.transport.abort()
        async with asyncio.timeout(5):
            while proxy.stats["active"]:
                await asyncio.sleep(0.01)


async def test_a_reset_from_the_client_reaches_the_upstream_as_a_reset(
    tcp_echo: Recorder,
) -> None:
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url) as proxy:
        reader, writer = await open_client(proxy.url)
        writer.write(b"x")
        await reader.readexactly(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()
        await tcp_echo.wait_ended()
    assert (tcp_echo.resets, tcp_echo.eofs) == (1, 0)  # a reset, not an orderly end


async def test_upstream_close_reaches_the_client_as_eof() -> None:
    async def hello_and_bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        writer.close()

    server = await asyncio.start_server(hello_and_bye, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with Proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}") as proxy:
        proxy.add_latency(0.02, direction="down")
        reader, writer = await open_client(proxy.url)
        assert await read_all(reader) == (b"bye", "eof")
        writer.close()
    server.close()
    await server.wait_closed()


def test_timed_faults_on_uvloop() -> None:
    """Latency and bandwidth arm loop timers; uvloop's timer handles differ from asyncio's."""
    from opensocket import aio

    async def scenario() -> tuple[bytes, float]:
        server = await aio.serve("tcp://127.0.0.1:0", _raw_echo, raw=True)
        async with Proxy("tcp://127.0.0.1:0", server.url) as proxy:
            proxy.add_latency(0.03, direction="down")
            proxy.limit_bandwidth(200_000, direction="up")
            reader, writer = await open_client(proxy.url)
            loop = asyncio.get_running_loop()
            start = loop.time()
            writer.write(PAYLOAD)
            got = await asyncio.wait_for(reader.readexactly(len(PAYLOAD)), 10)
            elapsed = loop.time() - start
            writer.close()
        await server.close()
        return got, elapsed

    got, elapsed = aio.run(scenario(), use_uvloop=True)
    assert got == PAYLOAD
    assert elapsed >= 0.03
