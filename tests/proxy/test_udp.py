"""The UDP proxy over real loopback sockets: loss, duplication, reordering, delay, per direction."""

from __future__ import annotations

import asyncio
import itertools
import math
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from opensocket.proxy import Proxy

from .conftest import Recorder


class Client(asyncio.DatagramProtocol):
    """A UDP client that collects replies."""

    def __init__(self) -> None:
        self.replies: list[bytes] = []
        self.changed = asyncio.Event()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.append(data)
        self.changed.set()

    async def wait(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.replies) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def client_for() -> AsyncIterator[Any]:
    transports: list[Any] = []

    async def make(url: str) -> Client:
        host, port = url[len("udp://") :].rsplit(":", 1)
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            Client, remote_addr=(host, int(port))
        )
        transports.append(transport)
        return proto

    yield make
    for transport in transports:
        transport.close()


async def _send_batches(client: Client, proxy: Proxy, count: int, batch: int = 100) -> None:
    """Send ``count`` numbered datagrams, a batch at a time, waiting for the proxy to see each."""
    for start in range(0, count, batch):
        for i in range(start, min(start + batch, count)):
            client.transport.sendto(i.to_bytes(4, "big"))
        async with asyncio.timeout(5):
            while proxy.stats["up"]["datagrams_in"] < min(start + batch, count):
                await asyncio.sleep(0.001)


def _binomial_bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - sigmas * sd, n * p + sigmas * sd


async def test_forwards_datagrams_both_ways(udp_echo: Recorder, client_for: Any) -> None:
    async with Proxy("udp://127.0.0.1:0", udp_echo.url) as proxy:
        client = await client_for(proxy.url)
        for i in range(10):
            client.transport.sendto(b"d%d" % i)
        await client.wait(10)
        assert sorted(client.replies) == sorted(b"d%d" % i for i in range(10))
        assert proxy.stats["connections"] == 1


async def test_loss_rate_within_binomial_bounds(udp_echo: Recorder, client_for: Any) -> None:
    async with Proxy("udp://127.0.0.1:0", udp_echo.url, seed=2024) as proxy:
        proxy.loss(0.3, direction="up")
        client = await client_for(proxy.url)
        await _send_batches(client, proxy, 2000)
        dropped = proxy.stats["up"]["dropped"]
        await udp_echo.wait_datagrams(2000 - dropped)
        await client.wait(2000 - dropped)
    low, high = _binomial_bounds(2000, 0.3)
    assert low <= dropped <= high
    assert len(udp_echo.datagrams) == len(client.replies) == 2000 - dropped  # down: no loss


async def test_seeded_loss_repeats_exactly(udp_echo: Recorder, client_for: Any) -> None:
    async def survivors() -> list[bytes]:
        udp_echo.datagrams.clear()
        async with Proxy("udp://127.0.0.1:0", udp_echo.url, seed=7) as proxy:
            proxy.loss(0.5, direction="up")
            client = await client_for(proxy.url)
            await _send_batches(client, proxy, 200)
            await udp_echo.wait_datagrams(200 - proxy.stats["up"]["dropped"])
        return sorted(udp_echo.datagrams)

    assert await survivors() == await survivors()


async def test_loss_down_only_spares_the_upstream(udp_echo: Recorder, client_for: Any) -> None:
    async with Proxy("udp://127.0.0.1:0", udp_echo.url, seed=1) as proxy:
        proxy.loss(0.5, direction="down")
        client = await client_for(proxy.url)
        await _send_batches(client, proxy, 400)
        await udp_echo.wait_datagrams(400)
        stats = proxy.stats
        await client.wait(400 - stats["down"]["dropped"])
    assert stats["up"]["dropped"] == 0
    low, high = _binomial_bounds(400, 0.5)
    assert low <= stats["down"]["dropped"] <= high


async def test_probability_scales_the_rate(udp_echo: Recorder, client_for: Any) -> None:
    async with Proxy("udp://127.0.0.1:0", udp_echo.url, seed=9) as proxy:
        proxy.loss(1.0, direction="up", probability=0.25)
        client = await client_for(proxy.url)
        await _send_batches(client, proxy, 1000)
        dropped = proxy.stats["up"]["dropped"]
    low, high = _binomial_bounds(1000, 0.25)
    assert low <= dropped <= high


async def test_duplication_is_observed(udp_echo: Recorder, client_for: Any) -> None:
    async with Proxy("udp://127.0.0.1:0", udp_echo.url, seed=3) as proxy:
        proxy.duplicate(0.2, direction="up")
        client = await client_for(proxy.url)
        await _send_batches(client, proxy, 500)
        duplicated = proxy.stats["up"]["duplicated"]
        await udp_echo.wait_datagrams(500 + duplicated)
    low, high = _binomial_bounds(500, 0.2)
    assert low <= duplicated <= high
    assert len(udp_echo.datagrams) - len(set(udp_echo.datagrams)) == duplicated


async def test_reordering_is_observed(udp_echo: Recorder, client_for: Any) -> None:
    async with Proxy("udp://127.0.0.1:0", udp_echo.url, seed=4) as proxy:
        proxy.reorder(0.2, direction="up")
        client = await client_for(proxy.url)
        await _send_batches(client, proxy, 300)
        await udp_echo.wait_datagrams(300)
        reordered = proxy.stats["up"]["reordered"]
    numbers = [int.from_bytes(d, "big") for d in udp_echo.datagrams]
    inversions = sum(1 for a, b in itertools.pairwise(numbers) if b < a)
    assert sorted(numbers) == list(range(300))  # nothing lost, nothing added
    assert reordered > 0
    assert inversions > 0


async def test_latency_on_datagrams(udp_echo: Recorder, client_for: Any) -> None:
    async with Proxy("udp://127.0.0.1:0", udp_echo.url) as proxy:
        proxy.add_latency("40ms", direction="down")
        client = await client_for(proxy.url)
        start = time.monotonic()
        client.transport.sendto(b"hello")
        await client.wait(1)
        assert time.monotonic() - start >= 0.04


async def test_stall_holds_datagrams_until_cleared(udp_echo: Recorder, client_for: Any) -> None:
    async with Proxy("udp://127.0.0.1:0", udp_echo.url) as proxy:
        stall = proxy.stall(direction="up")
        client = await client_for(proxy.url)
        await _send_batches(client, proxy, 20, batch=20)
        assert udp_echo.datagrams == []
        proxy.clear(stall)
        await client.wait(20)
    assert [int.from_bytes(d, "big") for d in udp_echo.datagrams] == list(range(20))


async def test_corrupt_a_byte_of_each_datagram(udp_echo: Recorder, client_for: Any) -> None:
    async with Proxy("udp://127.0.0.1:0", udp_echo.url) as proxy:
        proxy.corrupt(1, xor=0x01, direction="up")
        client = await client_for(proxy.url)
        client.transport.sendto(b"abc")
        client.transport.sendto(b"x")  # too short for offset 1: untouched
        await client.wait(2)
    assert sorted(udp_echo.datagrams) == [b"acc", b"x"]


async def test_close_after_bytes_blackholes_the_session(
    udp_echo: Recorder, client_for: Any
) -> None:
    async with Proxy("udp://127.0.0.1:0", udp_echo.url) as proxy:
        proxy.close_after(nbytes=8, direction="up")
        client = await client_for(proxy.url)
        await _send_batches(client, proxy, 5, batch=5)
        await udp_echo.wait_datagrams(2)
        assert proxy.stats["up"]["dropped"] == 3
    assert len(udp_echo.datagrams) == 2
