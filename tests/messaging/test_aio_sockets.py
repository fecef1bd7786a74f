"""The asyncio messaging sockets over real loopback connections."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import pytest

from opensocket.aio.messaging import (
    Pair,
    Publisher,
    Puller,
    Pusher,
    Replier,
    ReplyError,
    Requester,
    Socket,
    Subscriber,
)
from opensocket.errors import (
    AuthenticationFailed,
    NegotiationFailed,
    ReadTimeout,
    RequestAborted,
    RequestTimeout,
)
from opensocket.messaging import (
    BackoffOptions,
    Connected,
    Disconnected,
    Event,
    HandshakeFailed,
    HighWaterMark,
    Policy,
    PublisherOptions,
    PullOptions,
    PushOptions,
    Reconnecting,
    SessionLost,
    SessionOptions,
    SessionResumed,
)
from opensocket.options import ProtocolOptions
from opensocket.proxy import Proxy

FAST = BackoffOptions(base=0.02, max_delay=0.1)
LOCAL = "tcp://127.0.0.1:0"


async def until(sock: Socket, condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (event-driven: each pump of ``sock``) until ``condition`` holds."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await sock._wait_progress(deadline)


def caught_up(items: list[Any], count: int) -> bool:
    return len(items) >= count


async def close_all(*socks: Socket) -> None:
    for sock in socks:
        await sock.close(linger=0.5)


# ---- request / reply -------------------------------------------------------------------------


async def test_many_outstanding_requests_matched_by_id() -> None:
    running, peak = 0, 0

    async def handler(message: bytes) -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(int(message) % 5):  # replies come back out of order
            await asyncio.sleep(0)
        running -= 1
        return b"re:" + message

    rep = Replier(handler, concurrency=32)
    url = await rep.bind(LOCAL)
    req = Requester()
    await req.connect(url)
    async with asyncio.timeout(10):
        replies = await asyncio.gather(*(req.request(b"%d" % i, timeout=5) for i in range(500)))
    assert replies == [b"re:%d" % i for i in range(500)]
    assert req.stats.messages_out == 500 and req.stats.messages_in == 500
    assert rep.stats.messages_in == 500
    assert 1 < peak <= 32  # handled concurrently, within the cap
    await close_all(req, rep)


async def test_handler_error_becomes_reply_error_and_codecs_apply() -> None:
    async def handler(message: dict[str, Any]) -> dict[str, Any]:
        if message["x"] < 0:
            raise ValueError("negative")
        return {"double": message["x"] * 2}

    rep = Replier(handler, codec="json")
    url = await rep.bind(LOCAL)
    req = Requester(codec="json")
    await req.connect(url)
    assert await req.request({"x": 21}, timeout=5) == {"double": 42}
    with pytest.raises(ReplyError, match="ValueError: negative"):
        await req.request({"x": -1}, timeout=5)
    await close_all(req, rep)


async def test_replier_killed_mid_request_fails_fast_unless_retryable(free_port: int) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    first = Replier()  # holds requests without answering
    await first.bind(url)
    req = Requester(backoff=FAST)
    await req.connect(url)
    plain = asyncio.ensure_future(req.request(b"once"))
    retry = asyncio.ensure_future(req.request(b"again", retryable=True))
    async with asyncio.timeout(5):
        held = [await first.recv_request(), await first.recv_request()]
    assert sorted(r.message for r in held) == [b"again", b"once"]
    await first.close(linger=0)  # the replier dies holding both
    async with asyncio.timeout(5):
        with pytest.raises(RequestAborted):
            await plain  # no hang: a clear error at once
    assert not retry.done()

    second = Replier(lambda m: asyncio.sleep(0, b"second:" + m))
    await second.bind(url)  # back on the same port: the requester reconnects by itself
    async with asyncio.timeout(5):
        assert await retry == b"second:again"
    assert req.stats.redeliveries == 1
    assert req.stats.reconnects >= 1
    await close_all(req, second)


async def test_reconnects_with_backoff_after_server_restart(free_port: int) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    seen: list[Event] = []
    rep = Replier(lambda m: asyncio.sleep(0, m))
    await rep.bind(url)
    req = Requester(backoff=FAST, on_event=seen.append)
    await req.connect(url)
    assert await req.request(b"1", timeout=5) == b"1"
    await rep.close(linger=0)
    await until(req, lambda: any(isinstance(e, Reconnecting) for e in seen))
    rep = Replier(lambda m: asyncio.sleep(0, b"new:" + m))
    await rep.bind(url)
    assert await req.request(b"2", timeout=5) == b"new:2"
    kinds = [type(e) for e in seen]
    assert kinds[0] is Connected
    assert Disconnected in kinds and Reconnecting in kinds
    assert kinds.count(Connected) == 2
    assert req.stats.reconnects == 1
    await close_all(req, rep)


async def test_request_times_out_without_replier() -> None:
    req = Requester(backoff=FAST)
    await req.connect("tcp://127.0.0.1:1", wait=False)  # nothing listens there
    with pytest.raises(RequestTimeout):
        await req.request(b"x", timeout=0.1)
    assert req.stats.timeouts == 1
    await req.close(linger=0)


# ---- publish / subscribe ---------------------------------------------------------------------


async def test_subscribe_then_publish_delivers_everything_filtered_at_publisher() -> None:
    pub = Publisher()
    url = await pub.bind(LOCAL)
    sub = Subscriber()
    await sub.connect(url)
    await sub.subscribe("temp/")  # returns once the publisher holds it: no slow joiner
    for i in range(1000):
        await pub.publish("temp/paris" if i % 2 == 0 else "wind/paris", b"%d" % i)
    got = [await sub.recv(timeout=5) for _ in range(500)]
    assert got == [("temp/paris", b"%d" % i) for i in range(0, 1000, 2)]
    # Filtering happened at the publisher: only matching messages crossed the wire.
    assert pub.stats.messages_out == 500
    assert sub.stats.messages_in == 500
    assert sub.core.unwanted == 0
    with pytest.raises(ReadTimeout):
        await sub.recv(timeout=0.05)
    await close_all(sub, pub)


async def test_slow_subscriber_drops_are_counted_and_others_get_everything() -> None:
    pub = Publisher()
    url = await pub.bind(LOCAL)
    fast = Subscriber()
    slow = Subscriber(HighWaterMark(messages=10, policy=Policy.DROP_NEWEST))
    for sub in (fast, slow):
        await sub.connect(url)
        await sub.subscribe("t")
    sent = 300
    received_fast = 0
    for i in range(sent):
        await pub.publish("t", b"%d" % i)
        while True:  # the fast one keeps up; the slow one never reads meanwhile
            try:
                await fast.recv(timeout=0 if i < sent - 1 else 5)
            except ReadTimeout:
                break
            received_fast += 1
            if i == sent - 1 and received_fast == sent:
                break
    assert received_fast == sent
    await until(slow, lambda: slow.stats.messages_in + pub.stats.dropped >= sent)
    received_slow = 0
    while True:
        try:
            await slow.recv(timeout=0)
        except ReadTimeout:
            break
        received_slow += 1
    assert received_slow == 10
    assert sent == received_slow + slow.stats.dropped + pub.stats.dropped
    assert slow.stats.drops["drop-newest"] == sent - 10
    await close_all(fast, slow, pub)


async def test_subscriptions_restored_after_publisher_restart(free_port: int) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    pub = Publisher()
    await pub.bind(url)
    sub = Subscriber(backoff=FAST)
    await sub.connect(url)
    await sub.subscribe("a")
    await pub.close(linger=0)
    await until(sub, lambda: sub.peers == 0)
    pub = Publisher()
    await pub.bind(url)
    await sub.ready("a", timeout=5)  # re-subscribed by itself on reconnect
    await pub.publish("a1", b"back")
    assert await sub.recv(timeout=5) == ("a1", b"back")
    await close_all(sub, pub)


# ---- push / pull -----------------------------------------------------------------------------


async def test_push_round_robin_over_two_pullers() -> None:
    push = Pusher()
    url = await push.bind(LOCAL)
    pullers = [Puller(), Puller()]
    for pull in pullers:
        await pull.connect(url)
    await until(push, lambda: push.peers == 2 and all(push.core.credit.values()))
    for i in range(100):
        await push.send(b"%d" % i)
    got = [[await pull.recv(timeout=5) for _ in range(50)] for pull in pullers]
    assert sorted(got[0] + got[1], key=int) == [b"%d" % i for i in range(100)]
    assert abs(len(got[0]) - len(got[1])) == 0
    assert {int(m) % 2 for m in got[0]} == {int(got[0][0]) % 2}  # strictly alternating
    await close_all(*pullers, push)


async def test_puller_closed_holding_work_is_redelivered_to_the_other() -> None:
    push = Pusher(PushOptions(acks=True))
    url = await push.bind(LOCAL)
    dying = Puller(PullOptions(acks=True, prefetch=8))
    await dying.connect(url)
    await until(push, lambda: push.peers == 1 and all(push.core.credit.values()))
    for i in range(40):
        await push.send(b"%d" % i)
    first = await dying.recv(timeout=5)  # taken, never done
    await dying.close(linger=0)
    worker = Puller(PullOptions(acks=True, prefetch=8))
    await worker.connect(url)
    done = [await worker.recv(timeout=5) for _ in range(40)]
    worker.done()
    await until(push, lambda: push.core.acked == 40)
    assert sorted(done, key=int) == [b"%d" % i for i in range(40)]
    assert first in done
    assert push.core.redelivered == 8  # the dying one's prefetch, all handed on
    assert await push.close(linger=1) == 0
    await worker.close()


# ---- pair and sessions -----------------------------------------------------------------------


async def test_pair_both_directions() -> None:
    a, b = Pair(codec="json"), Pair(codec="json")
    url = await a.bind(LOCAL)
    await b.connect(url)
    await until(a, lambda: a.peers == 1)
    await b.send({"hi": 1})
    assert await a.recv(timeout=5) == {"hi": 1}
    await a.send([2])
    assert await b.recv(timeout=5) == [2]
    await close_all(a, b)


async def test_session_survives_a_cut_every_message_once_in_order() -> None:
    seen: list[Event] = []
    push = Pusher(sessions=SessionOptions())
    url = await push.bind(LOCAL)
    async with Proxy(LOCAL, url) as proxy:
        pull = Puller(
            PullOptions(prefetch=1000),
            sessions=SessionOptions(),
            backoff=FAST,
            on_event=seen.append,
        )
        await pull.connect(proxy.url)
        await until(push, lambda: push.peers == 1 and all(push.core.credit.values()))
        fault = proxy.reset_after(nbytes=20_000, direction="down")
        total = 3000
        got: list[bytes] = []
        for i in range(total):
            await push.send(b"%06d" % i + b"." * 40)
            if i % 100 == 99:
                while len(got) < i - 500:  # keep the puller in step so credit flows
                    got.append(await pull.recv(timeout=5))
            if any(isinstance(e, Disconnected) for e in seen):
                proxy.clear(fault)
        while len(got) < total:
            got.append(await pull.recv(timeout=5))
        assert any(isinstance(e, Disconnected) for e in seen), "the proxy did not cut"
        assert [int(m[:6]) for m in got] == list(range(total))
        assert any(isinstance(e, SessionResumed) for e in seen)
        assert pull.stats.sessions_lost == 0 and push.stats.sessions_lost == 0
        assert await push.close(linger=2) == 0  # waited for the session's acks
        await pull.close()


# ---- flow control, linger, monitor -----------------------------------------------------------


async def test_block_policy_on_receive_pauses_reading_and_loses_nothing() -> None:
    pub = Publisher()
    url = await pub.bind(LOCAL)
    sub = Subscriber(HighWaterMark(messages=10, policy=Policy.BLOCK))
    await sub.connect(url)
    await sub.subscribe("t")
    for i in range(300):
        await pub.publish("t", b"%d" % i + b"." * 1000)
    await until(sub, lambda: bool(sub._read_paused))  # the full inbox stopped the reads
    assert len(sub.core.inbox) < 300
    got = [await sub.recv(timeout=5) for _ in range(300)]
    assert [int(m.split(b".")[0]) for _, m in got] == list(range(300))
    assert sub.stats.dropped == 0 and pub.stats.dropped == 0
    await close_all(sub, pub)


async def test_close_reports_undelivered_after_linger() -> None:
    push = Pusher(PushOptions(acks=True))
    await push.bind(LOCAL)
    for i in range(5):
        await push.send(b"%d" % i)  # no puller: they stay queued
    assert push.unsettled() == 5
    assert await push.close(linger=0.05) == 5
    with pytest.raises(Exception, match="closed"):
        await push.send(b"late")


async def test_close_flushes_within_linger() -> None:
    push = Pusher()
    url = await push.bind(LOCAL)
    pull = Puller(PullOptions(prefetch=4))
    await pull.connect(url)
    await until(push, lambda: push.peers == 1)
    for i in range(20):
        await push.send(b"%d" % i)  # more than the credit: most wait in the pusher
    closing = asyncio.ensure_future(push.close(linger=5))
    got = [await pull.recv(timeout=5) for _ in range(20)]
    assert await closing == 0
    assert got == [b"%d" % i for i in range(20)]
    await pull.close()


async def test_monitor_events_as_async_iterator() -> None:
    rep = Replier(lambda m: asyncio.sleep(0, m))
    url = await rep.bind(LOCAL)
    req = Requester()
    await req.connect(url)
    assert await req.request(b"x", timeout=5) == b"x"
    await rep.close(linger=0)
    events: list[Event] = []
    async with asyncio.timeout(5):
        async for event in req.events():
            events.append(event)
            if isinstance(event, Disconnected):
                break
    assert isinstance(events[0], Connected) and events[0].address == url
    assert isinstance(events[-1], Disconnected)
    await req.close(linger=0)


async def test_stuck_subscriber_drops_at_the_publisher_not_slowing_others() -> None:
    pub = Publisher(PublisherOptions(hwm=HighWaterMark(messages=50, policy=Policy.DROP_NEWEST)))
    url = await pub.bind(LOCAL)
    fast = Subscriber()
    stuck = Subscriber(HighWaterMark(messages=10, policy=Policy.BLOCK))  # never reads for now
    for sub in (fast, stuck):
        await sub.connect(url)
        await sub.subscribe("t")
    sent, body = 2000, b"." * 16_384

    received: list[tuple[str, bytes]] = []

    async def read_fast() -> int:
        while len(received) < sent:
            received.append(await fast.recv(timeout=5))
        return len(received)

    reader = asyncio.ensure_future(read_fast())
    for i in range(sent):
        await pub.publish("t", b"%06d" % i + body)
        if i % 10 == 0:  # a publisher pacing itself to its fast reader, not to the stuck one
            await until(fast, functools.partial(caught_up, received, i - 20))
    assert await reader == sent  # the fast one got everything
    assert [int(m[:6]) for _, m in received] == list(range(sent))
    assert pub.stats.drops["drop-newest"] > 0  # the stuck one's transport filled up
    got = 0
    while got + pub.stats.dropped + stuck.stats.dropped < sent:  # each one accounted for
        await stuck.recv(timeout=5)
        got += 1
    with pytest.raises(ReadTimeout):
        await stuck.recv(timeout=0.05)  # and nothing beyond
    assert sent == got + pub.stats.dropped + stuck.stats.dropped
    await close_all(fast, stuck, pub)


async def test_session_lost_is_reported_when_the_server_forgot_it(free_port: int) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    seen: list[Event] = []
    pair = Pair(sessions=SessionOptions())
    await pair.bind(url)
    peer = Pair(sessions=SessionOptions(), backoff=FAST, on_event=seen.append)
    await peer.connect(url)
    await until(pair, lambda: pair.peers == 1)
    await pair.close(linger=0)  # a restarted server knows no session
    pair = Pair(sessions=SessionOptions())
    await pair.bind(url)
    await until(peer, lambda: any(isinstance(e, SessionLost) for e in seen))
    lost = next(e for e in seen if isinstance(e, SessionLost))
    assert "no longer knows" in lost.reason
    assert peer.stats.sessions_lost == 1
    await until(pair, lambda: pair.peers == 1)
    await peer.send(b"fresh")
    assert await pair.recv(timeout=5) == b"fresh"
    await close_all(peer, pair)


async def test_unix_socket_with_shared_secret(sock_path: str) -> None:
    url = f"unix://{sock_path}"
    rep = Replier(lambda m: asyncio.sleep(0, m[::-1]), secret="s3cret-shared")
    await rep.bind(url)
    req = Requester(secret="s3cret-shared")
    await req.connect(url)
    assert await req.request(b"abc", timeout=5) == b"cba"
    intruder = Requester(secret="wrong-secret")
    with pytest.raises(AuthenticationFailed):
        await intruder.connect(url)
    await close_all(req, intruder, rep)


async def test_oversized_message_closes_only_that_link() -> None:
    small = ProtocolOptions(max_frame_size=4096)
    pub = Publisher()
    url = await pub.bind(LOCAL)
    tiny, big = Subscriber(protocol=small, backoff=FAST), Subscriber()
    for sub in (tiny, big):
        await sub.connect(url)
        await sub.subscribe("t")
    await pub.publish("t", b"x" * 10_000)  # over tiny's limit, fine for big
    assert await big.recv(timeout=5) == ("t", b"x" * 10_000)
    assert pub.stats.drops["unsendable"] == 1  # counted, never silent
    await until(tiny, lambda: tiny.stats.reconnects == 1 and tiny.core.ready(b"t"))
    await pub.publish("t", b"ok")
    assert await tiny.recv(timeout=5) == ("t", b"ok")
    assert await big.recv(timeout=5) == ("t", b"ok")
    await close_all(tiny, big, pub)


async def test_late_joiner_gets_everything_published_after_subscribe_returns() -> None:
    pub = Publisher()
    url = await pub.bind(LOCAL)
    published = 0
    stop = asyncio.Event()

    async def publish_forever() -> None:
        nonlocal published
        while not stop.is_set() and published < 100_000:
            await pub.publish("news", b"%d" % published)
            published += 1
            if published % 20 == 0:
                await asyncio.sleep(0)

    sender = asyncio.ensure_future(publish_forever())
    await until(pub, lambda: published > 200)  # already sending when the subscriber joins
    sub = Subscriber()
    await sub.connect(url)
    await sub.subscribe("news")
    mark = published  # everything from here on must arrive
    await until(pub, lambda: published > mark + 500)
    stop.set()
    await sender
    await pub.publish("news", b"end")
    got = []
    while (message := (await sub.recv(timeout=5))[1]) != b"end":
        got.append(int(message))
    assert got == list(range(got[0], published))  # contiguous up to the last one
    assert got[0] <= mark
    await close_all(sub, pub)


async def test_wrong_pattern_is_a_handshake_failure_and_giving_up_fails_requests() -> None:
    pub = Publisher()
    url = await pub.bind(LOCAL)  # a publisher, not a replier
    with pytest.raises(NegotiationFailed, match="incompatible messaging patterns"):
        await Requester().connect(url)
    seen: list[Event] = []
    req = Requester(
        backoff=BackoffOptions(base=0.01, max_delay=0.02, max_attempts=2), on_event=seen.append
    )
    await req.connect(url, wait=False)
    async with asyncio.timeout(5):
        with pytest.raises(RequestAborted, match="gave up reconnecting"):
            await req.request(b"x")  # no timeout given: giving up must end it
    failures = [e for e in seen if isinstance(e, HandshakeFailed)]
    assert len(failures) == 3  # the first attempt and two retries
    assert isinstance(failures[0].error, NegotiationFailed)
    await close_all(req, pub)
