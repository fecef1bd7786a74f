"""Publish/subscribe, sans I/O: prefix subscriptions filtered at the publisher.

Subscribers send SUBSCRIBE/UNSUBSCRIBE with a topic prefix to every publisher they are
connected to (again after each reconnection). The publisher keeps them in a
``SubscriptionIndex`` and answers each SUBSCRIBE with SUBSCRIBED, so a subscriber knows when
a publisher holds the subscription (``SubscriptionReady`` once every connected publisher
confirmed): from then on every matching message published reaches it (no slow joiner).

Each subscriber has its own send queue with the high-water mark policy, so a slow one drops
(and counts) its own messages and never slows the publisher or the others. With the
last-value cache on, a new subscription first receives the latest message of each cached
topic it matches.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError
from ._base import PatternCore
from .envelope import Envelope, Kind, WireFrame, decode
from .events import Event, SubscriptionReady
from .hwm import FairQueue, HighWaterMark, Outcome, Policy

__all__ = ["LastValueCache", "Publisher", "PublisherOptions", "Subscriber", "SubscriptionIndex"]

MAX_TOPIC = 65535
MAX_BARE = 1024  # topics whose PUBLISH metadata a subscriber remembers (skips decoding)
MAX_BARE_META = 256  # ... only short ones: the topics come from the peer


def _check_topic(topic: bytes) -> bytes:
    if not isinstance(topic, bytes | bytearray):
        raise ConfigError(f"a topic must be bytes, not {type(topic).__name__}")
    if len(topic) > MAX_TOPIC:
        raise ConfigError(f"a topic is at most {MAX_TOPIC} bytes, got {len(topic)}")
    return bytes(topic)


class SubscriptionIndex:
    """Prefix subscriptions of many peers; ``match`` costs one dict lookup per distinct
    prefix length, however many peers and prefixes there are."""

    def __init__(self) -> None:
        self._by_prefix: dict[bytes, set[int]] = {}
        self._by_peer: dict[int, set[bytes]] = {}
        self._lengths: Counter[int] = Counter()
        self._sorted: list[int] = []

    def add(self, peer: int, prefix: bytes) -> bool:
        """Subscribe ``peer`` to ``prefix``; False if it already was."""
        mine = self._by_peer.setdefault(peer, set())
        if prefix in mine:
            return False
        mine.add(prefix)
        peers = self._by_prefix.get(prefix)
        if peers is None:
            peers = self._by_prefix[prefix] = set()
            self._count(len(prefix), 1)
        peers.add(peer)
        return True

    def remove(self, peer: int, prefix: bytes) -> bool:
        """Unsubscribe ``peer`` from ``prefix``; False if it was not subscribed."""
        mine = self._by_peer.get(peer)
        if mine is None or prefix not in mine:
            return False
        mine.discard(prefix)
        peers = self._by_prefix[prefix]
        peers.discard(peer)
        if not peers:
            del self._by_prefix[prefix]
            self._count(len(prefix), -1)
        return True

    def remove_peer(self, peer: int) -> None:
        """Forget every subscription of ``peer``."""
        for prefix in list(self._by_peer.get(peer, ())):
            self.remove(peer, prefix)
        self._by_peer.pop(peer, None)

    def _count(self, length: int, delta: int) -> None:
        self._lengths[length] += delta
        if self._lengths[length] == 0:
            del self._lengths[length]
        self._sorted = sorted(self._lengths)

    def match(self, topic: bytes) -> set[int]:
        """The peers with a prefix of ``topic``."""
        found: set[int] = set()
        get = self._by_prefix.get
        size = len(topic)
        for length in self._sorted:
            if length > size:
                break
            peers = get(topic[:length])
            if peers:
                found |= peers
        return found

    def prefixes(self, peer: int) -> set[bytes]:
        """The prefixes ``peer`` holds."""
        return set(self._by_peer.get(peer, ()))


class LastValueCache:
    """The latest payload per topic, with topics sorted so a prefix finds its range fast."""

    def __init__(self, max_topics: int) -> None:
        self.max_topics = max_topics
        self._values: dict[bytes, bytes] = {}
        self._topics: list[bytes] = []

    def __len__(self) -> int:
        return len(self._values)

    def put(self, topic: bytes, payload: bytes) -> None:
        """Remember ``payload`` as the latest of ``topic`` (new topics beyond the cap are not
        cached)."""
        if topic not in self._values:
            if len(self._values) >= self.max_topics:
                return
            bisect.insort(self._topics, topic)
        self._values[topic] = payload

    def matching(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Cached (topic, payload) pairs whose topic starts with ``prefix``, in topic order."""
        topics = self._topics
        for index in range(bisect.bisect_left(topics, prefix), len(topics)):
            topic = topics[index]
            if not topic.startswith(prefix):
                break
            yield topic, self._values[topic]


@dataclass(frozen=True, slots=True)
class PublisherOptions:
    """Per-subscriber queue mark (drop-newest by default) and the last-value cache."""

    hwm: HighWaterMark = field(default_factory=lambda: HighWaterMark(policy=Policy.DROP_NEWEST))
    last_value_cache: bool = False
    max_cached_topics: int = 100_000

    def __post_init__(self) -> None:
        if self.max_cached_topics < 1:
            raise ConfigError("max_cached_topics must be >= 1")


class Publisher(PatternCore):
    """The publishing side (see the module docstring)."""

    name = "publish"

    def __init__(self, options: PublisherOptions | None = None) -> None:
        self.options = opts = options or PublisherOptions()
        super().__init__(opts.hwm)
        self.index = SubscriptionIndex()
        self.cache = LastValueCache(opts.max_cached_topics) if opts.last_value_cache else None
        self.published = 0
        self.last_fanout = 0

    def publish(self, topic: bytes, payload: bytes, now: float) -> Outcome:
        """Queue a message for every matching subscriber.

        Under BLOCK, if one of them is full nothing is queued and WOULD_BLOCK comes back;
        under the drop policies each full subscriber drops (and counts) on its own.
        """
        topic = _check_topic(topic)
        self.check_size(payload, topic)
        peers = self.index.match(topic)
        if self.hwm.policy is Policy.BLOCK and any(self.peers[p].queue.full for p in peers):
            return Outcome.WOULD_BLOCK
        env = Envelope(Kind.PUBLISH, bytes(payload), topic=topic)
        if self.cache is not None:
            self.cache.put(topic, env.payload)
        self.published += 1
        self.last_fanout = len(peers)
        for peer in peers:
            self._queue(peer, env)
        return Outcome.QUEUED

    def publish_many(self, topic: bytes, payloads: Sequence[bytes], now: float) -> int:
        """Publish messages on one topic in order, as ``publish`` would one by one; return
        how many were taken before a full subscriber said WOULD_BLOCK (under BLOCK)."""
        if not payloads:
            return 0
        topic = _check_topic(topic)
        self.check_size(max(payloads, key=len), topic)
        peers = self.index.match(topic)
        count = len(payloads)
        if self.hwm.policy is Policy.BLOCK and peers:
            if self.hwm.bytes is not None:  # room in bytes: ask one message at a time
                return self._publish_each(topic, payloads, now)
            room = min(self.hwm.messages - len(self.peers[p].queue) for p in peers)
            count = max(0, min(count, room))
            if count == 0:
                return 0
        kind = Kind.PUBLISH
        new = tuple.__new__  # faster than the named tuple's own __new__ with keywords
        envs = [
            new(Envelope, (kind, bytes(p), None, topic, 0, None, None)) for p in payloads[:count]
        ]
        sizes = [len(p) + len(topic) for p in payloads[:count]]
        if self.cache is not None:
            self.cache.put(topic, envs[-1].payload)
        self.published += count
        self.last_fanout = len(peers)
        for peer in peers:
            self._queue_many(peer, envs, sizes)  # the same envelopes: encoded once for all
        return count

    def _publish_each(self, topic: bytes, payloads: Sequence[bytes], now: float) -> int:
        for sent, payload in enumerate(payloads):
            if self.publish(topic, payload, now) is Outcome.WOULD_BLOCK:
                return sent
        return len(payloads)

    def _on_subscribe(self, peer: int, env: Envelope, now: float) -> None:
        assert env.topic is not None
        self.index.add(peer, env.topic)
        self._control.append((peer, Envelope(Kind.SUBSCRIBED, topic=env.topic)))
        if self.cache is not None:
            for topic, payload in self.cache.matching(env.topic):
                self._queue(peer, Envelope(Kind.PUBLISH, payload, topic=topic))

    def _on_unsubscribe(self, peer: int, env: Envelope, now: float) -> None:
        assert env.topic is not None
        self.index.remove(peer, env.topic)

    def peer_down(self, peer: int, now: float) -> list[Envelope]:
        """A subscriber is gone: its subscriptions go, its queued messages count as dropped."""
        queued = super().peer_down(peer, now)
        self.index.remove_peer(peer)
        if queued:
            self._discard("disconnected", peer, len(queued))
        return queued


class Subscriber(PatternCore):
    """The subscribing side: subscriptions go to every publisher; messages fair-queued."""

    name = "subscribe"

    def __init__(self, hwm: HighWaterMark | None = None) -> None:
        super().__init__()
        self.topics: set[bytes] = set()
        self.inbox: FairQueue[int, Envelope] = FairQueue(hwm or HighWaterMark(), receiving=True)
        self.unwanted = 0
        self._waiting: dict[bytes, set[int]] = {}
        # metadata of a bare PUBLISH on a topic we want -> that topic (skips decoding)
        self._bare: dict[bytes, bytes] = {}

    def subscribe(self, topic: bytes, now: float) -> None:
        """Subscribe to a prefix at every connected publisher (and every later one)."""
        topic = _check_topic(topic)
        if topic in self.topics:
            return
        self.topics.add(topic)
        self._waiting[topic] = set(self.peers)
        for peer in self.peers:
            self._control.append((peer, Envelope(Kind.SUBSCRIBE, topic=topic)))

    def unsubscribe(self, topic: bytes, now: float) -> None:
        """Drop a subscription everywhere."""
        topic = _check_topic(topic)
        if topic not in self.topics:
            return
        self.topics.discard(topic)
        self._waiting.pop(topic, None)
        self._bare.clear()  # it may hold topics only this subscription wanted
        for peer in self.peers:
            self._control.append((peer, Envelope(Kind.UNSUBSCRIBE, topic=topic)))

    def ready(self, topic: bytes) -> bool:
        """Whether at least one publisher is connected and all connected ones hold ``topic``."""
        return topic in self.topics and bool(self.peers) and not self._waiting.get(topic)

    def peer_up(self, peer: int, now: float) -> None:
        """A publisher connected: (re)send every subscription to it."""
        super().peer_up(peer, now)
        for topic in sorted(self.topics):
            self._waiting.setdefault(topic, set()).add(peer)
            self._control.append((peer, Envelope(Kind.SUBSCRIBE, topic=topic)))

    def peer_down(self, peer: int, now: float) -> list[Envelope]:
        """A publisher is gone; what it already sent stays in the inbox."""
        for waiting in self._waiting.values():
            waiting.discard(peer)
        return super().peer_down(peer, now)

    def _on_subscribed(self, peer: int, env: Envelope, now: float) -> None:
        assert env.topic is not None
        waiting = self._waiting.get(env.topic)
        if waiting is None or peer not in waiting:
            return  # a confirmation of a subscription since dropped, or a repeat
        waiting.discard(peer)
        if not waiting:
            self._events.append(SubscriptionReady(env.topic))

    def _on_publish(self, peer: int, env: Envelope, now: float) -> None:
        assert env.topic is not None
        if not any(env.topic.startswith(t) for t in self.topics):
            self.unwanted += 1  # published before our UNSUBSCRIBE reached the publisher
            self._discard("unsubscribed", peer, way="in")
            return
        self._inbox_drop(peer, self.inbox.push(peer, env, env.size))

    def receive_many(self, peer: int, frames: Iterable[WireFrame], now: float) -> None:
        """Frames from one publisher; runs of bare PUBLISH frames on a subscribed topic go
        to the inbox at once."""
        run: list[Envelope] = []
        publish = Kind.PUBLISH
        wanted = self._bare
        new = tuple.__new__
        for frame in frames:
            topic = wanted.get(frame[1]) if frame[0] == publish else None
            if topic is not None:  # a bare PUBLISH on a wanted topic seen before: no decoding
                run.append(new(Envelope, (publish, frame[2], None, topic, 0, None, None)))
                continue
            env = decode(*frame)
            if env.kind is publish and env.seq is None and self._wanted(env):
                if env.id is None and not env.flags:
                    self._remember(frame[1], env)
                run.append(env)
                continue
            if run:
                self._arrived(peer, run, now)
                run = []
            self.receive(peer, env, now)
        if run:
            self._arrived(peer, run, now)

    def _remember(self, meta: bytes, env: Envelope) -> None:
        if len(meta) > MAX_BARE_META:
            return
        if len(self._bare) >= MAX_BARE:
            self._bare.clear()
        assert env.topic is not None
        self._bare[meta] = env.topic

    def _wanted(self, env: Envelope) -> bool:
        topic = env.topic
        assert topic is not None
        return topic in self.topics or any(topic.startswith(t) for t in self.topics)

    def _arrived(self, peer: int, envs: list[Envelope], now: float) -> None:
        if peer not in self.peers:
            raise ValueError(f"peer {peer} is not up")
        sizes = [len(env[1]) + len(env[3] or b"") for env in envs]  # payload and topic
        self.stats.messages_in(peer, len(sizes), sum(sizes))
        if not self.inbox.extend(peer, envs, sizes):
            for env in envs:  # over the mark: the policy applies to each
                self._inbox_drop(peer, self.inbox.push(peer, env, env.size))

    @property
    def paused(self) -> set[int]:
        """Publishers whose inbox is full under BLOCK (or RAISE): the runtime stops reading from
        them for now (under the drop policies it keeps reading; the inbox drops and counts)."""
        return self.inbox.paused()

    def take(self, limit: int | None = None) -> list[tuple[int, Envelope]]:
        """Received messages, fair-queued over the publishers."""
        return self.inbox.take(limit)

    def events(self) -> list[Event]:
        """Events, including the inbox's drop reports."""
        return [*super().events(), *self.inbox.events()]
