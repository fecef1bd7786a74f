"""opensocket.run: uvloop when installed, the default loop on request."""

from __future__ import annotations

import asyncio

import uvloop

import opensocket

from .conftest import echo


async def round_trip() -> tuple[type, bytes]:
    server = await opensocket.serve("tcp://127.0.0.1:0", echo, codec="json")
    try:
        async with await opensocket.connect(server.url, codec="json") as conn:
            await conn.send({"loop": "check"})
            reply = await conn.recv(timeout=5)
        async with await opensocket.connect(server.url, codec="json") as conn:
            await conn.send_many([1, 2, 3])
            batch: list[int] = []
            while len(batch) < 3:
                batch += await conn.recv_batch(timeout=5)
    finally:
        await server.close()
    assert reply == {"loop": "check"}
    assert batch == [1, 2, 3]
    return type(asyncio.get_running_loop()), b"ok"


def test_run_uses_uvloop() -> None:
    loop_type, result = opensocket.run(round_trip())
    assert issubclass(loop_type, uvloop.Loop)
    assert result == b"ok"


def test_run_without_uvloop() -> None:
    loop_type, _ = opensocket.run(round_trip(), use_uvloop=False)
    assert not issubclass(loop_type, uvloop.Loop)
