"""Regressions from the messaging review (issue 3), blocking runtime, over real loopback."""

from __future__ import annotations

import logging
import queue
import threading

import pytest

from opensocket.errors import CloseCode, QueueFull, ReplyError
from opensocket.messaging import (
    Connected,
    HighWaterMark,
    MessageDropped,
    Policy,
    PullOptions,
    PushOptions,
)
from opensocket.options import ProtocolOptions, ServerLimits
from opensocket.sync.messaging import (
    Pair,
    Publisher,
    Puller,
    Pusher,
    Replier,
    Requester,
    Subscriber,
    _patterns,
)

from .conftest import LOCAL, closing, settle


def test_a_reply_over_the_frame_limit_becomes_an_error_reply() -> None:
    small = ProtocolOptions(max_frame_size=1024)
    rep = Replier(lambda m: b"x" * 5000, protocol=small)
    req = Requester(protocol=small)
    with closing(req, rep):
        req.connect(rep.bind(LOCAL))
        with pytest.raises(ReplyError, match="does not fit"):
            req.request(b"hi", timeout=10)
        assert req.stats.drops.get("timeout", 0) == 0


def test_a_reply_the_codec_refuses_becomes_an_error_reply() -> None:
    rep = Replier(lambda m: object(), codec="json")
    req = Requester(codec="json")
    with closing(req, rep):
        req.connect(rep.bind(LOCAL))
        with pytest.raises(ReplyError, match="CodecError: cannot encode object as json"):
            req.request(1, timeout=10)
        assert rep.core.outstanding == 0  # answered, not left open


def test_an_error_text_over_the_frame_limit_is_cut_to_fit() -> None:
    small = ProtocolOptions(max_frame_size=256)

    def fail(message: bytes) -> bytes:
        raise ValueError("e" * 5000)

    rep = Replier(fail, protocol=small)
    req = Requester(protocol=small)
    with closing(req, rep):
        req.connect(rep.bind(LOCAL))
        with pytest.raises(ReplyError, match="ValueError: eee") as caught:
            req.request(b"hi", timeout=10)
        assert len(str(caught.value)) <= 256


def test_raise_policy_still_writes_what_the_batch_queued_before_queue_full() -> None:
    push = Pusher(PushOptions(hwm=HighWaterMark(messages=5, policy=Policy.RAISE)))
    pull = Puller(PullOptions(prefetch=2))
    with closing(pull, push, linger=0):
        pull.connect(push.bind(LOCAL))
        settle(push, lambda: sum(push.core.credit.values()) == 2)
        with pytest.raises(QueueFull):
            push.send_many([b"%d" % i for i in range(20)])
        got = [pull.recv(timeout=10) for _ in range(7)]  # 2 on credit + 5 queued
        assert got == [b"%d" % i for i in range(7)]
        settle(push, lambda: push.unsettled() == 0)


def test_a_bound_socket_writes_to_links_beyond_its_server_workers() -> None:
    pub = Publisher(limits=ServerLimits(workers=1))
    subs = [Subscriber(), Subscriber(), Subscriber()]
    with closing(*subs, pub):
        url = pub.bind(LOCAL)
        for sub in subs:
            sub.connect(url)
            sub.subscribe("t", timeout=10)
        pub.publish("t", b"hello")
        assert [sub.recv(timeout=10) for sub in subs] == [("t", b"hello")] * 3


def test_a_flooding_requester_is_not_read_past_max_outstanding() -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    def handler(message: bytes) -> bytes:
        started.release()
        release.wait(10)
        return b"re:" + message

    rep = Replier(handler, concurrency=2, max_outstanding=4)
    req = Requester()
    results: list[bytes] = []
    with closing(req, rep):
        req.connect(rep.bind(LOCAL))
        threads = [
            threading.Thread(target=lambda i=i: results.append(req.request(b"%d" % i, timeout=20)))
            for i in range(40)
        ]
        for thread in threads:
            thread.start()
        try:
            settle(rep, lambda: bool(rep.core.paused))
            # handed to the handlers (running or queued) never exceeds the cap
            assert sum(map(len, rep.core.open.values())) == 4
            assert rep._pool is not None and rep._pool.queued <= 2
        finally:
            release.set()
            for thread in threads:
                thread.join(20)
        assert sorted(results) == sorted(b"re:%d" % i for i in range(40))
        assert not rep.core.paused and rep.core.outstanding == 0


def test_close_does_not_wait_forever_for_a_stuck_handler(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_patterns, "JOIN_TIMEOUT", 0.2)
    stuck = threading.Event()
    entered = threading.Event()

    def handler(message: bytes) -> bytes:
        entered.set()
        stuck.wait(10)
        return message

    rep = Replier(handler)
    req = Requester()
    try:
        req.connect(rep.bind(LOCAL))
        caller = threading.Thread(target=lambda: _swallow(req, b"x"))
        caller.start()
        assert entered.wait(10)
        with caplog.at_level(logging.WARNING, logger="opensocket.messaging"):
            rep.close(linger=0)  # returns although the handler is still running
        assert "did not return within" in caplog.text
    finally:
        stuck.set()
        req.close(linger=0)
        caller.join(10)


def test_close_from_inside_a_handler_does_not_raise() -> None:
    closed: list[BaseException | None] = []
    done = threading.Event()
    rep: Replier

    def handler(message: bytes) -> bytes:
        try:
            rep.close(linger=0)
            closed.append(None)
        except BaseException as exc:
            closed.append(exc)
        finally:
            done.set()
        return message

    rep = Replier(handler)
    req = Requester()
    with closing(req, linger=0):
        req.connect(rep.bind(LOCAL))
        _swallow(req, b"x")
        assert done.wait(10)
        rep.close()
    assert closed == [None]


def test_a_request_given_up_by_the_caller_is_cancelled_in_the_core() -> None:
    rep = Replier()  # no handler: requests stay unanswered
    req = Requester()
    with closing(req, rep, linger=0):
        req.connect(rep.bind(LOCAL))

        def interrupt() -> None:
            raise KeyboardInterrupt

        original = req._pump
        calls = iter([interrupt])

        def pump_then_interrupt() -> None:
            original()
            next(calls, lambda: None)()

        req._pump = pump_then_interrupt  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            req.request(b"x", timeout=10)
        req._pump = original  # type: ignore[method-assign]
        assert req.core.pending == {} and req.core.cancelled == 1


def _swallow(req: Requester, message: bytes) -> None:
    try:
        req.request(message, timeout=10)
    except Exception:
        pass


def test_messages_for_a_closing_link_are_counted_as_dropped() -> None:
    seen: list[MessageDropped] = []
    a = Pair(on_event=lambda e: seen.append(e) if isinstance(e, MessageDropped) else None)
    b = Pair()
    with closing(a, b, linger=0):
        b.connect(a.bind(LOCAL))
        settle(a, lambda: a.peers == 1)
        with a._lock:  # the link starts closing; the socket has not seen it end yet
            (link,) = a._links.values()
            link.flink.close(CloseCode.GOING_AWAY, "test", wait=False)
            a.send(b"x")
            stats = a.stats
        assert stats.messages_out == 1 and stats.drops == {"link-closing": 1}
        settle(a, lambda: len(seen) == 1)  # on_event runs on its own thread
        assert [(e.reason, e.count) for e in seen] == [("link-closing", 1)]


def test_on_event_may_block_and_call_the_socket() -> None:
    answers: queue.Queue[object] = queue.Queue()
    req: Requester

    def on_event(event: object) -> None:
        if isinstance(event, Connected):  # from inside the callback: a full round trip
            try:
                answers.put(req.request(b"from the callback", timeout=5))
            except Exception as exc:
                answers.put(exc)

    rep = Replier(lambda m: b"re:" + m)
    req = Requester(on_event=on_event)
    with closing(req, rep):
        req.connect(rep.bind(LOCAL))
        assert answers.get(timeout=10) == b"re:from the callback"
        assert req.request(b"after", timeout=5) == b"re:after"
