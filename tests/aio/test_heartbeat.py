"""Heartbeats over real sockets with short intervals."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import opensocket
from opensocket import CloseCode, Hooks, ProtocolOptions
from opensocket.errors import ConnectionClosedError, ReadTimeout
from opensocket.protocol.frame import HEADER_SIZE

from .conftest import (
    Watch,
    echo_server,
    hand_handshake,
    no_leaks,
    port_of,
    raw_connect,
    served,
)

FAST = ProtocolOptions(heartbeat=0.1, heartbeat_misses=3)
# Where a live connection must stay open: one stall of a loaded machine's event loop of about
# (misses - 1) intervals declares the peer dead (0.25 s does it at three misses). Six misses
# survive a 0.45 s stall.
ALIVE = ProtocolOptions(heartbeat=0.1, heartbeat_misses=6)


PING_SIZE = HEADER_SIZE + 8  # a PING or PONG frame carries an 8-byte timestamp


def round_trip(client: opensocket.Connection, watch: Watch) -> float | None:
    """The heartbeat round trip measured by either side (the side that pinged)."""
    return client.stats.rtt or watch.connected[0].stats.rtt


@pytest.mark.uvloop
async def test_an_idle_connection_stays_alive() -> None:
    watch = Watch()
    async with (
        no_leaks(),
        echo_server(protocol=ALIVE, hooks=watch.hooks) as server,
        await opensocket.connect(server.url, protocol=ALIVE) as conn,
    ):
        before = conn.stats.bytes_in
        # Silent for twice the 0.6 s dead time: only pings and pongs keep it open.
        with pytest.raises(ReadTimeout):
            await conn.recv(timeout=1.2)
        assert not conn.closed
        assert conn.stats.bytes_in - before >= 2 * PING_SIZE, "no heartbeat traffic"
        assert round_trip(conn, watch) is not None, "no heartbeat round trip was measured"
        assert conn.stats.messages_in == 0  # heartbeats are not messages
        await served(conn)


async def test_the_slower_heartbeat_side_adopts_the_faster_interval() -> None:
    watch = Watch()
    # The client asks for the default 15 s; the server's 0.1 s wins for both sides.
    async with (
        echo_server(protocol=ALIVE, hooks=watch.hooks) as server,
        await opensocket.connect(server.url, protocol=ProtocolOptions(heartbeat_misses=6)) as conn,
    ):
        before = conn.stats.bytes_in
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5  # at 15 s no heartbeat at all would come in 5 s
        # Waited for, not counted in a fixed 0.35 s window that one loop stall shortens.
        while conn.stats.bytes_in - before < 2 * PING_SIZE:
            assert loop.time() < deadline, "the client did not adopt the 0.1 s interval"
            with pytest.raises(ReadTimeout):
                await conn.recv(timeout=0.1)
        assert round_trip(conn, watch) is not None


async def test_a_silent_peer_is_declared_dead_by_the_server() -> None:
    closes: list[tuple[int, str]] = []
    done = asyncio.Event()

    def on_close(conn: Any, code: int, reason: str) -> None:
        closes.append((code, reason))
        done.set()

    async with no_leaks(), echo_server(protocol=FAST, hooks=Hooks(on_close=on_close)) as server:
        sock = await raw_connect("127.0.0.1", port_of(server))
        try:
            await hand_handshake(sock, FAST)
            # The raw peer never answers a ping from here on.
            await asyncio.wait_for(done.wait(), 5)
        finally:
            sock.close()
        assert closes[0][0] == CloseCode.HEARTBEAT_TIMEOUT
        assert "declared dead" in closes[0][1]
        assert server.stats.dropped["heartbeat timeout"] == 1


async def test_a_client_that_stops_reading_declares_the_server_dead() -> None:
    async with no_leaks(), echo_server(protocol=FAST) as server:
        conn = await opensocket.connect(server.url, protocol=FAST)
        transport = conn._proto.transport
        assert transport is not None
        transport.pause_reading()
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert conn.close_code == CloseCode.HEARTBEAT_TIMEOUT
        with pytest.raises(ConnectionClosedError) as info:
            await conn.recv()
        assert info.value.code == CloseCode.HEARTBEAT_TIMEOUT
        assert not info.value.by_peer


async def test_heartbeat_off_sends_no_pings() -> None:
    off = ProtocolOptions(heartbeat=0)
    async with (
        echo_server(protocol=off) as server,
        await opensocket.connect(server.url, protocol=off) as conn,
    ):
        before = conn.stats.bytes_in
        with pytest.raises(ReadTimeout):
            await conn.recv(timeout=0.3)
        assert conn.stats.bytes_in == before
        assert conn.stats.rtt is None
