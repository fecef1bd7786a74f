"""The server-side hooks of ``Connection``: raw receiving, pre-encoded sending, closing without
waiting, transport info. A server that validates and encodes messages itself (the chat hub)
needs nothing private."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import opensocket
from opensocket import CloseCode, ProtocolOptions
from opensocket.errors import ConnectionClosed, FrameTooLarge
from opensocket.protocol.frame import FrameType, frame_bytes

WAIT = 5.0


async def _serve(handler: Any) -> opensocket.Server:
    return await opensocket.serve("tcp://127.0.0.1:0", handler, codec="json")


async def test_raw_receiver_gets_undecoded_payloads_and_bad_json_keeps_the_link() -> None:
    batches: list[list[Any]] = []
    got = asyncio.Event()

    async def handler(conn: opensocket.Connection) -> None:
        def receive(items: list[Any]) -> None:
            batches.append(items)
            if sum(map(len, batches)) == 3:
                got.set()

        conn.set_receiver(receive, raw=True)
        await conn.wait_closed()

    async with await _serve(handler) as server:
        conn = await opensocket.connect(server.url, codec="json")
        await conn.send({"a": 1})
        conn.send_encoded([b"{not json"])  # what a broken client sends: the codec is bypassed
        await conn.send("\u00e9")
        async with asyncio.timeout(WAIT):
            await got.wait()
        items = [item for batch in batches for item in batch]
        assert items == [b'{"a":1}', b"{not json", '"\u00e9"'.encode()]
        assert all(type(item) is bytes for item in items)
        assert not conn.closed  # the server decides what bad input means, not the codec
        await conn.close()


async def test_messages_queued_before_set_receiver_are_delivered_raw() -> None:
    delivered: list[Any] = []
    done = asyncio.Event()

    async def handler(conn: opensocket.Connection) -> None:
        first = await conn.recv()  # the first message arrives through recv, decoded
        delivered.append(first)
        for _ in range(500):  # bounded: until the client's two others are queued here
            if conn.stats.messages_in == 3:
                break
            await asyncio.sleep(0.01)  # no event says "queued": the counter is polled
        conn.set_receiver(lambda items: (delivered.extend(items), done.set()), raw=True)
        await conn.wait_closed()

    async with await _serve(handler) as server:
        conn = await opensocket.connect(server.url, codec="json")
        await conn.send_many([{"n": 1}, {"n": 2}, {"n": 3}])
        async with asyncio.timeout(WAIT):
            await done.wait()
        assert delivered[0] == {"n": 1}
        assert delivered[1:] == [b'{"n":2}', b'{"n":3}']
        await conn.close()


async def test_send_encoded_close_nowait_and_extra_info() -> None:
    peers: list[Any] = []

    async def handler(conn: opensocket.Connection) -> None:
        peers.append(conn.get_extra_info("peername"))
        assert conn.get_extra_info("no-such-key", "dflt") == "dflt"
        conn.set_write_buffer_limits(high=4096)
        assert conn.writable
        conn.send_encoded([b'{"one":1}', b'"two"'])
        with pytest.raises(FrameTooLarge):
            conn.send_encoded([b"1", b"x" * (conn._core._peer_max + 1)])  # all or nothing
        conn.close_nowait(CloseCode.POLICY, "bye now")
        with pytest.raises(ConnectionClosed):
            conn.send_encoded([b"1"])  # closing: nothing more goes out
        await conn.wait_closed()

    async with await _serve(handler) as server:
        conn = await opensocket.connect(server.url, codec="json")
        assert await conn.recv(timeout=WAIT) == {"one": 1}
        assert await conn.recv(timeout=WAIT) == "two"
        with pytest.raises(ConnectionClosed) as closed:
            await conn.recv(timeout=WAIT)
        assert closed.value.code == CloseCode.POLICY
        assert closed.value.reason == "bye now"
        local = conn.get_extra_info("sockname")
        assert peers == [local]


@pytest.mark.parametrize("checksum", ["on", "off"])
async def test_send_frames_framed_once_for_many(checksum: str) -> None:
    sent = asyncio.Event()
    conns: list[opensocket.Connection] = []

    async def handler(conn: opensocket.Connection) -> None:
        conns.append(conn)
        if len(conns) == 2:
            frame = frame_bytes(FrameType.DATA, b'{"to":"all"}', checksum=conns[0].checksum)
            for each in conns:  # one frame, built once, for every connection
                assert each.checksum is (checksum == "on")
                each.send_frames([frame, frame])
            with pytest.raises(FrameTooLarge):
                conn.send_frames([frame_bytes(FrameType.DATA, b"x" * 100, checksum=False)])
            sent.set()
        await conn.wait_closed()

    protocol = ProtocolOptions(codecs=("json",), checksum=checksum)  # type: ignore[arg-type]
    small = ProtocolOptions(codecs=("json",), checksum=checksum, max_frame_size=64)  # type: ignore[arg-type]
    async with await opensocket.serve("tcp://127.0.0.1:0", handler, protocol=protocol) as server:
        first = await opensocket.connect(server.url, protocol=small)
        second = await opensocket.connect(server.url, protocol=small)
        async with asyncio.timeout(WAIT):
            await sent.wait()
        for conn in (first, second):
            assert await conn.recv(timeout=WAIT) == {"to": "all"}
            assert await conn.recv(timeout=WAIT) == {"to": "all"}
        assert conns[0].stats.messages_out == 2
        await first.close()
        await second.close()
        await conns[0].wait_closed()
        with pytest.raises(ConnectionClosed):
            conns[0].send_frames([b""])


async def test_send_frames_without_flush_waits_for_flush_and_is_open_tells_the_state() -> None:
    ready = asyncio.Event()
    conns: list[opensocket.Connection] = []

    async def handler(conn: opensocket.Connection) -> None:
        conns.append(conn)
        ready.set()
        await conn.wait_closed()

    protocol = ProtocolOptions(codecs=("json",))
    async with await opensocket.serve("tcp://127.0.0.1:0", handler, protocol=protocol) as server:
        client = await opensocket.connect(server.url, codec="json")
        async with asyncio.timeout(WAIT):
            await ready.wait()
        conn = conns[0]
        assert conn.is_open
        frame = frame_bytes(FrameType.DATA, b'{"n":1}', checksum=conn.checksum)
        conn.send_frames([frame], flush=False)
        for _ in range(3):  # loop iterations pass: nothing was written
            await asyncio.sleep(0)
        with pytest.raises(opensocket.errors.ReadTimeout):
            await client.recv(timeout=0.2)
        conn.flush()
        assert await client.recv(timeout=WAIT) == {"n": 1}
        await client.close()
        await conn.wait_closed()
        assert not conn.is_open
