"""Batch paths: queues extended at once, send_many/publish_many, batch receive, recv_many,
and one framing per fan-out; each must behave exactly like the message-by-message path."""

from __future__ import annotations

import pytest

from opensocket.aio.messaging import Publisher, Puller, Pusher, Subscriber
from opensocket.errors import QueueFull
from opensocket.messaging import HighWaterMark, Policy, PublisherOptions, PullOptions, PushOptions
from opensocket.messaging.bridge import Bridge
from opensocket.messaging.envelope import Envelope, Kind, encode
from opensocket.messaging.hwm import BoundedQueue, FairQueue, Outcome
from opensocket.messaging.pubsub import Publisher as PublisherCore
from opensocket.messaging.pubsub import Subscriber as SubscriberCore
from opensocket.messaging.pushpull import Puller as PullerCore
from opensocket.messaging.pushpull import Pusher as PusherCore

from .helpers import Net
from .test_aio_sockets import LOCAL, close_all, until

# ---- queues ----------------------------------------------------------------------------------


def test_extend_queues_all_or_nothing_and_keeps_the_counters() -> None:
    queue: BoundedQueue[str] = BoundedQueue(HighWaterMark(messages=5))
    assert queue.extend(["a", "b", "c"], [1, 2, 3]) is True
    assert queue.extend(["d", "e", "f"], [1, 1, 1]) is False  # 6 > 5: nothing queued
    assert len(queue) == 3 and queue.bytes == 6
    assert queue.counters.offered == queue.counters.accepted == 3
    assert queue.take() == ["a", "b", "c"] and queue.bytes == 0 and queue.counters.taken == 3


def test_extend_respects_a_byte_mark() -> None:
    queue: BoundedQueue[str] = BoundedQueue(HighWaterMark(messages=100, bytes=10))
    assert queue.extend(["a", "b"], [5, 6]) is False
    assert queue.extend(["a", "b"], [5, 5]) is True


def test_fair_queue_bulk_take_matches_turn_taking() -> None:
    fair: FairQueue[int, str] = FairQueue(HighWaterMark(messages=10))
    assert fair.extend(1, ["a", "b"], [1, 1])
    assert fair.take() == [(1, "a"), (1, "b")]  # one peer: taken at once
    fair.extend(1, ["a", "b"], [1, 1])
    fair.extend(2, ["x", "y"], [1, 1])
    assert fair.take() == [(1, "a"), (2, "x"), (1, "b"), (2, "y")]  # turns, as before
    assert len(fair) == 0


# ---- push / pull -----------------------------------------------------------------------------


def pushed(push: PusherCore, pulls: list[PullerCore], net: Net) -> list[list[bytes]]:
    net.pump()
    return [[env.payload for _, env in pull.take()] for pull in pulls]


def test_send_many_round_robins_like_send() -> None:
    net = Net()
    push, pulls = PusherCore(), [PullerCore(), PullerCore()]
    for pull in pulls:
        net.join(push, pull)
    net.pump()  # credit
    assert push.send_many([b"%d" % i for i in range(10)], 0) == 10
    got = pushed(push, pulls, net)
    assert sorted(got[0] + got[1], key=int) == [b"%d" % i for i in range(10)]
    assert len(got[0]) == len(got[1]) == 5
    assert push.stats.snapshot().messages_out == 10
    assert sum(p.stats.snapshot().messages_in for p in pulls) == 10


def test_send_many_stops_at_a_full_queue_under_block_and_the_rest_can_follow() -> None:
    push = PusherCore(PushOptions(hwm=HighWaterMark(messages=4)))  # no puller yet
    payloads = [b"%d" % i for i in range(10)]
    assert push.send_many(payloads, 0) == 4
    assert len(push.queue) == 4
    net = Net()
    pull = PullerCore(PullOptions(prefetch=100))
    net.join(push, pull)
    net.pump()
    assert push.send_many(payloads[4:], 0) == 6
    net.pump()
    assert [env.payload for _, env in pull.take()] == payloads


def test_send_many_applies_drop_and_raise_policies_message_by_message() -> None:
    drop = PusherCore(PushOptions(hwm=HighWaterMark(messages=3, policy=Policy.DROP_NEWEST)))
    assert drop.send_many([b"a", b"b", b"c", b"d", b"e"], 0) == 5
    assert [env.payload for env in drop.queue.take()] == [b"a", b"b", b"c"]
    assert drop.stats.snapshot().drops["drop-newest"] == 2
    strict = PusherCore(PushOptions(hwm=HighWaterMark(messages=2, policy=Policy.RAISE)))
    with pytest.raises(QueueFull):
        strict.send_many([b"a", b"b", b"c"], 0)
    assert len(strict.queue) == 2


def test_send_many_with_acks_gives_every_message_an_id() -> None:
    net = Net()
    push, pull = PusherCore(PushOptions(acks=True)), PullerCore(PullOptions(acks=True))
    net.join(push, pull)
    net.pump()
    push.send_many([b"a", b"b"], 0)
    net.pump()
    assert [env.id for _, env in pull.take()] == [1, 2]


def test_batch_receive_keeps_order_around_other_frames() -> None:
    pull = PullerCore(PullOptions(prefetch=10))
    pull.peer_up(1, 0)
    bare = [encode(Envelope(Kind.MESSAGE, b"%d" % i)) for i in range(3)]
    numbered = encode(Envelope(Kind.MESSAGE, b"id", 9))  # not bare: the one-by-one path
    pull.receive_many(1, [bare[0], numbered, bare[1], bare[2]], 0)
    assert [env.payload for _, env in pull.take()] == [b"0", b"id", b"1", b"2"]
    assert pull.stats.snapshot().messages_in == 4


def test_batch_receive_over_the_mark_applies_the_policy_to_each() -> None:
    hwm = HighWaterMark(messages=2, policy=Policy.DROP_NEWEST)
    pull = PullerCore(PullOptions(hwm=hwm, prefetch=10))
    pull.peer_up(1, 0)
    frames = [encode(Envelope(Kind.MESSAGE, b"%d" % i)) for i in range(5)]
    pull.receive_many(1, frames, 0)
    assert [env.payload for _, env in pull.take()] == [b"0", b"1"]
    assert pull.stats.snapshot().drops["drop-newest"] == 3


# ---- publish / subscribe ---------------------------------------------------------------------


def test_publish_many_reaches_every_subscriber_once_framed_once() -> None:
    pub = PublisherCore()
    bridge = Bridge(pub)
    subs = [SubscriberCore(), SubscriberCore()]
    for link, sub in enumerate(subs, 1):
        bridge.accepted(link, 0)
        sub.peer_up(1, 0)
        sub.subscribe(b"t", 0)
        bridge.receive_many(link, [encode(env) for _, env in sub.frames_to_send()], 0)
    bridge.frames_by_link(0)  # the SUBSCRIBED answers
    assert pub.publish_many(b"t.x", [b"a", b"b", b"c"], 0) == 3
    out = bridge.frames_by_link(0)
    assert sorted(out) == [1, 2]
    assert all(a is b for a, b in zip(out[1], out[2], strict=True))  # encoded once
    for link, sub in enumerate(subs, 1):
        sub.receive_many(1, out[link], 0)
        assert [(env.topic, env.payload) for _, env in sub.take()] == [
            (b"t.x", b"a"),
            (b"t.x", b"b"),
            (b"t.x", b"c"),
        ]


def test_publish_many_under_block_takes_what_the_slowest_subscriber_has_room_for() -> None:
    hwm = HighWaterMark(messages=3, policy=Policy.BLOCK)
    pub = PublisherCore(PublisherOptions(hwm=hwm))
    pub.peer_up(1, 0)
    pub.receive(1, Envelope(Kind.SUBSCRIBE, topic=b""), 0)
    assert pub.publish_many(b"t", [b"1", b"2", b"3", b"4"], 0) == 3
    assert pub.publish_many(b"t", [b"4"], 0) == 0
    assert pub.publish(b"t", b"4", 0) is Outcome.WOULD_BLOCK


def test_a_subscriber_drops_what_it_no_longer_wants_in_a_batch() -> None:
    sub = SubscriberCore()
    sub.peer_up(1, 0)
    sub.subscribe(b"a", 0)
    topics = [b"a", b"b", b"a", b"b"]
    frames = [encode(Envelope(Kind.PUBLISH, b"%d" % i, topic=t)) for i, t in enumerate(topics)]
    sub.receive_many(1, frames, 0)
    assert [env.payload for _, env in sub.take()] == [b"0", b"2"]
    assert sub.unwanted == 2


# ---- asyncio ---------------------------------------------------------------------------------


async def test_send_many_and_recv_many_over_loopback() -> None:
    pull = Puller(PullOptions(prefetch=50))
    url = await pull.bind(LOCAL)
    push = Pusher()
    await push.connect(url)
    total = 1000  # more than the credit: send_many must wait for more and go on
    await push.send_many([b"%d" % i for i in range(total)])
    got: list[bytes] = []
    while len(got) < total:
        got += await pull.recv_many(timeout=5)
    assert got == [b"%d" % i for i in range(total)]
    assert pull.stats.messages_in == total
    await close_all(push, pull)


async def test_recv_many_with_acks_acknowledges_the_batch_on_the_next_call() -> None:
    push = Pusher(PushOptions(acks=True))
    url = await push.bind(LOCAL)
    pull = Puller(PullOptions(acks=True))
    await pull.connect(url)
    await until(push, lambda: push.peers == 1 and all(push.core.credit.values()))
    await push.send_many([b"a", b"b", b"c"])
    got: list[bytes] = []
    while len(got) < 3:
        got += await pull.recv_many(timeout=5)
    assert len(push.core.inflight) == 3
    pull.done()
    await until(push, lambda: not push.core.inflight)
    assert push.core.acked == 3
    await close_all(pull, push)


async def test_publish_many_and_recv_many_to_two_subscribers() -> None:
    pub = Publisher(PublisherOptions(hwm=HighWaterMark(messages=100, policy=Policy.BLOCK)))
    url = await pub.bind(LOCAL)
    subs = [Subscriber(), Subscriber()]
    for sub in subs:
        await sub.connect(url)
        await sub.subscribe("news", timeout=5)
    total = 500  # over the mark: publish_many waits for room
    await pub.publish_many("news.today", [b"%d" % i for i in range(total)])
    for sub in subs:
        got: list[tuple[str, bytes]] = []
        while len(got) < total:
            got += await sub.recv_many(timeout=5)
        assert got == [("news.today", b"%d" % i) for i in range(total)]
    assert pub.stats.dropped == 0
    await close_all(*subs, pub)
