"""Push/pull: round robin, credit, fair queueing, acknowledgements and redelivery."""

from __future__ import annotations

import random

import pytest

from opensocket.errors import ConfigError, MalformedEnvelope
from opensocket.messaging.envelope import Envelope, Kind, MetaFlags, encode_credit
from opensocket.messaging.events import DeliveryAcked, MessageDropped, MessageRedelivered
from opensocket.messaging.hwm import HighWaterMark, Outcome, Policy
from opensocket.messaging.pushpull import Puller, PullOptions, Pusher, PushOptions

from .helpers import Net


def test_round_robin_over_pullers() -> None:
    net = Net()
    push = Pusher()
    pulls = [Puller() for _ in range(3)]
    for pull in pulls:
        net.join(push, pull)
    net.pump()  # initial credit
    for i in range(9):
        push.send(f"m{i}".encode(), 0)
    net.pump()
    got = [[env.payload for _, env in pull.take()] for pull in pulls]
    assert got == [[b"m0", b"m3", b"m6"], [b"m1", b"m4", b"m7"], [b"m2", b"m5", b"m8"]]


def test_credit_limits_and_skips_busy_pullers() -> None:
    net = Net()
    push = Pusher()
    busy, idle = Puller(PullOptions(prefetch=2)), Puller(PullOptions(prefetch=100))
    net.join(push, busy)
    net.join(push, idle)
    net.pump()
    for i in range(20):
        push.send(str(i).encode(), 0)
    net.pump()
    assert len(busy.inbox) == 2 and len(idle.inbox) == 18  # busy has no credit left
    assert len(busy.take(1)) == 1  # taking returns credit (prefetch 2: every message)
    net.pump()
    assert push.credit == {1: 1, 3: 82}
    push.send(b"20", 0)
    push.send(b"21", 0)
    net.pump()
    assert len(busy.inbox) == 2 and len(idle.inbox) == 19


def test_shared_queue_waits_for_credit() -> None:
    net = Net()
    push = Pusher(PushOptions(hwm=HighWaterMark(3, policy=Policy.DROP_NEWEST)))
    for i in range(5):
        push.send(str(i).encode(), 0)  # nobody connected: 3 wait, 2 dropped and counted
    assert len(push.queue) == 3 and push.stats.snapshot().drops["drop-newest"] == 2
    assert MessageDropped(None, "out", "drop-newest", 2) in push.events()
    pull = Puller()
    net.join(push, pull)
    net.pump()
    assert [env.payload for _, env in pull.take()] == [b"0", b"1", b"2"]


def test_block_policy() -> None:
    push = Pusher(PushOptions(hwm=HighWaterMark(1)))
    assert push.send(b"a", 0) is Outcome.QUEUED
    assert push.send(b"b", 0) is Outcome.WOULD_BLOCK


def test_unwritable_puller_is_skipped() -> None:
    net = Net()
    push = Pusher()
    a, b = Puller(), Puller()
    pa, _ = net.join(push, a)
    net.join(push, b)
    net.pump()
    push.set_writable(pa, False)
    for i in range(4):
        push.send(str(i).encode(), 0)
    net.pump()
    assert len(a.inbox) == 0 and len(b.inbox) == 4
    push.send(b"x", 0)
    push.set_writable(pa, True)
    push.send(b"y", 0)
    net.pump()
    assert len(a.inbox) + len(b.inbox) == 6


def test_fair_queue_on_the_pull_side() -> None:
    net = Net()
    pull = Puller()
    pushes = [Pusher(), Pusher()]
    for push in pushes:
        net.join(push, pull)
    net.pump()
    for i in range(3):
        pushes[0].send(f"a{i}".encode(), 0)
    pushes[1].send(b"b0", 0)
    net.pump()
    assert [env.payload for _, env in pull.take()] == [b"a0", b"b0", b"a1", b"a2"]


def test_acks_and_redelivery_nothing_lost() -> None:
    rng = random.Random(3)
    net = Net()
    push = Pusher(PushOptions(acks=True))
    workers = {i: Puller(PullOptions(acks=True, prefetch=5)) for i in range(3)}
    links = {i: net.join(push, w)[0] for i, w in workers.items()}
    net.pump()
    total = 300
    done: list[bytes] = []
    for i in range(total):
        push.send(f"job{i}".encode(), 0)
    net.pump()
    killed = 0
    for round_ in range(400):
        for i, worker in list(workers.items()):
            for peer, env in worker.take(rng.randint(0, 3)):
                if i == 0 and round_ >= 3:
                    continue  # worker 0 takes jobs and never acks: it is dying
                done.append(env.payload)
                assert env.id is not None
                worker.ack(peer, env.id)
        if round_ == 5:
            net.drop(push, links.pop(0))  # worker 0 dies holding unacknowledged jobs
            workers.pop(0)
            killed += 1
        net.pump()
        if push.acked == total:
            break
    assert killed == 1
    events = push.events()
    redelivered = [e for e in events if isinstance(e, MessageRedelivered)]
    acked = [e for e in events if isinstance(e, DeliveryAcked)]
    assert redelivered and push.redelivered == len(redelivered)
    assert len(acked) == len({e.id for e in acked}) == total  # no duplicate acks
    assert push.stale_acks == 0 and not push.inflight and not push.queue
    # every job done exactly once: the dead worker's unacknowledged ones went elsewhere
    assert sorted(done) == sorted(f"job{i}".encode() for i in range(total))
    redone = {e.id for e in redelivered}
    assert len(redone) == len(redelivered)  # each redelivered once, then acked once
    assert redone <= {e.id for e in acked}
    assert push.stats.snapshot().redeliveries == len(redelivered)


def test_redelivered_flag_and_order() -> None:
    push = Pusher(PushOptions(acks=True))
    push.peer_up(1, 0)
    push.receive(1, Envelope(Kind.CREDIT, encode_credit(2)), 0)
    for payload in (b"a", b"b", b"c"):
        push.send(payload, 0)
    handed = push.frames_to_send()
    assert [env.payload for _, env in handed] == [b"a", b"b"]
    push.peer_down(1, 0)
    push.peer_up(2, 0)
    push.receive(2, Envelope(Kind.CREDIT, encode_credit(10)), 0)
    again = [env for _, env in push.frames_to_send()]
    assert [env.payload for env in again] == [b"a", b"b", b"c"]
    assert [bool(env.flags & MetaFlags.REDELIVERED) for env in again] == [True, True, False]
    push.receive(2, Envelope(Kind.DONE, id=again[0].id), 0)
    push.receive(2, Envelope(Kind.DONE, id=again[0].id), 0)  # a repeat: counted, ignored
    assert push.acked == 1 and push.stale_acks == 1
    assert MessageDropped(2, "in", "stale-ack", 1) in push.events()


def test_puller_edges() -> None:
    pull = Puller(PullOptions(acks=True))
    pull.peer_up(1, 0)
    with pytest.raises(MalformedEnvelope, match="without a delivery id"):
        pull.receive(1, Envelope(Kind.MESSAGE, b"x"), 0)
    pull.receive(1, Envelope(Kind.MESSAGE, b"x", 9), 0)
    with pytest.raises(ValueError, match="not awaiting an ack"):
        pull.ack(1, 9)  # not taken yet
    pull.take()
    pull.peer_down(1, 0)
    assert pull.ack(1, 9) is False  # the pusher is gone: it redelivers
    with pytest.raises(ConfigError):
        PullOptions(prefetch=0)


def test_pull_drops_return_credit() -> None:
    pull = Puller(PullOptions(hwm=HighWaterMark(1, policy=Policy.DROP_NEWEST), prefetch=2))
    pull.peer_up(1, 0)
    pull.frames_to_send()
    pull.receive(1, Envelope(Kind.MESSAGE, b"a"), 0)
    pull.receive(1, Envelope(Kind.MESSAGE, b"b"), 0)
    (credit,) = pull.frames_to_send()
    assert credit[1].kind is Kind.CREDIT and credit[1].payload == encode_credit(1)
    assert pull.paused == set()  # a drop policy keeps reading: the inbox drops, counted
    assert pull.stats.snapshot().drops["drop-newest"] == 1
