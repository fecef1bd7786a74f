"""Request cancellation, the bridge's public link/peer lookups, the send-time size check."""

from __future__ import annotations

import asyncio

import pytest

from opensocket.aio.messaging import Publisher, Puller, Pusher, Replier, Requester, Subscriber
from opensocket.errors import FrameTooLarge, ReplyError, RequestAborted
from opensocket.messaging import SessionOptions
from opensocket.messaging._base import ENVELOPE_OVERHEAD
from opensocket.messaging.bridge import Bridge
from opensocket.messaging.events import MessageDropped, ReplyReceived, RequestReceived
from opensocket.messaging.pair import Pair
from opensocket.messaging.pubsub import Publisher as PublisherCore
from opensocket.messaging.pushpull import Pusher as PusherCore
from opensocket.messaging.reqrep import Replier as ReplierCore
from opensocket.messaging.reqrep import Requester as RequesterCore
from opensocket.options import ProtocolOptions

from .helpers import Net
from .test_aio_sockets import LOCAL, close_all, until

# ---- Requester.cancel -------------------------------------------------------------------------


def test_cancel_before_sending_keeps_the_request_off_the_wire() -> None:
    net = Net()
    req, rep = RequesterCore(), ReplierCore()
    net.join(req, rep)
    kept, dropped = req.request(b"keep", 0), req.request(b"drop", 0)
    assert req.cancel(dropped) is True
    net.pump()
    received = [e for e in rep.events() if isinstance(e, RequestReceived)]
    assert [e.payload for e in received] == [b"keep"]
    assert list(req.pending) == [kept] and req.cancelled == 1


def test_a_reply_to_a_cancelled_request_is_dropped_and_counted() -> None:
    net = Net()
    req, rep = RequesterCore(), ReplierCore()
    net.join(req, rep)
    rid = req.request(b"q", 0)
    net.pump()  # handed to the replier
    assert req.cancel(rid) is True
    assert req.cancel(rid) is False  # already ended
    for event in [e for e in rep.events() if isinstance(e, RequestReceived)]:
        rep.reply(event.peer, event.id, b"late", 0)
    net.pump()
    events = req.events()
    assert not [e for e in events if isinstance(e, ReplyReceived)]
    assert MessageDropped(1, "in", "cancelled", 1) in events
    assert req.stats.snapshot().drops["cancelled"] == 1 and req.late_replies == 0


def test_cancelled_ids_are_forgotten_when_their_replier_goes() -> None:
    net = Net()
    req, rep = RequesterCore(), ReplierCore()
    peer, _ = net.join(req, rep)
    rid = req.request(b"q", 0)
    net.pump()
    req.cancel(rid)
    req.peer_down(peer, 0)
    assert not req._cancelled


async def test_cancelling_an_awaiting_request_drops_its_late_reply() -> None:
    release = asyncio.Event()

    async def slow(message: bytes) -> bytes:
        await release.wait()
        return message

    rep = Replier(slow)
    url = await rep.bind(LOCAL)
    req = Requester()
    await req.connect(url)
    task = asyncio.create_task(req.request(b"x"))
    await until(rep, lambda: rep.core.outstanding == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not req.core.pending
    release.set()
    await until(req, lambda: req.stats.drops.get("cancelled") == 1)
    assert await req.request(b"next", timeout=5) == b"next"  # the socket goes on
    await close_all(req, rep)


# ---- Bridge.peer_of / link_of -----------------------------------------------------------------


def test_peer_of_and_link_of_without_sessions() -> None:
    bridge = Bridge(PusherCore())
    peer = bridge.connected(7, 0.0)
    bridge.accepted(8, 0.0)
    other = bridge.peer_of(8)
    assert other is not None and other != peer
    assert bridge.peer_of(7) == peer and bridge.link_of(peer) == 7
    assert bridge.link_of(other) == 8
    bridge.disconnected(7, 0.0)
    assert bridge.peer_of(7) is None and bridge.link_of(peer) is None


def test_peer_of_waits_for_the_session_frame_and_link_of_follows_a_reconnect() -> None:
    client = Bridge(PusherCore(), sessions=SessionOptions())
    server = Bridge(PusherCore(), sessions=SessionOptions())
    peer = client.connected(1, 0.0)
    server.accepted(1, 0.0)
    assert server.peer_of(1) is None  # known once its SESSION arrives
    server.receive_many(1, [frame for _, frame in client.frames_to_send(0.0)], 0.0)
    assert server.peer_of(1) is not None
    client.disconnected(1, 0.0)
    assert client.link_of(peer) is None  # the session lives on without a link
    assert client.connected(2, 0.0, peer=peer) == peer
    assert client.link_of(peer) == 2 and client.peer_of(2) == peer


# ---- the size check at send time --------------------------------------------------------------


def test_every_pattern_refuses_an_oversized_message_at_send_time() -> None:
    limit = 1000
    fits, too_big = b"x" * (limit - ENVELOPE_OVERHEAD), b"x" * (limit - ENVELOPE_OVERHEAD + 1)
    net = Net()
    push, req, rep, pub, pair = (
        PusherCore(),
        RequesterCore(),
        ReplierCore(),
        PublisherCore(),
        Pair(),
    )
    net.join(req, rep)
    net.join(pair, Pair())
    for core in (push, req, rep, pub, pair):
        core.max_size = limit
    push.send(fits, 0)
    with pytest.raises(FrameTooLarge, match="does not fit the peers' maximum frame size of 1000"):
        push.send(too_big, 0)
    with pytest.raises(FrameTooLarge, match="on a topic of 2 bytes"):
        pub.publish(b"ab", fits, 0)
    with pytest.raises(FrameTooLarge):
        req.request(too_big, 0)
    assert not req.pending  # nothing half-queued
    rid = req.request(b"q", 0)
    net.pump()
    event = next(e for e in rep.events() if isinstance(e, RequestReceived))
    assert event.id == rid
    with pytest.raises(FrameTooLarge):
        rep.reply(event.peer, event.id, too_big, 0)
    assert rep.outstanding == 1  # it may still be answered
    with pytest.raises(FrameTooLarge):
        pair.send(too_big, 0)


async def test_an_oversized_push_raises_and_never_enters_the_session() -> None:
    small = ProtocolOptions(max_frame_size=4096)
    push = Pusher(sessions=SessionOptions(), protocol=small)
    url = await push.bind(LOCAL)
    pull = Puller(sessions=SessionOptions(), protocol=small)
    await pull.connect(url)
    await until(push, lambda: push.peers == 1 and all(push.core.credit.values()))
    with pytest.raises(FrameTooLarge, match="maximum frame size of 4096"):
        await push.send(b"x" * 5000)
    assert push.unsettled() == 0
    await push.send(b"ok")
    assert await pull.recv(timeout=5) == b"ok"
    await close_all(pull, push)


async def test_with_sessions_the_limit_follows_a_peer_that_accepts_less() -> None:
    pub = Publisher(sessions=SessionOptions())
    url = await pub.bind(LOCAL)
    assert pub.core.max_size == ProtocolOptions().max_frame_size
    sub = Subscriber(protocol=ProtocolOptions(max_frame_size=2048), sessions=SessionOptions())
    await sub.connect(url)
    await sub.subscribe("t", timeout=5)
    assert pub.core.max_size == 2048  # lowered from the default: a session would replay it
    with pytest.raises(FrameTooLarge):
        await pub.publish("t", b"x" * 3000)
    await close_all(sub, pub)


async def test_even_with_the_smallest_limit_the_error_reply_fits() -> None:
    async def big(message: bytes) -> bytes:
        return b"y" * 500

    tiny = ProtocolOptions(max_frame_size=64)
    rep = Replier(big, protocol=tiny)
    url = await rep.bind(LOCAL)
    req = Requester(protocol=tiny)
    await req.connect(url)
    with pytest.raises(ReplyError, match=r"^a reply message of 500 bytes"):
        await req.request(b"q", timeout=5)
    await close_all(req, rep)


async def test_an_oversized_reply_reaches_the_requester_as_an_error() -> None:
    async def big(message: bytes) -> bytes:
        return b"y" * 8000

    rep = Replier(big, protocol=ProtocolOptions(max_frame_size=4096))
    url = await rep.bind(LOCAL)
    req = Requester(protocol=ProtocolOptions(max_frame_size=4096))
    await req.connect(url)
    with pytest.raises(ReplyError, match="maximum frame size"):
        await req.request(b"q", timeout=5)
    await close_all(req, rep)


# ---- handlers started eagerly -----------------------------------------------------------------


async def test_a_waiting_handler_sees_errors_of_what_it_awaits_and_close_cancels_it() -> None:
    loop = asyncio.get_running_loop()
    failing: asyncio.Future[bytes] = loop.create_future()
    never: asyncio.Future[bytes] = loop.create_future()
    cancelled: list[bool] = []

    async def handler(message: bytes) -> bytes:
        if message == b"fail":
            return await failing
        try:
            return await never
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    rep = Replier(handler)
    url = await rep.bind(LOCAL)
    req = Requester()
    await req.connect(url)
    pending = asyncio.create_task(req.request(b"wait", timeout=5))
    asking = asyncio.create_task(req.request(b"fail", timeout=5))
    await until(rep, lambda: rep.core.outstanding == 2)
    failing.set_exception(ValueError("backend down"))
    with pytest.raises(ReplyError, match="ValueError: backend down"):
        await asking
    await rep.close()
    assert cancelled == [True]  # the suspended handler was cancelled by close()
    with pytest.raises(RequestAborted):  # and its requester is told, not left hanging
        await pending
    await req.close()


def test_answer_turns_an_oversized_reply_into_an_error_reply_that_fits() -> None:
    limit = 1000
    net = Net()
    req, rep = RequesterCore(), ReplierCore()
    net.join(req, rep)
    rep.max_size = limit
    rid = req.request(b"q", 0)
    net.pump()
    event = next(e for e in rep.events() if isinstance(e, RequestReceived))
    rep.answer(event.peer, event.id, b"x" * limit, 0)  # too big for a plain reply
    net.pump()
    reply = next(e for e in req.events() if isinstance(e, ReplyReceived))
    assert reply.id == rid and reply.error
    assert b"maximum frame size of 1000" in reply.payload
    assert rep.outstanding == 0  # answered


def test_peer_frame_limit_lowers_the_send_limit_only_with_sessions() -> None:
    for sessions, expected in ((None, 4096), (SessionOptions(), 2048)):
        core = PusherCore()
        core.max_size = 4096
        Bridge(core, sessions=sessions).peer_frame_limit(2048)
        assert core.max_size == expected
