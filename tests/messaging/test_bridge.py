"""Patterns over sessions over a link cut at random points: the whole sans-IO stack."""

from __future__ import annotations

import itertools
import random

import pytest

from opensocket.errors import MalformedEnvelope, RequestAborted
from opensocket.messaging.bridge import Bridge
from opensocket.messaging.envelope import Envelope, Kind, WireFrame
from opensocket.messaging.events import (
    Event,
    ReplyReceived,
    RequestFailed,
    RequestReceived,
    SessionLost,
    SessionResumed,
    SessionStarted,
)
from opensocket.messaging.pubsub import Publisher, Subscriber
from opensocket.messaging.pushpull import Puller, PullOptions, Pusher, PushOptions
from opensocket.messaging.reqrep import Replier, Requester
from opensocket.messaging.session import ResumeWindow, SessionOptions

from .helpers import counter_ids

OPTIONS = SessionOptions(ack_every=8, ack_delay=0.05)


class Wire:
    """One client bridge and one server bridge; links come and go, frames in flight die."""

    def __init__(self, client: Bridge, server: Bridge) -> None:
        self.client, self.server = client, server
        self.now = 0.0
        self.link: int | None = None
        self.peer: int | None = None
        self._links = itertools.count(1)
        self.c2s: list[WireFrame] = []
        self.s2c: list[WireFrame] = []
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []

    def connect(self) -> None:
        self.link = next(self._links)
        self.peer = self.client.connected(self.link, self.now, peer=self.peer)
        self.server.accepted(self.link, self.now)

    def cut(self) -> None:
        assert self.link is not None
        self.client.disconnected(self.link, self.now)
        self.server.disconnected(self.link, self.now)
        self.link = None
        self.c2s.clear()
        self.s2c.clear()

    def tick(self, seconds: float) -> None:
        self.now += seconds
        for bridge in (self.client, self.server):
            timer = bridge.get_timer()
            if timer is not None and timer <= self.now:
                bridge.handle_timer(self.now)

    def _gather(self) -> None:
        for bridge, queue in ((self.client, self.c2s), (self.server, self.s2c)):
            queue.extend(f for link, f in bridge.frames_to_send(self.now) if link == self.link)
        self.client_events += [e for _, e in self.client.events()]
        self.server_events += [e for _, e in self.server.events()]

    def pump(self, budget: int | None = None) -> bool:
        self._gather()
        while self.link is not None and (self.c2s or self.s2c):
            if budget is not None:
                if budget <= 0:
                    return False
                budget -= 1
            if self.c2s:
                self.server.receive(self.link, self.c2s.pop(0), self.now)
            else:
                self.client.receive(self.link, self.s2c.pop(0), self.now)
            self._gather()
        self._gather()
        return True


def bridges(client_core, server_core, options=OPTIONS):  # type: ignore[no-untyped-def]
    ids = counter_ids()
    return Wire(
        Bridge(client_core, sessions=options, new_id=ids),
        Bridge(server_core, sessions=options, new_id=ids),
    )


def of(events: list[Event], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


def test_requests_survive_cuts_exactly_once() -> None:
    rng = random.Random(5)
    req, rep = Requester(), Replier()
    wire = bridges(req, rep)
    wire.connect()
    wire.pump()
    total, sent, cuts = 200, 0, 0
    seen_by_replier: list[bytes] = []
    for _ in range(2000):
        if sent < total:
            for _ in range(rng.randint(1, 5)):
                if sent < total:
                    req.request(f"q{sent}".encode(), wire.now)  # not retryable: must not fail
                    sent += 1
        for event in of(wire.server_events, RequestReceived):
            seen_by_replier.append(event.payload)
            rep.reply(event.peer, event.id, b"re:" + event.payload, wire.now)
        wire.server_events.clear()
        wire.tick(0.03)
        if wire.link is None:
            wire.connect()
        elif not wire.pump(rng.randint(0, 30)):
            wire.cut()
            cuts += 1
        if sent == total and not req.pending:
            break
    assert cuts >= 5
    assert seen_by_replier == [f"q{i}".encode() for i in range(total)]  # once, in order
    replies = of(wire.client_events, ReplyReceived)
    assert sorted(r.id for r in replies) == list(range(1, total + 1))
    assert not of(wire.client_events, RequestFailed)
    assert of(wire.client_events, SessionResumed) and not of(wire.client_events, SessionLost)
    stats = req.stats.snapshot()
    assert stats.reconnects == cuts and stats.resumes == len(of(wire.client_events, SessionResumed))


def test_session_lost_fails_fast_and_retries_retryable() -> None:
    window = ResumeWindow(max_messages=2)
    req, rep = Requester(), Replier()
    wire = bridges(req, rep, SessionOptions(window=window, ack_every=1))
    wire.connect()
    wire.pump()
    safe = req.request(b"safe", wire.now, retryable=True)
    unsafe = req.request(b"unsafe", wire.now)
    wire.pump()
    assert len(of(wire.server_events, RequestReceived)) == 2
    wire.server_events.clear()
    wire.cut()
    for i in range(3):  # the server side overflows its window while the link is down
        wire.server.sessions[1].send(Envelope(Kind.REPLY, b"x", 100 + i), wire.now)
    wire.connect()
    wire.pump()
    (lost,) = of(wire.client_events, SessionLost)
    assert lost.lost_in == 3
    failed = {e.id: e for e in of(wire.client_events, RequestFailed)}
    assert list(failed) == [unsafe] and isinstance(failed[unsafe].error, RequestAborted)
    assert len(of(wire.client_events, SessionStarted)) == 2
    assert rep.stats.snapshot().drops["peer-gone"] == 2  # the replier's side of the loss
    assert req.stats.snapshot().sessions_lost == rep.stats.snapshot().sessions_lost == 1
    (again,) = of(wire.server_events, RequestReceived)  # the retryable one, resent
    assert again.payload == b"safe"
    rep.reply(again.peer, again.id, b"ok", wire.now)
    wire.pump()
    (reply,) = of(wire.client_events, ReplyReceived)
    assert (reply.id, reply.payload) == (safe, b"ok")


def test_push_pull_with_acks_survives_cuts_without_redelivery() -> None:
    rng = random.Random(9)
    push, pull = Pusher(PushOptions(acks=True)), Puller(PullOptions(acks=True, prefetch=10))
    wire = bridges(push, pull)
    wire.connect()
    wire.pump()
    total = 300
    for i in range(total):
        push.send(f"m{i}".encode(), wire.now)
    done: list[bytes] = []
    for _ in range(3000):
        for peer, env in pull.take(rng.randint(0, 4)):
            done.append(env.payload)
            assert env.id is not None
            pull.ack(peer, env.id)
        wire.tick(0.03)
        if wire.link is None:
            wire.connect()
        elif not wire.pump(rng.randint(0, 20)):
            wire.cut()
        if push.acked == total:
            break
    assert done == [f"m{i}".encode() for i in range(total)]
    assert push.redelivered == 0 and push.stale_acks == 0 and not push.inflight


def test_subscription_survives_a_cut() -> None:
    pub, sub = Publisher(), Subscriber()
    wire = bridges(sub, pub)  # the subscriber connects to the publisher
    wire.connect()
    sub.subscribe(b"t", wire.now)
    wire.pump()
    assert sub.ready(b"t")
    for i in range(5):
        pub.publish(b"t", str(i).encode(), wire.now)
    assert not wire.pump(3)
    wire.cut()
    for i in range(5, 8):
        pub.publish(b"t", str(i).encode(), wire.now)  # the pattern's queue holds these
    wire.connect()
    wire.pump()
    assert [env.payload for _, env in sub.take()] == [str(i).encode() for i in range(8)]
    assert wire.server.unsettled() > 0  # the subscriber has not acknowledged yet
    wire.tick(1.0)
    wire.pump()
    assert wire.server.unsettled() == 0 == wire.client.unsettled()
    assert len(of(wire.client_events, SessionStarted)) == 1  # resumed, not restarted


def test_plain_links_without_sessions() -> None:
    req, rep = Requester(), Replier()
    client, server = Bridge(req), Bridge(rep)
    peer = client.connected(1, 0.0)
    server.accepted(1, 0.0)
    rid = req.request(b"q", 0.0)
    for link, frame in client.frames_to_send(0.0):
        server.receive(link, frame, 0.0)
    ((_, got),) = [item for item in server.events() if isinstance(item[1], RequestReceived)]
    assert isinstance(got, RequestReceived)
    rep.reply(got.peer, got.id, b"a", 0.0)
    for link, frame in server.frames_to_send(0.0):
        client.receive(link, frame, 0.0)
    assert [e for _, e in client.events()] == [ReplyReceived(rid, b"a")]
    assert client.disconnected(1, 0.0) == peer and peer not in req.peers


def test_expired_session_is_forgotten_and_the_pattern_told() -> None:
    options = SessionOptions(window=ResumeWindow(max_age=5.0))
    sub, pub = Subscriber(), Publisher()
    wire = bridges(sub, pub, options)
    wire.connect()
    sub.subscribe(b"", wire.now)
    wire.pump()
    assert len(pub.peers) == 1
    wire.cut()
    wire.tick(5.0)  # both sides expire
    (server_lost,) = of(wire.server_events + [e for _, e in wire.server.events()], SessionLost)
    assert server_lost.reason == "not resumed within 5s"
    assert not pub.peers and not wire.server.sessions and not wire.server.store.sessions  # type: ignore[union-attr]
    assert not sub.peers  # the subscriber's side expired too
    wire.connect()
    wire.pump()
    assert sub.ready(b"") and len(pub.peers) == 1  # a fresh session, subscriptions restored


def test_takeover_closes_the_older_link() -> None:
    req, rep = Requester(), Replier()
    wire = bridges(req, rep)
    wire.connect()
    wire.pump()
    old = wire.link
    assert old is not None
    wire.client.disconnected(old, wire.now)  # only the client noticed the drop
    wire.link = None
    wire.connect()
    wire.pump()
    assert wire.server.takeovers == [old]
    assert wire.server.disconnected(old, wire.now) is None  # already detached from its session
    assert of(wire.server_events, SessionResumed)


def test_a_bad_frame_in_a_batch_still_delivers_the_ones_before() -> None:
    pull, push = Puller(), Pusher()
    wire = bridges(pull, push)
    wire.connect()
    wire.pump()
    assert wire.link is not None
    for payload in (b"a", b"b"):
        push.send(payload, wire.now)
    frames = [f for _, f in wire.server.frames_to_send(wire.now)]
    bad = (0x21, b"\x01\x10" + (99).to_bytes(8, "big"), b"gap")
    with pytest.raises(MalformedEnvelope, match="sequence gap"):
        wire.client.receive_many(wire.link, [*frames, bad], wire.now)
    assert [env.payload for _, env in pull.take()] == [b"a", b"b"]
