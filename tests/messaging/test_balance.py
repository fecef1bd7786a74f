"""Requester balancing: round-robin, and least-loaded (fewest outstanding requests, ties in
turn), with the per-peer load kept exact through replies, failures, cancels and lost peers."""

from __future__ import annotations

import random

import pytest

from opensocket.errors import ConfigError
from opensocket.messaging.events import RequestReceived
from opensocket.messaging.hwm import HighWaterMark, Policy
from opensocket.messaging.reqrep import Replier, Requester, RequesterOptions

from .helpers import Net

LEAST = RequesterOptions(balance="least-loaded")


def received(rep: Replier) -> list[RequestReceived]:
    return [e for e in rep.events() if isinstance(e, RequestReceived)]


def check_load(req: Requester) -> None:
    """The load of each peer is exactly its requests that have not ended."""
    want = dict.fromkeys(req.peers, 0)
    for pending in req.pending.values():
        if pending.peer is not None:
            want[pending.peer] += 1
    assert req.load == want


def test_least_loaded_skips_a_busy_replier() -> None:
    net = Net()
    req, slow, fast = Requester(LEAST), Replier(), Replier()
    net.join(req, slow)
    req.request(b"long", 0)
    net.pump()
    (held,) = received(slow)
    net.join(req, fast)
    for i in range(5):  # the fast one answers each before the next: its load stays 0 < 1
        req.request(b"%d" % i, 0)
        net.pump()
        (event,) = received(fast)
        fast.reply(event.peer, event.id, b"ok", 0)
        net.pump()
    assert received(slow) == [] and slow.outstanding == 1
    slow.reply(held.peer, held.id, b"done", 0)
    net.pump()
    assert not req.pending
    check_load(req)


def test_round_robin_ignores_the_load() -> None:
    net = Net()
    req, slow, fast = Requester(), Replier(), Replier()
    net.join(req, slow)
    net.join(req, fast)
    for _ in range(4):
        req.request(b"q", 0)
    net.pump()
    assert slow.outstanding == fast.outstanding == 2


def test_least_loaded_ties_go_in_turn() -> None:
    net = Net()
    req = Requester(LEAST)
    reps = [Replier() for _ in range(3)]
    for rep in reps:
        net.join(req, rep)
    served = [0, 0, 0]
    for _ in range(6):  # each answered before the next: every pick is a tie at load 0
        req.request(b"q", 0)
        net.pump()
        for at, rep in enumerate(reps):
            for event in received(rep):
                served[at] += 1
                rep.reply(event.peer, event.id, b"ok", 0)
        net.pump()
    assert served == [2, 2, 2]
    check_load(req)


def test_least_loaded_with_full_queues_follows_the_policy() -> None:
    opts = RequesterOptions(hwm=HighWaterMark(1, policy=Policy.BLOCK), balance="least-loaded")
    net = Net()
    req, rep = Requester(opts), Replier()
    net.join(req, rep)
    req.request(b"a", 0)
    assert req.ready is False  # its only queue is full
    req.request(b"b", 0)  # waits in the unsent list, not counted against the peer
    check_load(req)
    net.pump()
    assert rep.outstanding == 2
    check_load(req)


def test_unknown_balance_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="least-loaded"):
        RequesterOptions(balance="random")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(5))
def test_load_stays_exact_under_random_operations(seed: int) -> None:
    rng = random.Random(seed)
    net = Net()
    req = Requester(
        RequesterOptions(hwm=HighWaterMark(3, policy=Policy.DROP_OLDEST), balance="least-loaded")
    )
    reps: list[tuple[Replier, int]] = []
    for _ in range(300):
        op = rng.randrange(6)
        if op == 0 and len(reps) < 4:
            rep = Replier()
            reps.append((rep, net.join(req, rep)[0]))
        elif op == 1 and reps:
            rep, peer = reps.pop(rng.randrange(len(reps)))
            net.drop(req, peer)
        elif op == 2:
            req.request(
                b"q", net.now, timeout=rng.choice([None, 1.0]), retryable=rng.random() < 0.5
            )
        elif op == 3 and req.pending:
            req.cancel(rng.choice(list(req.pending)))
        elif op == 4:
            net.now += 0.5
            req.handle_timer(net.now)
        else:
            net.pump()
            for rep, _ in reps:
                for event in received(rep):
                    if rng.random() < 0.7:
                        rep.reply(event.peer, event.id, b"r", net.now)
        req.events()
        check_load(req)
