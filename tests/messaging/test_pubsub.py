"""Publish/subscribe: prefix matching at the publisher, subscribe acks, LVC, slow subscribers."""

from __future__ import annotations

import random

import pytest

from opensocket.errors import ConfigError
from opensocket.messaging.envelope import Envelope, Kind
from opensocket.messaging.events import MessageDropped, SubscriptionReady
from opensocket.messaging.hwm import HighWaterMark, Outcome, Policy
from opensocket.messaging.pubsub import (
    LastValueCache,
    Publisher,
    PublisherOptions,
    Subscriber,
    SubscriptionIndex,
)

from .helpers import Net


def payloads(sub: Subscriber) -> list[bytes]:
    return [env.payload for _, env in sub.take()]


def test_index_matches_like_a_brute_force_check() -> None:
    rng = random.Random(7)
    alphabet = b"abc/"
    index = SubscriptionIndex()
    subs: dict[int, set[bytes]] = {p: set() for p in range(20)}
    for _ in range(400):
        peer = rng.randrange(20)
        prefix = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 5)))
        if rng.random() < 0.8:
            assert index.add(peer, prefix) == (prefix not in subs[peer])
            subs[peer].add(prefix)
        else:
            assert index.remove(peer, prefix) == (prefix in subs[peer])
            subs[peer].discard(prefix)
    index.remove_peer(3)
    subs[3] = set()
    for _ in range(300):
        topic = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 7)))
        expected = {p for p, prefixes in subs.items() if any(topic.startswith(x) for x in prefixes)}
        assert index.match(topic) == expected
    assert index.prefixes(5) == subs[5]


def test_last_value_cache_prefix_ranges() -> None:
    cache = LastValueCache(max_topics=3)
    for topic, value in [(b"b/2", b"1"), (b"a/1", b"2"), (b"b/1", b"3"), (b"b/1", b"4")]:
        cache.put(topic, value)
    cache.put(b"c", b"over the cap")
    assert len(cache) == 3
    assert list(cache.matching(b"b/")) == [(b"b/1", b"4"), (b"b/2", b"1")]
    assert list(cache.matching(b"")) == [(b"a/1", b"2"), (b"b/1", b"4"), (b"b/2", b"1")]
    assert list(cache.matching(b"z")) == []


def test_filtering_happens_at_the_publisher() -> None:
    net = Net()
    pub, weather, everything = Publisher(), Subscriber(), Subscriber()
    net.join(pub, weather)
    net.join(pub, everything)
    weather.subscribe(b"weather/", 0)
    everything.subscribe(b"", 0)
    net.pump()
    for topic in (b"weather/paris", b"news/x", b"weather/oslo"):
        pub.publish(topic, topic.upper(), 0)
    net.pump()
    assert payloads(weather) == [b"WEATHER/PARIS", b"WEATHER/OSLO"]
    assert len(payloads(everything)) == 3
    # only matching messages crossed the wire to the weather subscriber
    assert pub.stats.snapshot().messages_out == 5


def test_subscribe_is_acknowledged_no_slow_joiner() -> None:
    net = Net()
    pub, sub = Publisher(), Subscriber()
    net.join(pub, sub)
    sub.subscribe(b"t", 0)
    assert not sub.ready(b"t")
    pub.publish(b"t1", b"before", 0)  # the subscription has not reached the publisher
    net.pump()
    assert sub.ready(b"t")
    assert SubscriptionReady(b"t") in sub.events()
    pub.publish(b"t1", b"after", 0)  # published after ready: guaranteed to arrive
    net.pump()
    assert payloads(sub) == [b"after"]


def test_ready_needs_every_publisher() -> None:
    net = Net()
    a, b, sub = Publisher(), Publisher(), Subscriber()
    sub.subscribe(b"x", 0)
    assert not sub.ready(b"x")  # no publisher at all
    net.join(a, sub)
    net.pump()
    assert sub.ready(b"x")
    net.join(b, sub)  # a new publisher: not ready until it confirms too
    assert not sub.ready(b"x")
    net.pump()
    assert sub.ready(b"x")
    assert [e for e in sub.events() if isinstance(e, SubscriptionReady)] == [
        SubscriptionReady(b"x"),
        SubscriptionReady(b"x"),
    ]


def test_resubscribe_after_reconnect_and_unsubscribe() -> None:
    net = Net()
    pub, sub = Publisher(), Subscriber()
    p_pub, _ = net.join(pub, sub)
    sub.subscribe(b"a", 0)
    sub.subscribe(b"b", 0)
    net.pump()
    net.drop(pub, p_pub)
    assert pub.index.match(b"a") == set()
    net.join(pub, sub)  # reconnected: subscriptions restored by the subscriber
    net.pump()
    assert sub.ready(b"a") and sub.ready(b"b")
    sub.unsubscribe(b"a", 0)
    pub.publish(b"a1", b"in flight", 0)  # queued before the UNSUBSCRIBE arrives
    net.pump()
    pub.publish(b"a1", b"filtered", 0)
    pub.publish(b"b1", b"kept", 0)
    net.pump()
    assert payloads(sub) == [b"kept"]
    assert sub.unwanted == 1 and sub.stats.snapshot().drops["unsubscribed"] == 1


def test_last_value_cache_for_late_joiners() -> None:
    net = Net()
    pub = Publisher(PublisherOptions(last_value_cache=True))
    net.add(pub)
    for i in range(3):
        pub.publish(b"px/a", f"a{i}".encode(), 0)
        pub.publish(b"px/b", f"b{i}".encode(), 0)
    pub.publish(b"other", b"o", 0)
    late = Subscriber()
    net.join(pub, late)
    late.subscribe(b"px/", 0)
    net.pump()
    assert late.ready(b"px/")
    assert payloads(late) == [b"a2", b"b2"]  # the latest of each matching topic, once


def test_slow_subscriber_is_isolated() -> None:
    net = Net()
    opts = PublisherOptions(hwm=HighWaterMark(10, policy=Policy.DROP_NEWEST))
    pub, fast1, fast2, slow = Publisher(opts), Subscriber(), Subscriber(), Subscriber()
    net.join(pub, fast1)
    net.join(pub, fast2)
    p_slow, _ = net.join(pub, slow)
    for sub in (fast1, fast2, slow):
        sub.subscribe(b"", 0)
    net.pump()
    pub.set_writable(p_slow, False)  # its transport is full
    total = 1000
    got = {id(s): 0 for s in (fast1, fast2, slow)}
    for i in range(total):
        assert pub.publish(b"t", str(i).encode(), 0) is Outcome.QUEUED
        if i % 5 == 0:
            net.pump()
            for sub in (fast1, fast2, slow):
                got[id(sub)] += len(sub.take())
    net.pump()
    pub.set_writable(p_slow, True)
    net.pump()
    for sub in (fast1, fast2, slow):
        got[id(sub)] += len(sub.take())
    assert got[id(fast1)] == got[id(fast2)] == total  # never slowed, nothing lost
    dropped = pub.stats.snapshot().peers[p_slow].drops["drop-newest"]
    assert got[id(slow)] == 10 and got[id(slow)] + dropped == total  # every message accounted
    events = [e for e in pub.events() if isinstance(e, MessageDropped)]
    assert sum(e.count for e in events) == dropped and {e.peer for e in events} == {p_slow}


def test_block_policy_and_disconnect_accounting() -> None:
    pub = Publisher(PublisherOptions(hwm=HighWaterMark(2, policy=Policy.BLOCK)))
    pub.peer_up(1, 0)
    pub.receive(1, Envelope(Kind.SUBSCRIBE, topic=b""), 0)
    pub.frames_to_send()
    pub.set_writable(1, False)
    outcomes = [pub.publish(b"t", b"x", 0) for _ in range(3)]
    assert outcomes == [Outcome.QUEUED, Outcome.QUEUED, Outcome.WOULD_BLOCK]
    assert pub.published == 2
    pub.peer_down(1, 0)
    assert MessageDropped(1, "out", "disconnected", 2) in pub.events()


def test_subscriber_inbox_hwm_and_fair_queueing() -> None:
    sub = Subscriber(HighWaterMark(2, policy=Policy.DROP_OLDEST))
    sub.subscribe(b"", 0)
    for peer in (1, 2):
        sub.peer_up(peer, 0)
    for i in range(4):
        sub.receive(1, Envelope(Kind.PUBLISH, f"a{i}".encode(), topic=b"t"), 0)
    sub.receive(2, Envelope(Kind.PUBLISH, b"b0", topic=b"t"), 0)
    assert sub.paused == set()  # a drop policy keeps reading: the inbox drops, counted
    assert payloads(sub) == [b"a2", b"b0", b"a3"]
    assert sub.stats.snapshot().drops["drop-oldest"] == 2
    assert MessageDropped(1, "in", "drop-oldest", 2) in sub.events()


def test_topic_checks() -> None:
    with pytest.raises(ConfigError, match="must be bytes"):
        Subscriber().subscribe("text", 0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at most 65535"):
        Publisher().publish(b"x" * 65536, b"", 0)
    with pytest.raises(ConfigError):
        PublisherOptions(max_cached_topics=0)
