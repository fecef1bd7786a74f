"""UDP endpoints over loopback: send_to/recv_from, connected send/recv, queue overflow."""

from __future__ import annotations

import asyncio

import pytest

import opensocket
from opensocket.errors import (
    AddressError,
    ConnectionClosedOK,
    NameResolutionError,
    OpenSocketError,
    ReadTimeout,
)

from .conftest import no_leaks


@pytest.mark.uvloop
@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "localhost"])
async def test_request_reply(host: str) -> None:
    async with no_leaks():
        server = await opensocket.open_datagram(f"udp://{host}:0", bind=True)
        port = server.local_address.port
        assert port != 0
        client = await opensocket.open_datagram(f"udp://{host}:{port}")
        async with server, client:
            assert client.remote_address is not None
            await client.send(b"question")
            data, addr = await server.recv_from(timeout=5)
            assert data == b"question"
            assert addr[1] == client.local_address.port
            await server.send_to(b"answer", addr)
            assert await client.recv(timeout=5) == b"answer"
            assert server.datagrams_in == 1
            assert server.datagrams_out == 1


@pytest.mark.uvloop
async def test_send_to_a_url() -> None:
    async with (
        await opensocket.open_datagram("udp://127.0.0.1:0", bind=True) as a,
        await opensocket.open_datagram("udp://127.0.0.1:0", bind=True) as b,
    ):
        await a.send_to(b"by url", f"udp://127.0.0.1:{b.local_address.port}")
        await a.send_to(b"by name", f"udp://localhost:{b.local_address.port}")
        assert (await b.recv_from(timeout=5))[0] == b"by url"
        assert (await b.recv_from(timeout=5))[0] == b"by name"


async def test_dual_stack_wildcard_endpoint() -> None:
    async with await opensocket.open_datagram("udp://*:0", bind=True) as server:
        port = server.local_address.port
        for host in ("127.0.0.1", "[::1]"):
            async with await opensocket.open_datagram(f"udp://{host}:{port}") as client:
                await client.send(host.encode())
                data, addr = await server.recv_from(timeout=5)
                assert data == host.encode()
                await server.send_to(b"back", addr)
                assert await client.recv(timeout=5) == b"back"


async def test_queue_overflow_drops_the_oldest_and_counts() -> None:
    async with (
        await opensocket.open_datagram("udp://127.0.0.1:0", bind=True, queue_limit=4) as server,
        await opensocket.open_datagram(f"udp://127.0.0.1:{server.local_address.port}") as client,
    ):
        for i in range(10):
            await client.send(b"%d" % i)
        async with asyncio.timeout(5):
            while server.dropped < 6:
                await asyncio.sleep(0.01)
        assert server.dropped == 6
        got = [await server.recv(timeout=5) for _ in range(4)]
        assert got == [b"6", b"7", b"8", b"9"]


async def test_errors_are_clear() -> None:
    async with await opensocket.open_datagram("udp://127.0.0.1:0", bind=True) as ep:
        with pytest.raises(ReadTimeout, match=r"no datagram within 0\.05s"):
            await ep.recv_from(timeout=0.05)
        with pytest.raises(OpenSocketError, match="not connected"):
            await ep.send(b"nowhere")
        with pytest.raises(OpenSocketError, match="larger than UDP allows"):
            await ep.send_to(b"x" * 70_000, ("127.0.0.1", 9))
    with pytest.raises(ConnectionClosedOK):
        await ep.send_to(b"closed", ("127.0.0.1", 9))


async def test_recv_after_close_raises() -> None:
    ep = await opensocket.open_datagram("udp://127.0.0.1:0", bind=True)
    waiting = asyncio.create_task(ep.recv())
    await asyncio.sleep(0)
    ep.close()
    with pytest.raises(ConnectionClosedOK):
        await asyncio.wait_for(waiting, 5)


async def test_max_size_datagram() -> None:
    async with await opensocket.open_datagram("udp://127.0.0.1:0", bind=True) as server:
        url = f"udp://127.0.0.1:{server.local_address.port}"
        async with await opensocket.open_datagram(url) as client:
            big = b"d" * (65535 - 48)
            await client.send(big)
            assert await server.recv(timeout=5) == big


@pytest.mark.uvloop
async def test_send_to_across_families() -> None:
    async with (
        await opensocket.open_datagram("udp://*:0", bind=True) as dual,
        await opensocket.open_datagram("udp://127.0.0.1:0", bind=True) as v4,
    ):
        # A plain IPv4 address through the dual-stack socket.
        await dual.send_to(b"mapped", ("127.0.0.1", v4.local_address.port))
        data, addr = await v4.recv_from(timeout=5)
        assert data == b"mapped"
        assert addr == ("127.0.0.1", dual.local_address.port)
        with pytest.raises(AddressError, match="from an IPv4 endpoint"):
            await v4.send_to(b"no", ("::1", dual.local_address.port))
        with pytest.raises(NameResolutionError, match=r"no-such-host\.invalid"):
            await v4.send_to(b"no", "udp://no-such-host.invalid:9")
