"""Request/reply: correlation, deadlines, retry after reconnect, fail fast on loss."""

from __future__ import annotations

import pytest

from opensocket.errors import (
    ConfigError,
    QueueFull,
    RequestAborted,
    RequestTimeout,
    UnexpectedFrame,
)
from opensocket.messaging.envelope import Envelope, Kind
from opensocket.messaging.events import (
    Event,
    MessageDropped,
    ReplyReceived,
    RequestFailed,
    RequestReceived,
)
from opensocket.messaging.hwm import HighWaterMark, Policy
from opensocket.messaging.reqrep import Replier, Requester, RequesterOptions

from .helpers import Net


def answer_all(rep: Replier, transform: bytes = b"re:") -> list[RequestReceived]:
    got = [e for e in rep.events() if isinstance(e, RequestReceived)]
    for event in got:
        rep.reply(event.peer, event.id, transform + event.payload, 0)
    return got


def replies(events: list[Event]) -> dict[int, ReplyReceived]:
    return {e.id: e for e in events if isinstance(e, ReplyReceived)}


def failures(events: list[Event]) -> dict[int, RequestFailed]:
    return {e.id: e for e in events if isinstance(e, RequestFailed)}


def test_many_outstanding_matched_by_id() -> None:
    net = Net()
    req, rep = Requester(), Replier()
    net.join(req, rep)
    ids = [req.request(f"q{i}".encode(), 0) for i in range(200)]
    net.pump()
    assert rep.outstanding == 200
    received = [e for e in rep.events() if isinstance(e, RequestReceived)]
    for event in reversed(received):  # answered out of order
        rep.reply(event.peer, event.id, b"re:" + event.payload, 0)
    net.pump()
    got = replies(req.events())
    assert sorted(got) == ids
    assert all(got[i].payload == f"re:q{i - 1}".encode() for i in ids)
    assert not req.pending and rep.outstanding == 0


def test_round_robin_over_repliers() -> None:
    net = Net()
    req, a, b = Requester(), Replier(), Replier()
    net.join(req, a)
    net.join(req, b)
    for _ in range(10):
        req.request(b"x", 0)
    net.pump()
    assert len(answer_all(a)) == len(answer_all(b)) == 5
    net.pump()
    assert len(replies(req.events())) == 10


def test_error_replies_and_late_replies() -> None:
    net = Net()
    req, rep = Requester(RequesterOptions(timeout=1.0)), Replier()
    net.join(req, rep)
    first = req.request(b"a", 0)
    second = req.request(b"b", 0)
    net.pump()
    (ra, rb) = [e for e in rep.events() if isinstance(e, RequestReceived)]
    rep.reply(ra.peer, ra.id, b"bad", 0, error=True)
    net.pump()
    assert replies(req.events())[first] == ReplyReceived(first, b"bad", True)
    net.now = 1.0
    assert req.get_timer() == 1.0
    req.handle_timer(net.now)
    failed = failures(req.events())[second]
    assert isinstance(failed.error, RequestTimeout)
    assert str(failed.error) == f"no reply to request {second} within 1s"
    rep.reply(rb.peer, rb.id, b"too late", 1.0)
    net.pump()
    assert req.events() == [MessageDropped(1, "in", "late-reply", 1)] and req.late_replies == 1
    assert req.stats.snapshot().drops["late-reply"] == 1
    assert req.stats.snapshot().timeouts == 1
    with pytest.raises(ValueError, match="not awaiting a reply"):
        rep.reply(rb.peer, rb.id, b"twice", 1.0)


def test_per_request_deadlines_in_order() -> None:
    req = Requester()
    ids = {req.request(b"x", 0, timeout=t): t for t in (3.0, 1.0, 2.0)}
    req.request(b"forever", 0)  # no deadline: waits for a replier
    seen = []
    while (timer := req.get_timer()) is not None:
        req.handle_timer(timer)
        seen += [(e.id, timer) for e in failures(req.events()).values()]
    assert seen == sorted(ids.items(), key=lambda item: item[1])
    assert len(req.pending) == 1


def test_request_waits_for_a_replier_then_goes() -> None:
    net = Net()
    req, rep = Requester(), Replier()
    rid = req.request(b"early", 0)
    net.add(req)
    net.pump()
    net.join(req, rep)
    net.pump()
    answer_all(rep)
    net.pump()
    assert replies(req.events())[rid].payload == b"re:early"


def test_loss_retries_retryable_and_fails_the_rest_at_once() -> None:
    net = Net()
    req, rep1 = Requester(), Replier()
    p1, _ = net.join(req, rep1)
    safe = [req.request(f"s{i}".encode(), 0, retryable=True) for i in range(3)]
    unsafe = [req.request(f"u{i}".encode(), 0) for i in range(3)]
    net.pump()
    assert rep1.outstanding == 6
    net.drop(req, p1)  # the replier dies holding every request
    events = req.events()
    failed = failures(events)
    assert sorted(failed) == unsafe  # fail fast, no hang
    assert all(isinstance(f.error, RequestAborted) for f in failed.values())
    assert "not retryable" in str(failed[unsafe[0]].error)
    assert sorted(req.pending) == safe and req.retries == 3
    rep2 = Replier()  # the replier comes back (a new process)
    net.join(req, rep2)
    net.pump()
    assert [e.payload for e in answer_all(rep2)] == [b"s0", b"s1", b"s2"]
    net.pump()
    assert sorted(replies(req.events())) == safe
    assert not req.pending
    # accounting: 6 requests = 3 replies + 3 failures
    assert req.stats.snapshot().redeliveries == 3


def test_unsent_requests_move_to_another_replier_without_a_retry() -> None:
    net = Net()
    req, a, b = Requester(), Replier(), Replier()
    pa, _ = net.join(req, a)
    net.join(req, b)
    ids = [req.request(b"x", 0) for _ in range(4)]  # 2 queued for each, none handed out
    net.drop(req, pa)
    assert not failures(req.events()) and req.retries == 0
    net.pump()
    assert len(answer_all(b)) == 4
    net.pump()
    assert sorted(replies(req.events())) == ids


def test_send_queue_policies() -> None:
    blocking = Requester(RequesterOptions(hwm=HighWaterMark(2)))
    blocking.peer_up(1, 0)
    for _ in range(3):
        blocking.request(b"x", 0)
    assert not blocking.ready and len(blocking._unsent) == 1
    assert len(blocking.frames_to_send()) == 3  # drained, then the waiting one went in
    raising = Requester(RequesterOptions(hwm=HighWaterMark(1, policy=Policy.RAISE)))
    raising.peer_up(1, 0)
    raising.request(b"x", 0)
    with pytest.raises(QueueFull):
        raising.request(b"y", 0)
    assert len(raising.pending) == 1
    dropping = Requester(RequesterOptions(hwm=HighWaterMark(1, policy=Policy.DROP_OLDEST)))
    dropping.peer_up(1, 0)
    first = dropping.request(b"x", 0)
    dropping.request(b"y", 0)
    failed = failures(dropping.events())
    assert list(failed) == [first] and isinstance(failed[first].error, QueueFull)
    newest = Requester(RequesterOptions(hwm=HighWaterMark(1, policy=Policy.DROP_NEWEST)))
    newest.peer_up(1, 0)
    newest.request(b"x", 0)
    second = newest.request(b"y", 0)
    assert list(failures(newest.events())) == [second]


def test_replier_edges() -> None:
    rep = Replier()
    rep.peer_up(1, 0)
    rep.receive(1, Envelope(Kind.REQUEST, b"q", 5), 0)
    assert rep.reply(2, 5, b"", 0) is None  # unknown peer: counted
    rep.peer_down(1, 0)
    assert rep.reply(1, 5, b"", 0) is None
    assert rep.stats.snapshot().drops["peer-gone"] == 3
    rep.peer_up(3, 0)
    with pytest.raises(UnexpectedFrame, match="reply socket does not accept PUBLISH"):
        rep.receive(3, Envelope(Kind.PUBLISH, b"", topic=b"t"), 0)


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError):
        RequesterOptions(timeout=0)
    with pytest.raises(ConfigError):
        Requester().request(b"", 0, timeout=-1)


def test_abort_fails_everything_pending() -> None:
    req = Requester()
    waiting = req.request(b"no replier yet", 0)
    req.peer_up(1, 0)
    sent = req.request(b"sent", 0)
    assert req.abort("the socket was closed") == [waiting, sent]
    failed = failures(req.events())
    assert sorted(failed) == [waiting, sent] and not req.pending
    assert str(failed[sent].error) == f"request {sent} got no reply: the socket was closed"
    assert req.frames_to_send() == []  # nothing goes out for an aborted request
