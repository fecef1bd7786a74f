"""The framed Connection API over real loopback sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.protobuf.wrappers_pb2 import StringValue

import opensocket
from opensocket import CloseCode, ProtocolOptions
from opensocket.codecs import protobuf_codec
from opensocket.errors import (
    CodecError,
    ConnectionClosed,
    ConnectionClosedError,
    FrameTooLarge,
    ReadTimeout,
)
from opensocket.options import DEFAULT_MAX_FRAME_SIZE

from .conftest import echo_server, no_leaks


@pytest.mark.uvloop
@pytest.mark.parametrize(
    ("codec", "message"),
    [
        ("bytes", b"\x00\xffraw bytes"),
        ("json", {"text": "h\u00e9llo", "list": [1, 2.5, None, True]}),
        ("msgpack", {"bin": b"\x00\x01", "n": 2**40, "nested": {"k": [1, "two"]}}),
    ],
)
async def test_codecs_round_trip(codec: str, message: Any) -> None:
    async with (
        echo_server(codec=("bytes", "json", "msgpack")) as server,
        await opensocket.connect(server.url, codec=codec) as conn,
    ):
        assert conn.codec.name == codec
        await conn.send(message)
        assert await conn.recv(timeout=5) == message


async def test_protobuf_codec_round_trip() -> None:
    codec = protobuf_codec(StringValue)
    assert codec.name == "protobuf:google.protobuf.StringValue"
    async with (
        echo_server(codec=codec.name) as server,
        await opensocket.connect(server.url, codec=codec.name) as conn,
    ):
        await conn.send(StringValue(value="typed"))
        reply = await conn.recv(timeout=5)
        assert isinstance(reply, StringValue)
        assert reply.value == "typed"
        with pytest.raises(CodecError, match=r"expected a google\.protobuf\.StringValue"):
            await conn.send({"not": "a message"})
        await conn.send(StringValue(value="still open"))
        assert (await conn.recv(timeout=5)).value == "still open"


async def test_codec_preference_is_negotiated() -> None:
    async with (
        echo_server(codec=("json", "bytes")) as server,
        await opensocket.connect(server.url, codec=("msgpack", "json")) as conn,
    ):
        assert conn.codec.name == "json"


async def test_iteration_ends_on_a_normal_close() -> None:
    async def talk_then_close(conn: opensocket.Connection) -> None:
        for i in range(3):
            await conn.send(b"%d" % i)
        await conn.close()

    async with echo_server(handler=talk_then_close) as server:
        conn = await opensocket.connect(server.url)
        received = [message async for message in conn]
        assert received == [b"0", b"1", b"2"]
        assert conn.closed
        assert conn.close_code == CloseCode.NORMAL


async def test_iteration_raises_on_an_abnormal_close() -> None:
    async def fail(conn: opensocket.Connection) -> None:
        await conn.send(b"before")
        raise RuntimeError("handler bug")

    async with echo_server(handler=fail) as server:
        conn = await opensocket.connect(server.url)
        received: list[bytes] = []

        async def collect() -> None:
            async for message in conn:
                received.append(message)

        with pytest.raises(ConnectionClosedError) as info:
            await collect()
        assert received == [b"before"]
        assert info.value.code == CloseCode.INTERNAL_ERROR
        assert "RuntimeError" in info.value.reason


async def test_recv_timeout_raises_read_timeout_and_keeps_the_connection() -> None:
    async with echo_server() as server, await opensocket.connect(server.url) as conn:
        with pytest.raises(ReadTimeout, match=r"within 0\.05s") as info:
            await conn.recv(timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        assert not conn.closed
        await conn.send(b"after timeout")
        assert await conn.recv(timeout=5) == b"after timeout"


async def test_send_many_and_recv_batch() -> None:
    async with (
        echo_server(codec="json") as server,
        await opensocket.connect(server.url, codec="json") as conn,
    ):
        batch = [{"n": i} for i in range(500)]
        await conn.send_many(batch)
        received: list[Any] = []
        while len(received) < len(batch):
            received += await conn.recv_batch(max_messages=100, timeout=5)
        assert received == batch
        assert conn.stats.messages_out == 500
        assert conn.stats.messages_in == 500


async def test_recv_batch_respects_max_messages() -> None:
    async with echo_server() as server, await opensocket.connect(server.url) as conn:
        await conn.send_many([b"a", b"b", b"c"])
        first = await conn.recv_batch(max_messages=1, timeout=5)
        assert first == [b"a"]
        rest: list[bytes] = []
        while len(rest) < 2:
            rest += await conn.recv_batch(timeout=5)
        assert rest == [b"b", b"c"]


async def test_set_receiver_callback() -> None:
    async with (
        echo_server(codec="json") as server,
        await opensocket.connect(server.url, codec="json") as conn,
    ):
        await conn.send_many([1, 2])
        first = await conn.recv(timeout=5)  # one taken the normal way
        got: list[Any] = []
        done = asyncio.get_running_loop().create_future()

        def on_batch(batch: list[Any]) -> None:
            got.extend(batch)
            if len(got) >= 4 and not done.done():
                done.set_result(None)

        await asyncio.sleep(0)  # the second reply may already be queued: it is delivered
        conn.set_receiver(on_batch)
        await conn.send_many([3, 4, 5])
        await asyncio.wait_for(done, 5)
        assert [first, *got] == [1, 2, 3, 4, 5]
        conn.set_receiver(None)
        await conn.send(6)
        assert await conn.recv(timeout=5) == 6


async def test_a_raising_receiver_closes_with_internal_error() -> None:
    async with echo_server() as server:
        conn = await opensocket.connect(server.url)

        def broken(batch: list[Any]) -> None:
            raise ValueError("bad callback")

        conn.set_receiver(broken)
        await conn.send(b"x")
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert conn.close_code == CloseCode.INTERNAL_ERROR


async def test_messages_up_to_the_max_frame_size() -> None:
    limit = 1024 * 1024
    opts = ProtocolOptions(max_frame_size=limit)
    async with (
        echo_server(protocol=opts) as server,
        await opensocket.connect(server.url, protocol=opts) as conn,
    ):
        big = bytes(range(256)) * (limit // 256)
        assert len(big) == limit
        await conn.send(big)
        assert await conn.recv(timeout=5) == big
        with pytest.raises(FrameTooLarge, match="exceeds the peer's maximum frame size"):
            await conn.send(big + b"!")
        assert not conn.closed
        await conn.send(b"small")
        assert await conn.recv(timeout=5) == b"small"


@pytest.mark.uvloop
async def test_a_message_of_the_default_max_frame_size() -> None:
    async with echo_server() as server, await opensocket.connect(server.url) as conn:
        big = b"\xab" * DEFAULT_MAX_FRAME_SIZE
        await conn.send(big)
        assert await conn.recv(timeout=10) == big
        with pytest.raises(FrameTooLarge):
            await conn.send(big + b"!")
        await conn.send(b"usable")
        assert await conn.recv(timeout=5) == b"usable"


async def test_a_peer_with_a_smaller_limit_is_respected() -> None:
    async with (
        echo_server(protocol=ProtocolOptions(max_frame_size=4096)) as server,
        await opensocket.connect(server.url) as conn,
    ):
        await conn.send(b"x" * 4096)
        assert len(await conn.recv(timeout=5)) == 4096
        with pytest.raises(FrameTooLarge):
            await conn.send(b"x" * 4097)
        await conn.send(b"ok")
        assert await conn.recv(timeout=5) == b"ok"


async def test_send_after_close_raises_connection_closed() -> None:
    async with echo_server() as server:
        conn = await opensocket.connect(server.url)
        await conn.close()
        assert conn.closed
        with pytest.raises(ConnectionClosed):
            await conn.send(b"late")
        with pytest.raises(ConnectionClosed):
            await conn.recv(timeout=1)


async def test_many_concurrent_clients() -> None:
    async def one(i: int) -> None:
        async with await opensocket.connect(server.url, codec="json") as conn:
            for j in range(5):
                await conn.send([i, j])
                assert await conn.recv(timeout=10) == [i, j]

    async with no_leaks(), echo_server(codec="json") as server:
        async with asyncio.timeout(20):
            await asyncio.gather(*(one(i) for i in range(200)))
        stats = server.stats
        assert stats.accepted == 200
        assert stats.messages_in == 1000
        assert stats.messages_out == 1000


async def test_concurrent_receivers_each_get_a_message_and_see_the_close() -> None:
    async with echo_server() as server:
        conn = await opensocket.connect(server.url)
        first = asyncio.create_task(conn.recv())
        second = asyncio.create_task(conn.recv())
        await asyncio.sleep(0)
        await conn.send_many([b"a", b"b"])
        got = await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert sorted(got) == [b"a", b"b"]

        third = asyncio.create_task(conn.recv())
        fourth = asyncio.create_task(conn.recv(timeout=30))
        await asyncio.sleep(0)
        await conn.close()
        for task in (third, fourth):
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(task, 5)


async def test_a_timed_out_receiver_does_not_disturb_another() -> None:
    async with echo_server() as server, await opensocket.connect(server.url) as conn:
        patient = asyncio.create_task(conn.recv(timeout=10))
        with pytest.raises(ReadTimeout):
            await conn.recv(timeout=0.05)
        await conn.send(b"for the patient one")
        assert await asyncio.wait_for(patient, 5) == b"for the patient one"
