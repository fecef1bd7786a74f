"""The blocking and asyncio runtimes speak the same protocol: each as client of the other."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import opensocket
from opensocket import sync
from opensocket.errors import AuthenticationFailed, CloseCode
from tests.sync.conftest import echo_server

pytestmark = pytest.mark.usefixtures("no_leaks")


async def _aio_echo(conn: Any) -> None:
    async for message in conn:
        await conn.send(message)


@pytest.fixture
def aio_server() -> Iterator[str]:
    """An asyncio echo server (json codec, a secret) on its own loop in a thread; yields its URL."""
    urls: queue.Queue[str] = queue.Queue()
    stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def main() -> None:
        server = await opensocket.serve(
            "tcp://127.0.0.1:0", _aio_echo, codec="json", secret="shared secret"
        )
        stopped = asyncio.Event()
        stop.append((asyncio.get_running_loop(), stopped))
        urls.put(server.url)
        await stopped.wait()
        await server.close(0.1)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        yield urls.get(timeout=5)
    finally:
        loop, stopped = stop[0]
        loop.call_soon_threadsafe(stopped.set)
        thread.join(5)
        assert not thread.is_alive()


def test_sync_client_with_aio_server(aio_server: str) -> None:
    with sync.connect(aio_server, codec="json", secret="shared secret") as conn:
        conn.send({"hello": "aio"})
        assert conn.recv(timeout=5) == {"hello": "aio"}
        conn.send_many([[i] for i in range(500)])
        got: list[Any] = []
        while len(got) < 500:
            got.extend(conn.recv_batch(timeout=5))
        assert got == [[i] for i in range(500)]
    assert conn.close_code == CloseCode.NORMAL
    with pytest.raises(AuthenticationFailed):
        sync.connect(aio_server, codec="json", secret="wrong secret")


def test_aio_client_with_sync_server() -> None:
    async def client(url: str) -> list[Any]:
        conn = await opensocket.connect(url, codec="msgpack", secret="shared secret")
        try:
            await conn.send_many([{"n": i, "b": b"\x00"} for i in range(300)])
            got: list[Any] = []
            while len(got) < 300:
                got.extend(await conn.recv_batch(timeout=5))
            return got
        finally:
            await conn.close()

    with echo_server(codec="msgpack", secret="shared secret") as server:
        results: queue.Queue[Any] = queue.Queue()
        thread = threading.Thread(
            target=lambda: results.put(asyncio.run(client(server.url))), daemon=True
        )
        thread.start()
        thread.join(10)
        assert results.get(timeout=1) == [{"n": i, "b": b"\x00"} for i in range(300)]
        assert server.stats.messages_in == 300
