"""Blocking request/reply over real loopback connections."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from opensocket.errors import NegotiationFailed, RequestAborted, RequestTimeout
from opensocket.messaging import (
    BackoffOptions,
    Connected,
    Disconnected,
    Event,
    HandshakeFailed,
    Reconnecting,
)
from opensocket.sync.messaging import Publisher, Replier, ReplyError, Requester
from tests.sync.conftest import in_thread

from .conftest import FAST, LOCAL, closing, settle


def test_many_outstanding_requests_from_several_threads() -> None:
    lock = threading.Condition()
    running, peak = 0, 0

    def handler(message: bytes) -> bytes:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            lock.notify_all()
            # the first handlers wait for each other: proof that they run concurrently
            lock.wait_for(lambda: peak >= 4, timeout=5)
            running -= 1
        return b"re:" + message

    rep = Replier(handler, concurrency=8)
    req = Requester()
    with closing(req, rep):
        req.connect(rep.bind(LOCAL))

        def client(n: int) -> list[bytes]:
            return [req.request(b"%d-%d" % (n, i), timeout=5) for i in range(50)]

        workers = [in_thread(lambda n=n: client(n)) for n in range(6)]
        results = [queue.get(timeout=10) for _, queue in workers]
        for n, replies in enumerate(results):
            assert replies == [b"re:%d-%d" % (n, i) for i in range(50)]
        assert req.stats.messages_out == 300 and req.stats.messages_in == 300
        assert rep.stats.messages_in == 300
        assert 4 <= peak <= 8  # handled concurrently, within the cap


def test_handler_error_becomes_reply_error_and_codecs_apply() -> None:
    def handler(message: dict[str, Any]) -> dict[str, Any]:
        if message["x"] < 0:
            raise ValueError("negative")
        return {"double": message["x"] * 2}

    rep = Replier(handler, codec="json")
    req = Requester(codec="json")
    with closing(req, rep):
        req.connect(rep.bind(LOCAL))
        assert req.request({"x": 21}, timeout=5) == {"double": 42}
        with pytest.raises(ReplyError, match="ValueError: negative"):
            req.request({"x": -1}, timeout=5)


def test_replier_killed_mid_request_fails_fast_unless_retryable(free_port: int) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    first = Replier()  # holds requests without answering
    first.bind(url)
    req = Requester(backoff=FAST)
    second = Replier(lambda m: b"second:" + m)
    with closing(req, second, first):
        req.connect(url)
        _plain, plain_result = in_thread(lambda: req.request(b"once"))
        retry, retry_result = in_thread(lambda: req.request(b"again", retryable=True))
        held = [first.recv_request(timeout=5), first.recv_request(timeout=5)]
        assert sorted(r.message for r in held) == [b"again", b"once"]
        first.close(linger=0)  # the replier dies holding both
        assert isinstance(plain_result.get(timeout=5), RequestAborted)  # no hang: clear error
        assert retry.is_alive()
        second.bind(url)  # back on the same port: the requester reconnects by itself
        assert retry_result.get(timeout=5) == b"second:again"
        assert req.stats.redeliveries == 1
        assert req.stats.reconnects >= 1


def test_reconnects_with_backoff_and_reports_monitor_events(free_port: int) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    seen: list[Event] = []
    rep = Replier(lambda m: m)
    rep.bind(url)
    req = Requester(backoff=FAST, on_event=seen.append)
    rep2 = Replier(lambda m: b"new:" + m)
    with closing(req, rep2, rep):
        req.connect(url)
        assert req.request(b"1", timeout=5) == b"1"
        rep.close(linger=0)
        settle(req, lambda: any(isinstance(e, Reconnecting) for e in seen))
        rep2.bind(url)
        assert req.request(b"2", timeout=5) == b"new:2"
        # on_event runs on its own thread: wait until it has seen the second Connected
        settle(req, lambda: [type(e) for e in seen].count(Connected) == 2)
        kinds = [type(e) for e in seen]
        assert kinds[0] is Connected
        assert Disconnected in kinds and Reconnecting in kinds
        assert kinds.count(Connected) == 2
        assert req.stats.reconnects == 1
        # the same events, through the blocking iterator
        streamed = list(req.events(timeout=0.05))
        assert [type(e) for e in streamed] == kinds[: len(streamed)]
        assert isinstance(streamed[0], Connected) and streamed[0].address == url


def test_request_times_out_without_replier() -> None:
    req = Requester(backoff=FAST)
    with closing(req, linger=0):
        req.connect("tcp://127.0.0.1:1", wait=False)  # nothing listens there
        with pytest.raises(RequestTimeout):
            req.request(b"x", timeout=0.1)
        assert req.stats.timeouts == 1


def test_close_aborts_waiting_requests() -> None:
    rep = Replier()  # never answers
    req = Requester()
    with closing(rep):
        req.connect(rep.bind(LOCAL))
        thread, result = in_thread(lambda: req.request(b"x"))
        rep.recv_request(timeout=5)
        req.close(linger=0)
        assert isinstance(result.get(timeout=5), RequestAborted)
        thread.join(5)
        with pytest.raises(Exception, match="closed"):
            req.request(b"late")


def test_wrong_pattern_is_a_handshake_failure_and_giving_up_fails_requests() -> None:
    pub = Publisher()
    seen: list[Event] = []
    req = Requester(
        backoff=BackoffOptions(base=0.01, max_delay=0.02, max_attempts=2), on_event=seen.append
    )
    with closing(req, pub):
        url = pub.bind(LOCAL)  # a publisher, not a replier
        with pytest.raises(NegotiationFailed, match="incompatible messaging patterns"):
            Requester().connect(url)
        req.connect(url, wait=False)
        with pytest.raises(RequestAborted, match="gave up reconnecting"):
            req.request(b"x")  # no timeout given: giving up must end it
        settle(req, lambda: sum(isinstance(e, HandshakeFailed) for e in seen) == 3)
        failures = [e for e in seen if isinstance(e, HandshakeFailed)]
        assert len(failures) == 3  # the first attempt and two retries
        assert isinstance(failures[0].error, NegotiationFailed)
