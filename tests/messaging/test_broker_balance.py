"""The broker's worker choice (least-loaded by default, round-robin on request), TLS on both
ends with a throwaway PKI, and a shared secret on both ends."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from opensocket.aio.messaging import Broker, Replier, Requester, Socket
from opensocket.errors import AuthenticationFailed
from opensocket.messaging import BackoffOptions
from tests.tlsutil import make_pki

FAST = BackoffOptions(base=0.02, max_delay=0.1)
LOCAL = "tcp://127.0.0.1:0"
SECRET = "broker-test-secret"


async def until(sock: Socket, condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (event-driven: each pump of ``sock``) until ``condition`` holds."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await sock._wait_progress(deadline)


class Slow:
    """A worker's handler that holds every request until released."""

    def __init__(self) -> None:
        self.entered: list[bytes] = []
        self.release = asyncio.Event()
        self.changed = asyncio.Event()

    async def __call__(self, message: bytes) -> bytes:
        self.entered.append(message)
        self.changed.set()
        await self.release.wait()
        return b"slow:" + message

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.entered) < count:
                self.changed.clear()
                await self.changed.wait()


def fast(seen: Counter[str]) -> Replier:
    async def handle(message: bytes) -> bytes:
        seen["fast"] += 1
        return b"fast:" + message

    return Replier(handle, backoff=FAST)


async def close_all(broker: Broker, *socks: Socket) -> None:
    for sock in socks:
        await sock.close(linger=0.5)
    await broker.close(linger=0.5)


async def busy_slow_worker(
    broker: Broker, slow: Slow, **kwargs: object
) -> tuple[Requester, Replier, Replier, asyncio.Future[bytes], Counter[str]]:
    """A broker whose slow worker holds one request, with an idle fast worker beside it."""
    front, back = await broker.bind(LOCAL, LOCAL)
    slow_worker = Replier(slow, backoff=FAST)
    await slow_worker.connect(back)
    await until(broker.back, lambda: broker.back.peers == 1)
    req = Requester(backoff=FAST)
    await req.connect(front)
    held = asyncio.ensure_future(req.request(b"long", timeout=5))
    await slow.wait_for(1)
    seen: Counter[str] = Counter()
    fast_worker = fast(seen)
    await fast_worker.connect(back)
    await until(broker.back, lambda: broker.back.peers == 2)
    return req, slow_worker, fast_worker, held, seen


async def test_least_loaded_sends_to_the_idle_worker_while_a_slow_one_is_busy() -> None:
    broker, slow = Broker("reqrep"), Slow()  # least-loaded is the default
    req, slow_worker, fast_worker, held, seen = await busy_slow_worker(broker, slow)
    for i in range(10):
        assert await req.request(b"%d" % i, timeout=5) == b"fast:%d" % i
    assert seen["fast"] == 10 and slow.entered == [b"long"]  # none queued behind the slow one
    slow.release.set()
    assert await held == b"slow:long"
    assert broker.back.core.load == dict.fromkeys(broker.back.core.peers, 0)
    await close_all(broker, req, slow_worker, fast_worker)


async def test_round_robin_keeps_feeding_a_busy_worker() -> None:
    broker, slow = Broker("reqrep", balance="round-robin"), Slow()
    req, slow_worker, fast_worker, held, _ = await busy_slow_worker(broker, slow)
    more = [asyncio.ensure_future(req.request(b"%d" % i, timeout=5)) for i in range(4)]
    await slow.wait_for(3)  # strictly in turn: two of the four wait behind the busy worker
    slow.release.set()
    replies = await asyncio.gather(held, *more)
    assert sorted(r.split(b":")[0] for r in replies) == [b"fast"] * 2 + [b"slow"] * 3
    await close_all(broker, req, slow_worker, fast_worker)


async def test_tls_broker_serves_reqrep_on_both_ends(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    broker = Broker("reqrep", tls=pki.server_tls())
    front, back = await broker.bind("tls://127.0.0.1:0", "tls://127.0.0.1:0")
    assert front.startswith("tls://") and back.startswith("tls://")
    worker = Replier(lambda m: asyncio.sleep(0, m.upper()), tls=pki.client_tls(), backoff=FAST)
    await worker.connect(back)
    req = Requester(tls=pki.client_tls(), backoff=FAST)
    await req.connect(front)
    assert await req.request(b"over tls", timeout=5) == b"OVER TLS"
    assert broker.forwarded == 1
    await close_all(broker, req, worker)


async def test_only_one_end_over_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    broker = Broker("reqrep", front_tls=pki.server_tls(), back_tls=None)
    front, back = await broker.bind("tls://127.0.0.1:0", LOCAL)
    assert front.startswith("tls://") and back.startswith("tcp://")
    worker = Replier(lambda m: asyncio.sleep(0, m[::-1]), backoff=FAST)
    await worker.connect(back)
    req = Requester(tls=pki.client_tls(), backoff=FAST)
    await req.connect(front)
    assert await req.request(b"abc", timeout=5) == b"cba"
    await close_all(broker, req, worker)


async def test_a_secret_broker_refuses_peers_without_it() -> None:
    broker = Broker("reqrep", secret=SECRET)
    front, back = await broker.bind(LOCAL, LOCAL)
    worker = Replier(lambda m: asyncio.sleep(0, m), secret=SECRET, backoff=FAST)
    await worker.connect(back)
    req = Requester(secret=SECRET, backoff=FAST)
    await req.connect(front)
    assert await req.request(b"ok", timeout=5) == b"ok"
    for intruder, url in ((Requester(secret="x" * 12), front), (Replier(secret="x" * 12), back)):
        with pytest.raises(AuthenticationFailed):
            await intruder.connect(url)
        await intruder.close(linger=0)
    await close_all(broker, req, worker)
