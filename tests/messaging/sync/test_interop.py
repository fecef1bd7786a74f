"""Blocking sockets talking to asyncio sockets of the peer pattern (one wire format)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from opensocket.aio import messaging as aio
from opensocket.messaging import PullOptions, PushOptions
from opensocket.sync import messaging as blocking

from .conftest import LOCAL, closing, settle

T = TypeVar("T")


class Loop:
    """An asyncio loop in a thread of its own, for the asyncio peers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="opensocket-test-loop")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.run(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def aloop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def test_blocking_requester_to_asyncio_replier(aloop: Loop) -> None:
    async def start() -> tuple[aio.Replier, str]:
        async def handler(message: dict[str, int]) -> dict[str, int]:
            return {"sum": message["a"] + message["b"]}

        rep = aio.Replier(handler, codec="json")
        return rep, await rep.bind(LOCAL)

    rep, url = aloop.run(start())
    req = blocking.Requester(codec="json")
    try:
        with closing(req):
            req.connect(url)
            assert [req.request({"a": i, "b": 1}, timeout=5) for i in range(20)] == [
                {"sum": i + 1} for i in range(20)
            ]
    finally:
        aloop.run(rep.close(linger=0))


def test_asyncio_requester_to_blocking_replier(aloop: Loop) -> None:
    rep = blocking.Replier(lambda m: m[::-1])
    with closing(rep):
        url = rep.bind(LOCAL)

        async def ask() -> list[bytes]:
            req = aio.Requester()
            await req.connect(url)
            try:
                coros = (req.request(b"abc%d" % i, timeout=5) for i in range(50))
                return list(await asyncio.gather(*coros))
            finally:
                await req.close(linger=0)

        assert aloop.run(ask()) == [(b"abc%d" % i)[::-1] for i in range(50)]
        assert rep.stats.messages_in == 50


def test_asyncio_publisher_to_blocking_subscriber(aloop: Loop) -> None:
    async def start() -> tuple[aio.Publisher, str]:
        pub = aio.Publisher()
        return pub, await pub.bind(LOCAL)

    pub, url = aloop.run(start())

    async def publish(count: int) -> None:
        for i in range(count):
            await pub.publish(f"x/{i % 2}", b"%d" % i)

    sub = blocking.Subscriber()
    try:
        with closing(sub):
            sub.connect(url)
            sub.subscribe("x/1", timeout=5)
            aloop.run(publish(100))
            got = [sub.recv(timeout=5) for _ in range(50)]
            assert got == [("x/1", b"%d" % i) for i in range(1, 100, 2)]
    finally:
        aloop.run(pub.close(linger=0))


def test_blocking_pusher_with_acks_to_asyncio_puller(aloop: Loop) -> None:
    push = blocking.Pusher(PushOptions(acks=True))
    with closing(push):
        url = push.bind(LOCAL)

        async def pull_all() -> list[bytes]:
            pull = aio.Puller(PullOptions(acks=True, prefetch=10))
            await pull.connect(url)
            try:
                got = [await pull.recv(timeout=5) for _ in range(100)]
                pull.done()
                return got
            finally:
                await pull.close(linger=1)

        future = asyncio.run_coroutine_threadsafe(pull_all(), aloop.loop)
        for i in range(100):
            push.send(b"%d" % i)
        assert future.result(10) == [b"%d" % i for i in range(100)]
        settle(push, lambda: push.core.acked == 100)
        assert push.close(linger=1) == 0
