"""Regressions from the messaging review (issue 3): the sans-IO cores and the asyncio runtime."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os

import pytest

from opensocket.aio.messaging import Pair, Replier, ReplyError, Requester
from opensocket.errors import CloseCode, ConfigError
from opensocket.messaging import envelope, pubsub
from opensocket.messaging.envelope import Envelope, Kind, encode
from opensocket.messaging.events import MessageDropped, RequestReceived
from opensocket.messaging.reqrep import Replier as ReplierCore
from opensocket.options import ProtocolOptions
from opensocket.protocol import patterns

from .test_aio_sockets import until

LOCAL = "tcp://127.0.0.1:0"
VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="caller")


# ---- B1: handlers run in their own task ----------------------------------------------------


async def test_a_handler_runs_in_its_own_task_with_timeouts_and_task_groups() -> None:
    caller = asyncio.current_task()

    async def handler(message: dict[str, int]) -> dict[str, bool]:
        VAR.set("handler")
        task = asyncio.current_task()
        async with asyncio.timeout(5):  # "should be used inside a task" when started eagerly
            await asyncio.sleep(0)
        async with asyncio.TaskGroup() as group:
            group.create_task(asyncio.sleep(0))
        return {"own_task": task is not None and task is not caller}

    rep = Replier(handler, codec="json")
    req = Requester(codec="json")
    try:
        await req.connect(await rep.bind(LOCAL))
        assert await req.request({"x": 1}, timeout=10) == {"own_task": True}
        assert VAR.get() == "caller"  # the handler's context stayed in its task
    finally:
        await req.close()
        await rep.close()


async def test_closing_cancels_a_waiting_handler_and_it_sees_the_cancellation() -> None:
    entered = asyncio.Event()
    seen: list[str] = []

    async def handler(message: bytes) -> bytes:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return message

    rep = Replier(handler)
    req = Requester()
    try:
        await req.connect(await rep.bind(LOCAL))
        pending = asyncio.ensure_future(req.request(b"x", timeout=10))
        await asyncio.wait_for(entered.wait(), 10)
        tasks = set(rep._tasks)
        assert len(tasks) == 1
        await rep.close(linger=0)
        await asyncio.wait(tasks, timeout=10)
        assert seen == ["cancelled"] and all(t.cancelled() for t in tasks)
        with pytest.raises(Exception):  # noqa: B017 - aborted or timed out: not a reply
            await pending
    finally:
        await req.close()
        await rep.close()


# ---- B2: a reply that cannot be sent becomes an error reply ---------------------------------


async def test_a_reply_the_codec_refuses_becomes_an_error_reply() -> None:
    async def handler(message: int) -> object:
        return object()

    rep = Replier(handler, codec="json")
    req = Requester(codec="json")
    try:
        await req.connect(await rep.bind(LOCAL))
        with pytest.raises(ReplyError, match="CodecError: cannot encode object as json"):
            await req.request(1, timeout=10)
        assert rep.core.outstanding == 0
    finally:
        await req.close()
        await rep.close()


async def test_an_error_text_over_the_frame_limit_is_cut_to_fit() -> None:
    small = ProtocolOptions(max_frame_size=256)

    async def handler(message: bytes) -> bytes:
        raise ValueError("e" * 5000)

    rep = Replier(handler, protocol=small)
    req = Requester(protocol=small)
    try:
        await req.connect(await rep.bind(LOCAL))
        with pytest.raises(ReplyError, match="ValueError: eee") as caught:
            await req.request(b"x", timeout=10)
        assert len(str(caught.value)) <= 256
    finally:
        await req.close()
        await rep.close()


async def test_a_reply_over_the_frame_limit_becomes_an_error_reply() -> None:
    small = ProtocolOptions(max_frame_size=1024)

    async def handler(message: bytes) -> bytes:
        return b"x" * 5000

    rep = Replier(handler, protocol=small)
    req = Requester(protocol=small)
    try:
        await req.connect(await rep.bind(LOCAL))
        with pytest.raises(ReplyError, match="does not fit"):
            await req.request(b"x", timeout=10)
    finally:
        await req.close()
        await rep.close()


# ---- B8: bounded request work -----------------------------------------------------------------


async def test_a_flooding_requester_is_not_read_past_max_outstanding() -> None:
    release = asyncio.Event()

    async def handler(message: bytes) -> bytes:
        await release.wait()
        return b"re:" + message

    rep = Replier(handler, concurrency=2, max_outstanding=4)
    req = Requester()
    try:
        await req.connect(await rep.bind(LOCAL))
        calls = [asyncio.ensure_future(req.request(b"%d" % i, timeout=20)) for i in range(40)]
        await until(rep, lambda: bool(rep.core.paused), within=10)
        assert len(rep._tasks) == 4  # at most max_outstanding handler tasks, not 40
        release.set()
        assert await asyncio.gather(*calls) == [b"re:%d" % i for i in range(40)]
        assert not rep.core.paused and rep.core.outstanding == 0
    finally:
        await req.close()
        await rep.close()


def test_the_replier_core_holds_requests_past_the_cap_in_a_backlog() -> None:
    core = ReplierCore(max_outstanding=2)
    core.peer_up(1, 0)
    for rid in range(1, 6):
        core.receive(1, Envelope(Kind.REQUEST, b"q", rid), 0)
    assert [e.id for e in core.events() if isinstance(e, RequestReceived)] == [1, 2]
    assert core.paused == {1} and core.outstanding == 5
    core.reply(1, 1, b"a", 0)  # one answered: the next one is handed out, still at the cap
    assert [e.id for e in core.events() if isinstance(e, RequestReceived)] == [3]
    assert core.paused == {1}
    for rid in (2, 3):
        core.reply(1, rid, b"a", 0)
    assert [e.id for e in core.events() if isinstance(e, RequestReceived)] == [4, 5]
    assert core.paused == {1}  # 4 and 5 open: at the cap, the backlog empty
    core.reply(1, 4, b"a", 0)
    assert core.paused == set() and core.outstanding == 1
    core.reply(1, 5, b"a", 0)
    assert core.outstanding == 0


def test_a_peer_gone_with_a_backlog_counts_it_as_dropped() -> None:
    core = ReplierCore(max_outstanding=1)
    core.peer_up(1, 0)
    for rid in (1, 2, 3):
        core.receive(1, Envelope(Kind.REQUEST, b"q", rid), 0)
    core.peer_down(1, 0)
    assert core.stats.snapshot().drops["peer-gone"] == 3
    assert core.paused == set() and core.outstanding == 0


def test_max_outstanding_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_outstanding"):
        ReplierCore(max_outstanding=0)


# ---- M1: caches a peer fills ------------------------------------------------------------------


def test_long_topics_are_not_cached_process_wide() -> None:
    patterns._heads.clear()
    envelope._TOPIC_METAS.clear()
    for i in range(50):
        topic = (b"%06d" % i) * 10_000  # 60 KB: e.g. forwarded by a broker
        frame = encode(Envelope(Kind.PUBLISH, b"x", None, topic))
        patterns.pattern_parts([frame], checksum=True, limit=1 << 24)
    assert len(patterns._heads) == 0 and len(envelope._TOPIC_METAS) == 0
    frame = encode(Envelope(Kind.PUBLISH, b"x", None, b"short"))
    patterns.pattern_parts([frame], checksum=True, limit=1 << 24)
    assert len(patterns._heads) == 1 and list(envelope._TOPIC_METAS) == [b"short"]


def test_a_subscriber_remembers_only_short_topics() -> None:
    sub = pubsub.Subscriber()
    sub.peer_up(1, 0)
    sub.subscribe(b"", 0)
    long_topic = os.urandom(300)
    frames = [encode(Envelope(Kind.PUBLISH, b"x", None, t)) for t in (long_topic, b"short")]
    sub.receive_many(1, frames, 0)
    assert list(sub._bare.values()) == [b"short"]
    assert [env.topic for _, env in sub.take(None)] == [long_topic, b"short"]


# ---- M4: frames for a closing link are counted ------------------------------------------------


async def test_messages_for_a_closing_link_are_counted_as_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = Pair(), Pair()
    try:
        await b.connect(await a.bind(LOCAL))
        await until(a, lambda: a.peers == 1)
        (conn,) = a._links.values()
        conn._proto.close(CloseCode.GOING_AWAY, "test")  # the link is going down
        seen: list[MessageDropped] = []
        a._on_event = lambda e: seen.append(e) if isinstance(e, MessageDropped) else None
        with caplog.at_level(logging.INFO, logger="opensocket.messaging"):
            await a.send(b"x")
            a.pump()
        stats = a.stats
        assert stats.messages_out == 1 and stats.drops == {"link-closing": 1}
        assert [(e.reason, e.count) for e in seen] == [("link-closing", 1)]
    finally:
        await a.close(linger=0)
        await b.close(linger=0)
