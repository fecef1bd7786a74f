"""Closing a socket with sessions acknowledges what it received, so the peer's linger does
not count delivered messages as undelivered (both runtimes)."""

from __future__ import annotations

from opensocket.aio.messaging import Replier, Requester
from opensocket.messaging import SessionOptions
from opensocket.sync import messaging as sync_messaging


async def echo(message: bytes) -> bytes:
    return message


async def test_a_closing_requester_acknowledges_its_reply_asyncio() -> None:
    rep = Replier(echo, sessions=SessionOptions())
    url = await rep.bind("tcp://127.0.0.1:0")
    req = Requester(sessions=SessionOptions(ack_delay=0.5))  # its delayed ACK would be late
    await req.connect(url)
    assert await req.request(b"one", timeout=5) == b"one"
    assert await req.close() == 0
    assert await rep.close(linger=5) == 0  # the reply counts as delivered


def test_a_closing_requester_acknowledges_its_reply_threads() -> None:
    rep = sync_messaging.Replier(lambda m: m, sessions=SessionOptions())
    url = rep.bind("tcp://127.0.0.1:0")
    req = sync_messaging.Requester(sessions=SessionOptions(ack_delay=0.5))
    req.connect(url)
    assert req.request(b"one", timeout=5) == b"one"
    assert req.close() == 0
    assert rep.close(linger=5) == 0
