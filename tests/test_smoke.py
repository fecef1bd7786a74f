"""The package imports and a framed round trip works end to end."""

from __future__ import annotations

import opensocket


async def test_echo_round_trip() -> None:
    async def echo(conn: opensocket.Connection) -> None:
        async for message in conn:
            await conn.send(message)

    server = await opensocket.serve("tcp://127.0.0.1:0", echo, codec=("json", "bytes"))
    async with server, await opensocket.connect(server.url, codec="json") as conn:
        await conn.send({"hello": [1, 2]})
        assert await conn.recv() == {"hello": [1, 2]}
        assert conn.stats.messages_out == 1
