"""Blocking push/pull and pair over real loopback connections: round robin, acks and
redelivery, high-water mark policies, linger, sessions across a cut."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from opensocket.errors import QueueFull
from opensocket.messaging import (
    Disconnected,
    Event,
    HighWaterMark,
    Policy,
    PullOptions,
    PushOptions,
    SessionLost,
    SessionOptions,
    SessionResumed,
)
from opensocket.proxy import BackgroundProxy
from opensocket.sync.messaging import Pair, Puller, Pusher
from tests.sync.conftest import in_thread

from .conftest import FAST, LOCAL, closing, settle


def ready(push: Pusher, count: int) -> None:
    settle(push, lambda: push.peers == count and all(push.core.credit.values()))


def test_push_round_robin_over_two_pullers() -> None:
    push = Pusher()
    pullers = [Puller(), Puller()]
    with closing(*pullers, push):
        url = push.bind(LOCAL)
        for pull in pullers:
            pull.connect(url)
        ready(push, 2)
        for i in range(100):
            push.send(b"%d" % i)
        got = [[pull.recv(timeout=5) for _ in range(50)] for pull in pullers]
        assert sorted(got[0] + got[1], key=int) == [b"%d" % i for i in range(100)]
        assert {int(m) % 2 for m in got[0]} == {int(got[0][0]) % 2}  # strictly alternating


def test_puller_closed_holding_work_is_redelivered_to_the_other() -> None:
    push = Pusher(PushOptions(acks=True))
    dying = Puller(PullOptions(acks=True, prefetch=8))
    worker = Puller(PullOptions(acks=True, prefetch=8))
    with closing(worker, dying):
        url = push.bind(LOCAL)
        dying.connect(url)
        ready(push, 1)
        for i in range(40):
            push.send(b"%d" % i)
        first = dying.recv(timeout=5)  # taken, never done
        dying.close(linger=0)
        worker.connect(url)
        done = [worker.recv(timeout=5) for _ in range(40)]
        worker.done()
        settle(push, lambda: push.core.acked == 40)
        assert sorted(done, key=int) == [b"%d" % i for i in range(40)]
        assert first in done
        assert push.core.redelivered == 8  # the dying one's prefetch, all handed on
        assert push.close(linger=1) == 0


@pytest.mark.parametrize("policy", [Policy.DROP_NEWEST, Policy.DROP_OLDEST])
def test_drop_policies_count_every_drop(policy: Policy) -> None:
    push = Pusher(PushOptions(hwm=HighWaterMark(messages=20, policy=policy)))
    pull = Puller(PullOptions(prefetch=1000))
    with closing(pull, push):
        url = push.bind(LOCAL)
        sent = 100
        for i in range(sent):  # no puller yet: the shared queue fills up
            push.send(b"%d" % i)
        pull.connect(url)
        got = [int(pull.recv(timeout=5)) for _ in range(20)]
        drops = push.stats.drops[policy.value]
        assert sent == len(got) + drops == 20 + 80
        kept = range(20) if policy is Policy.DROP_NEWEST else range(80, 100)
        assert got == list(kept)


def test_raise_policy_raises_queue_full_and_counts_nothing_as_sent() -> None:
    push = Pusher(PushOptions(hwm=HighWaterMark(messages=5, policy=Policy.RAISE)))
    with closing(push, linger=0):
        push.bind(LOCAL)
        for i in range(5):
            push.send(b"%d" % i)
        with pytest.raises(QueueFull):
            push.send(b"one too many")
        assert push.unsettled() == 5


def test_block_policy_waits_for_room_and_loses_nothing() -> None:
    push = Pusher(PushOptions(hwm=HighWaterMark(messages=5, policy=Policy.BLOCK)))
    pull = Puller(PullOptions(prefetch=2))
    with closing(pull, push):
        url = push.bind(LOCAL)
        sender, result = in_thread(lambda: [push.send(b"%d" % i) for i in range(50)])
        settle(push, lambda: len(push.core.queue) == 5)  # full: the sender waits
        assert sender.is_alive()
        pull.connect(url)
        got = [pull.recv(timeout=5) for _ in range(50)]
        assert result.get(timeout=5) == [None] * 50
        assert got == [b"%d" % i for i in range(50)]
        assert push.stats.dropped == 0


def test_close_reports_undelivered_after_linger() -> None:
    push = Pusher(PushOptions(acks=True))
    push.bind(LOCAL)
    for i in range(5):
        push.send(b"%d" % i)  # no puller: they stay queued
    assert push.unsettled() == 5
    assert push.close(linger=0.05) == 5
    with pytest.raises(Exception, match="closed"):
        push.send(b"late")


def test_close_flushes_within_linger() -> None:
    push = Pusher()
    pull = Puller(PullOptions(prefetch=4))
    with closing(pull):
        pull.connect(push.bind(LOCAL))
        settle(push, lambda: push.peers == 1)
        for i in range(20):
            push.send(b"%d" % i)  # more than the credit: most wait in the pusher
        _closer, result = in_thread(lambda: push.close(linger=5))
        got = [pull.recv(timeout=5) for _ in range(20)]
        assert result.get(timeout=5) == 0
        assert got == [b"%d" % i for i in range(20)]


def test_pair_both_directions() -> None:
    a, b = Pair(codec="json"), Pair(codec="json")
    with closing(a, b):
        b.connect(a.bind(LOCAL))
        settle(a, lambda: a.peers == 1)
        b.send({"hi": 1})
        assert a.recv(timeout=5) == {"hi": 1}
        a.send([2])
        assert b.recv(timeout=5) == [2]


def test_session_survives_a_cut_every_message_once_in_order(
    fault_proxy: Callable[..., BackgroundProxy],
) -> None:
    seen: list[Event] = []
    push = Pusher(sessions=SessionOptions())
    pull = Puller(
        PullOptions(prefetch=1000), sessions=SessionOptions(), backoff=FAST, on_event=seen.append
    )
    with closing(pull, push, linger=0.1):
        proxy = fault_proxy(push.bind(LOCAL))
        pull.connect(proxy.url)
        ready(push, 1)
        fault = proxy.reset_after(nbytes=20_000, direction="down")
        total = 3000
        got: list[bytes] = []
        for i in range(total):
            push.send(b"%06d" % i + b"." * 40)
            if i % 100 == 99:
                while len(got) < i - 500:  # keep the puller in step so credit flows
                    got.append(pull.recv(timeout=5))
                if any(isinstance(e, Disconnected) for e in seen):
                    proxy.clear(fault)
        while len(got) < total:
            got.append(pull.recv(timeout=5))
        settle(pull, lambda: any(isinstance(e, SessionResumed) for e in seen))
        assert any(isinstance(e, Disconnected) for e in seen), "the proxy did not cut"
        assert [int(m[:6]) for m in got] == list(range(total))
        assert any(isinstance(e, SessionResumed) for e in seen)
        assert pull.stats.sessions_lost == 0 and push.stats.sessions_lost == 0
        assert not any(isinstance(e, SessionLost) for e in seen)
        assert push.close(linger=2) == 0  # waited for the session's acks
