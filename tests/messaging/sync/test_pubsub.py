"""Blocking publish/subscribe over real loopback connections."""

from __future__ import annotations

import threading

import pytest

from opensocket.errors import ReadTimeout
from opensocket.messaging import HighWaterMark, Policy, PublisherOptions
from opensocket.sync.messaging import Publisher, Subscriber
from tests.sync.conftest import in_thread

from .conftest import FAST, LOCAL, closing, settle


def drain(sub: Subscriber) -> int:
    """Receive what is queued right now; return how many."""
    count = 0
    while True:
        try:
            sub.recv(timeout=0)
        except ReadTimeout:
            return count
        count += 1


def test_subscribe_then_publish_filtered_at_publisher() -> None:
    pub = Publisher()
    sub = Subscriber()
    with closing(sub, pub):
        sub.connect(pub.bind(LOCAL))
        sub.subscribe("temp/", timeout=5)  # returns once the publisher holds it
        for i in range(1000):
            pub.publish("temp/paris" if i % 2 == 0 else "wind/paris", b"%d" % i)
        got = [sub.recv(timeout=5) for _ in range(500)]
        assert got == [("temp/paris", b"%d" % i) for i in range(0, 1000, 2)]
        assert pub.stats.messages_out == 500  # only matching messages crossed the wire
        assert sub.stats.messages_in == 500
        with pytest.raises(ReadTimeout):
            sub.recv(timeout=0.05)


def test_slow_subscriber_beside_fast_ones_every_message_accounted_for() -> None:
    pub = Publisher()
    fast = [Subscriber(), Subscriber()]
    slow = Subscriber(HighWaterMark(messages=10, policy=Policy.DROP_NEWEST))
    with closing(*fast, slow, pub):
        url = pub.bind(LOCAL)
        for sub in (*fast, slow):
            sub.connect(url)
            sub.subscribe("t", timeout=5)
        sent = 500
        readers = [in_thread(lambda s=s: [s.recv(timeout=5) for _ in range(sent)]) for s in fast]
        for i in range(sent):  # the slow one never reads meanwhile
            pub.publish("t", b"%d" % i)
        for _, result in readers:
            got = result.get(timeout=10)
            assert got == [("t", b"%d" % i) for i in range(sent)]  # the fast ones got all
        settle(slow, lambda: slow.stats.messages_in + pub.stats.dropped >= sent)
        received = drain(slow)
        assert received == 10
        assert sent == received + slow.stats.dropped + pub.stats.dropped
        assert slow.stats.drops["drop-newest"] == sent - 10


def test_stuck_subscriber_drops_at_the_publisher_not_slowing_others() -> None:
    pub = Publisher(PublisherOptions(hwm=HighWaterMark(messages=50, policy=Policy.DROP_NEWEST)))
    fast = Subscriber()
    stuck = Subscriber(HighWaterMark(messages=10, policy=Policy.BLOCK))  # never reads for now
    with closing(fast, stuck, pub):
        url = pub.bind(LOCAL)
        for sub in (fast, stuck):
            sub.connect(url)
            sub.subscribe("t", timeout=5)
        sent, body = 2000, b"." * 16_384
        _reader, result = in_thread(lambda: [fast.recv(timeout=5) for _ in range(sent)])
        for i in range(sent):
            pub.publish("t", b"%06d" % i + body)
            if i % 10 == 0:  # pace the publisher to its fast reader, not to the stuck one
                settle(fast, lambda i=i: fast.stats.messages_in >= i - 20)
        received = result.get(timeout=10)
        assert [int(m[:6]) for _, m in received] == list(range(sent))
        assert pub.stats.drops["drop-newest"] > 0  # the stuck one's transport filled up
        got = 0
        while got + pub.stats.dropped + stuck.stats.dropped < sent:  # each one accounted for
            stuck.recv(timeout=5)
            got += 1
        with pytest.raises(ReadTimeout):
            stuck.recv(timeout=0.05)
        assert sent == got + pub.stats.dropped + stuck.stats.dropped


def test_late_joiner_gets_everything_published_after_subscribe_returns() -> None:
    pub = Publisher()
    sub = Subscriber()
    stop = threading.Event()
    published = 0
    started = threading.Event()

    def publish_forever() -> None:
        nonlocal published
        while not stop.is_set() and published < 200_000:
            pub.publish("news", b"%d" % published)
            published += 1
            if published == 200:
                started.set()

    with closing(sub, pub):
        url = pub.bind(LOCAL)
        sender, _done = in_thread(publish_forever)
        assert started.wait(5)  # already sending when the subscriber joins
        sub.connect(url)
        sub.subscribe("news", timeout=5)
        mark = published  # everything from here on must arrive
        settle(pub, lambda: published > mark + 500)
        stop.set()
        sender.join(5)
        pub.publish("news", b"end")
        got = []
        while (message := sub.recv(timeout=5)[1]) != b"end":
            got.append(int(message))
        assert got == list(range(got[0], published))  # contiguous up to the last one
        assert got[0] <= mark


def test_block_policy_on_receive_pauses_reading_and_loses_nothing() -> None:
    pub = Publisher()
    sub = Subscriber(HighWaterMark(messages=10, policy=Policy.BLOCK))
    with closing(sub, pub):
        sub.connect(pub.bind(LOCAL))
        sub.subscribe("t", timeout=5)
        for i in range(300):
            pub.publish("t", b"%d" % i + b"." * 1000)
        settle(sub, lambda: bool(sub._read_paused))  # the full inbox stopped the reads
        assert len(sub.core.inbox) < 300
        got = [sub.recv(timeout=5) for _ in range(300)]
        assert [int(m.split(b".")[0]) for _, m in got] == list(range(300))
        assert sub.stats.dropped == 0 and pub.stats.dropped == 0


def test_subscriptions_restored_after_publisher_restart(free_port: int) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    pub = Publisher()
    pub.bind(url)
    sub = Subscriber(backoff=FAST)
    pub2 = Publisher()
    with closing(sub, pub2, pub):
        sub.connect(url)
        sub.subscribe("a", timeout=5)
        pub.close(linger=0)
        settle(sub, lambda: sub.peers == 0)
        pub2.bind(url)
        sub.ready("a", timeout=5)  # re-subscribed by itself on reconnect
        pub2.publish("a1", b"back")
        assert sub.recv(timeout=5) == ("a1", b"back")


def test_last_value_cache_gives_a_late_joiner_the_latest_of_each_topic() -> None:
    pub = Publisher(PublisherOptions(last_value_cache=True))
    sub = Subscriber()
    with closing(sub, pub):
        url = pub.bind(LOCAL)
        for i in range(10):
            pub.publish("price/a", b"a%d" % i)
            pub.publish("price/b", b"b%d" % i)
        pub.publish("other", b"x")
        sub.connect(url)
        sub.subscribe("price/", timeout=5)
        got = sorted([sub.recv(timeout=5), sub.recv(timeout=5)])
        assert got == [("price/a", b"a9"), ("price/b", b"b9")]
        pub.publish("price/a", b"a10")
        assert sub.recv(timeout=5) == ("price/a", b"a10")
        with pytest.raises(ReadTimeout):
            sub.recv(timeout=0.05)
