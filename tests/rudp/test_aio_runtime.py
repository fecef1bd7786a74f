"""The asyncio reliable-UDP runtime over real loopback sockets (IPv4 and ::1)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop

import opensocket
from opensocket import aio
from opensocket.errors import (
    CloseCode,
    ConfigError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionRefused,
    ConnectionRejected,
    ConnectTimeout,
    WriteTimeout,
)
from opensocket.options import ServerLimits, SocketOptions
from opensocket.proxy import Proxy
from opensocket.rudp import RudpOptions
from opensocket.rudp.crypto import seal_crc
from opensocket.rudp.wire import HEADER, MAGIC, VERSION, PacketType

from ..conftest import fd_count

QUICK = RudpOptions(handshake_timeout=0.5, close_timeout=1.0)
HOSTS = ["127.0.0.1", "::1"]


async def echo(conn: aio.ReliableConnection) -> None:
    """Send every message back on the channel it came on."""
    while True:
        try:
            channel, message = await conn.recv_message()
        except ConnectionClosed:
            return
        await conn.send(message, channel)


@asynccontextmanager
async def running(
    handler: Callable[[Any], Awaitable[Any]] = echo, host: str = "127.0.0.1", **kw: Any
) -> AsyncIterator[aio.ReliableServer]:
    url = f"rudp://[{host}]:0" if ":" in host else f"rudp://{host}:0"
    server = await aio.serve(url, handler, **kw)
    assert isinstance(server, aio.ReliableServer)
    try:
        yield server
    finally:
        await server.close(0.5)


@pytest.mark.parametrize("host", HOSTS)
async def test_echo_on_every_channel(host: str) -> None:
    async with running(host=host) as server:
        assert server.url.startswith("rudp://")
        conn = await opensocket.connect(server.url, codec="json")
        assert isinstance(conn, aio.ReliableConnection)
        assert conn.channels == 3
        for channel in range(3):
            await conn.send({"n": channel}, channel=channel)
        got = [await conn.recv_message(timeout=2) for _ in range(3)]
        assert sorted((c, m["n"]) for c, m in got) == [(0, 0), (1, 1), (2, 2)]
        stats = conn.stats
        assert stats.srtt > 0 and stats.messages_sent == 3 and stats.messages_received == 3
        assert conn.remote_address == server.url
        assert conn.local_address.split(":")[-1].isdigit()
        await conn.close()
        assert conn.closed and conn.close_code == CloseCode.NORMAL


async def test_large_fragmented_messages_and_many_small_ones() -> None:
    big = os.urandom(700_000)  # about 600 fragments of one 1200-byte datagram each
    async with running() as server, await aio.connect(server.url, rudp=RudpOptions()) as conn:
        await conn.send(big)
        assert await conn.recv(timeout=5) == big
        for i in range(3000):
            await conn.send(i.to_bytes(4, "big"))
        got = [int.from_bytes(await conn.recv(timeout=5), "big") for _ in range(3000)]
        assert got == list(range(3000))
        for i in range(500):
            await conn.send(i.to_bytes(4, "big"), channel=2)  # reliable-unordered
        unordered = [await conn.recv_message(timeout=5) for _ in range(500)]
        assert {c for c, _ in unordered} == {2}
        assert sorted(int.from_bytes(m, "big") for _, m in unordered) == list(range(500))


async def test_async_iteration_ends_on_normal_close() -> None:
    async def talk(conn: aio.ReliableConnection) -> None:
        for word in ("a", "b", "c"):
            await conn.send(word)

    async with running(talk, codec="json") as server:
        conn = await aio.connect(server.url, codec="json")
        assert [m async for m in conn] == ["a", "b", "c"]
        assert conn.close_code == CloseCode.NORMAL


async def test_close_code_and_reason_reach_the_server() -> None:
    seen: asyncio.Future[ConnectionClosed] = asyncio.get_running_loop().create_future()

    async def record(conn: aio.ReliableConnection) -> None:
        try:
            await conn.recv()
        except ConnectionClosed as exc:
            seen.set_result(exc)

    async with running(record) as server:
        conn = await aio.connect(server.url)
        await conn.close(4321, "bye now")
        exc = await asyncio.wait_for(seen, 3)
        assert (exc.code, exc.reason, exc.by_peer) == (4321, "bye now", True)
        assert isinstance(exc, ConnectionClosedError)
        with pytest.raises(ConnectionClosed):
            await conn.send(b"late")


async def test_server_shutdown_says_going_away() -> None:
    async with running() as server:
        conn = await aio.connect(server.url)
        await conn.send(b"x")
        assert await conn.recv(timeout=2) == b"x"
        await server.close(0.5)
        assert [m async for m in conn] == []  # ends quietly: going away
        assert conn.close_code == CloseCode.GOING_AWAY
        assert server.stats.accepted == 1 and server.stats.active == 0


async def test_silent_server_times_out_and_closed_port_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers: no ICMP either
        url = f"rudp://127.0.0.1:{silent.getsockname()[1]}"
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ConnectTimeout, match=r"no answer .* rudp handshake"):
            await aio.connect(url, rudp=QUICK)
        assert loop.time() - start < 3
        assert len(silent.recv(2048)) >= 512  # it did try: a padded INITIAL
    with pytest.raises(ConnectionRefused, match="nothing is listening"):
        await aio.connect(url, rudp=QUICK)


async def test_admission_deny_list_closes_new_connections() -> None:
    async with running(limits=ServerLimits(deny=("127.0.0.0/8",))) as server:
        conn = await aio.connect(server.url)
        with pytest.raises(ConnectionClosed) as info:
            await conn.recv(timeout=3)
        assert info.value.code == CloseCode.ACCESS_DENIED
        assert server.stats.dropped["access denied"] == 1


async def test_backpressure_waits_then_write_timeout() -> None:
    small = RudpOptions(max_message=16_384, receive_window=32_768, send_buffer=32_768)
    gate = asyncio.Event()

    async def slow(conn: aio.ReliableConnection) -> None:
        await gate.wait()
        async for message in conn:
            received.append(len(message))

    received: list[int] = []

    async with running(slow, rudp=small) as server:
        opts = SocketOptions(write_timeout=0.3)
        conn = await aio.connect(server.url, rudp=small, options=opts)
        chunk = bytes(16_000)

        async def fill() -> None:
            for _ in range(100):  # the server reads nothing: credit and buffer run out
                await conn.send(chunk)

        with pytest.raises(WriteTimeout):
            await fill()
        gate.set()
        conn.write_timeout = 5.0
        for _ in range(20):  # now it drains: send waits for Writable instead of failing
            await conn.send(chunk)
        await conn.close()
        await server.close(2.0)
        assert len(received) >= 20 and set(received) == {16_000}


async def test_secret_handshake_and_mismatch() -> None:
    async with running(secret="a shared secret of 16+ bytes") as server:
        conn = await aio.connect(server.url, secret="a shared secret of 16+ bytes", rudp=QUICK)
        await conn.send(b"sealed")
        assert await conn.recv(timeout=2) == b"sealed"
        await conn.close()
        with pytest.raises(ConnectionRejected) as info:
            await aio.connect(server.url, rudp=QUICK)  # no secret: refused at once
        assert info.value.code == CloseCode.AUTH_REQUIRED
        assert "secret is required" in str(info.value)


async def test_bad_arguments_are_refused_precisely() -> None:
    with pytest.raises(ConfigError, match="does not take raw="):
        await aio.connect("rudp://127.0.0.1:9", raw=True)  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match="need a rudp:// address"):
        await aio.connect("tcp://127.0.0.1:9", rudp=RudpOptions())
    with pytest.raises(ConfigError, match="exactly one codec"):
        await aio.connect("rudp://127.0.0.1:9", codec=("json", "msgpack"))
    with pytest.raises(opensocket.AddressError, match="port"):
        await aio.connect("rudp://127.0.0.1")


async def test_no_leaked_sockets_after_close() -> None:
    before = fd_count()
    async with running() as server:
        for _ in range(3):
            conn = await aio.connect(server.url)
            await conn.send(b"x")
            await conn.recv(timeout=2)
            await conn.close()
    await asyncio.sleep(0)  # let transports finish closing
    assert fd_count() <= before


def test_runs_on_uvloop() -> None:
    async def main() -> bytes:
        async with running() as server, await aio.connect(server.url) as conn:
            await conn.send(b"uv" * 5000)
            result: bytes = await conn.recv(timeout=3)
            return result

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == b"uv" * 5000


class Relay(asyncio.DatagramProtocol):
    """A tiny UDP relay that records what the client sends (for replays)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.client: Any = None
        self.captured: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        if addr == self.upstream:
            self.transport.sendto(data, self.client)
        else:
            self.client = addr
            self.captured.append(data)
            self.transport.sendto(data, self.upstream)


def hostile_datagrams(rng: random.Random) -> list[bytes]:
    """Random bytes, truncated headers, bad checksums, forged connection ids."""
    out = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(200)]
    out += [MAGIC.to_bytes(2, "big")[: rng.randrange(0, 3)] for _ in range(10)]
    header = HEADER.pack(MAGIC, VERSION, PacketType.DATA, 0, 0)
    out += [header[:n] for n in range(12)]
    for _ in range(50):
        forged = HEADER.pack(MAGIC, VERSION, PacketType.DATA, rng.getrandbits(32), 0)
        out.append(seal_crc(bytearray(forged + b"\x01")))  # a PING to an unknown id
    out.append(seal_crc(bytearray(header + b"\x01"))[:-1] + b"\x00")  # bad checksum
    return out


async def paced(
    server: aio.ReliableServer, datagrams: list[bytes], send: Callable[[bytes], Any]
) -> None:
    """Send in small batches, each once the server has counted the last one as dropped (a
    burst would overflow the socket's receive buffer and never reach the server)."""
    for start in range(0, len(datagrams), 20):
        batch = datagrams[start : start + 20]
        expected = sum(server.dropped_datagrams.values()) + len(batch)
        for datagram in batch:
            send(datagram)
        for _ in range(400):  # at most 2 s per batch
            if sum(server.dropped_datagrams.values()) >= expected:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError(f"the server did not count {len(batch)} bad datagrams")


async def test_hostile_datagrams_are_dropped_and_counted() -> None:
    loop = asyncio.get_running_loop()
    async with running() as server:
        port = server.addresses[0].port
        relay = Relay(("127.0.0.1", port))
        transport, _ = await loop.create_datagram_endpoint(
            lambda: relay, local_addr=("127.0.0.1", 0)
        )
        try:
            relay_port = transport.get_extra_info("sockname")[1]
            victim = await aio.connect(f"rudp://127.0.0.1:{relay_port}")
            for i in range(20):
                await victim.send(b"before %d" % i)
                assert await victim.recv(timeout=2) == b"before %d" % i
            data_packets = [d for d in relay.captured if d[3] == PacketType.DATA]
            assert len(data_packets) >= 10
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
                hostile = hostile_datagrams(random.Random(8)) + data_packets
                await paced(server, hostile, lambda d: attacker.sendto(d, ("127.0.0.1", port)))
            # replays from the real client's source address
            await paced(server, data_packets, lambda d: transport.sendto(d, ("127.0.0.1", port)))
            good = await aio.connect(server.url)
            await good.send(b"still serving")
            assert await good.recv(timeout=2) == b"still serving"
            await victim.send(b"victim ok")
            assert await victim.recv(timeout=2) == b"victim ok"
            dropped = server.dropped_datagrams
            assert dropped["replay"] >= len(data_packets) // 2
            assert dropped["address"] >= len(data_packets) // 2
            assert dropped["unknown connection id"] >= 50
            assert dropped["short"] + dropped["magic"] + dropped["checksum"] >= 150
            await good.close()
            await victim.close()
        finally:
            transport.close()


async def test_dead_peer_is_detected_by_keepalive_and_idle_timeout() -> None:
    short = RudpOptions(idle_timeout=0.6, keepalive_interval=0.1, close_timeout=0.5)
    async with running(rudp=short) as server:
        upstream = server.url.replace("rudp://", "udp://")
        async with Proxy("udp://127.0.0.1:0", upstream, seed=1) as proxy:
            conn = await aio.connect(proxy.url.replace("udp://", "rudp://"), rudp=short)
            await conn.send(b"x")
            assert await conn.recv(timeout=2) == b"x"
            proxy.loss(1.0)  # the path dies: no CLOSE gets through either way
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(ConnectionClosedError) as info:
                await conn.recv(timeout=5)
            assert info.value.code in (CloseCode.IDLE_TIMEOUT, CloseCode.HEARTBEAT_TIMEOUT)
            assert loop.time() - start < 2
            assert conn.closed
