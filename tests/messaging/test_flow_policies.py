"""Receive-side flow control under each inbox policy: BLOCK pauses the reads (nothing lost),
the drop policies keep reading so the inbox drops and counts (never deferred into the kernel
buffer, where DROP_OLDEST would end up delivering stale data)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from opensocket.aio.messaging import Pair, Publisher, Puller, Pusher, Socket, Subscriber
from opensocket.messaging import HighWaterMark, Policy, PullOptions
from opensocket.messaging import Pair as PairCore
from opensocket.messaging import Puller as PullerCore
from opensocket.messaging import Subscriber as SubscriberCore
from opensocket.messaging.envelope import Envelope, Kind

LOCAL = "tcp://127.0.0.1:0"
TOTAL = 300
MARK = 10
DROPS = [Policy.DROP_NEWEST, Policy.DROP_OLDEST]


async def until(sock: Socket, condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (event-driven: each pump of ``sock``) until ``condition`` holds."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await sock._wait_progress(deadline)


def fill(policy: Policy) -> list[SubscriberCore | PullerCore | PairCore]:
    """Each inbox pattern, its inbox for peer 1 offered twice its mark."""
    hwm = HighWaterMark(2, policy=policy)
    sub, pull, pair = (
        SubscriberCore(hwm),
        PullerCore(PullOptions(hwm=hwm, prefetch=8)),
        PairCore(hwm),
    )
    sub.subscribe(b"", 0)
    for core in (sub, pull, pair):
        core.peer_up(1, 0)
    for i in range(4):
        sub.receive(1, Envelope(Kind.PUBLISH, b"%d" % i, topic=b"t"), 0)
        pull.receive(1, Envelope(Kind.MESSAGE, b"%d" % i), 0)
        pair.receive(1, Envelope(Kind.MESSAGE, b"%d" % i), 0)
    return [sub, pull, pair]


@pytest.mark.parametrize("policy", [Policy.BLOCK, Policy.RAISE])
def test_a_full_inbox_pauses_its_peer_under_block_and_raise(policy: Policy) -> None:
    for core in fill(policy):  # RAISE: no caller to raise to on receive, so it blocks
        assert core.paused == {1}, core.name
        assert len(core.take()) == 4, core.name  # nothing dropped, nothing raised
        assert core.paused == set(), core.name  # drained: reading resumes


@pytest.mark.parametrize("policy", DROPS)
def test_a_full_inbox_under_a_drop_policy_keeps_reading(policy: Policy) -> None:
    for core in fill(policy):
        assert core.paused == set(), core.name
        assert len(core.take()) == 2
        assert core.stats.snapshot().drops[policy.value] == 2, core.name


async def published(sub: Subscriber, policy: Policy) -> tuple[list[int], int]:
    """Publish TOTAL messages to ``sub`` (inbox mark MARK, ``policy``) while nobody takes
    them; wait until all arrived; return what it delivers then and what it counted dropped."""
    pub = Publisher()
    url = await pub.bind(LOCAL)
    await sub.connect(url)
    await sub.subscribe("t", timeout=5)
    for i in range(TOTAL):
        await pub.publish("t", b"%d." % i + b"." * 1000)
    await until(sub, lambda: sub.stats.messages_in == TOTAL)  # read on despite the full inbox
    assert not sub._read_paused
    got = []
    while len(sub.core.inbox):
        _, message = await sub.recv(timeout=5)
        got.append(int(message.split(b".")[0]))
    drops = sub.stats.drops[policy.value]
    assert pub.stats.dropped == 0  # the publisher sent every one
    await sub.close()
    await pub.close()
    return got, drops


async def test_drop_oldest_delivers_the_newest_and_counts_the_rest() -> None:
    sub = Subscriber(HighWaterMark(messages=MARK, policy=Policy.DROP_OLDEST))
    got, drops = await published(sub, Policy.DROP_OLDEST)
    assert got == list(range(TOTAL - MARK, TOTAL))  # the newest, not what the kernel held
    assert len(got) + drops == TOTAL


async def test_drop_newest_delivers_the_first_and_counts_the_rest() -> None:
    sub = Subscriber(HighWaterMark(messages=MARK, policy=Policy.DROP_NEWEST))
    got, drops = await published(sub, Policy.DROP_NEWEST)
    assert got == list(range(MARK))
    assert len(got) + drops == TOTAL


async def test_pair_drop_oldest_keeps_reading() -> None:
    a, b = Pair(), Pair(HighWaterMark(messages=MARK, policy=Policy.DROP_OLDEST))
    url = await a.bind(LOCAL)
    await b.connect(url)
    await until(a, lambda: a.peers == 1)
    for i in range(TOTAL):
        await a.send(b"%d" % i)
    await until(b, lambda: b.stats.messages_in == TOTAL)
    got = [int(await b.recv(timeout=5)) for _ in range(MARK)]
    assert got == list(range(TOTAL - MARK, TOTAL))
    assert b.stats.drops["drop-oldest"] == TOTAL - MARK
    await b.close()
    await a.close()


async def test_pull_drop_newest_keeps_reading_and_counts() -> None:
    push = Pusher()
    url = await push.bind(LOCAL)
    hwm = HighWaterMark(messages=MARK, policy=Policy.DROP_NEWEST)
    pull = Puller(PullOptions(hwm=hwm, prefetch=4 * MARK))
    await pull.connect(url)
    for i in range(TOTAL):
        await push.send(b"%d" % i)
    await until(pull, lambda: pull.stats.messages_in == TOTAL)  # drops return credit
    got = [int(await pull.recv(timeout=5)) for _ in range(len(pull.core.inbox))]
    assert got == list(range(MARK))
    assert len(got) + pull.stats.drops["drop-newest"] == TOTAL
    await pull.close()
    await push.close()


async def test_raise_on_receive_pauses_and_loses_nothing() -> None:
    pub = Publisher()
    url = await pub.bind(LOCAL)
    sub = Subscriber(HighWaterMark(messages=MARK, policy=Policy.RAISE))
    await sub.connect(url)
    await sub.subscribe("t", timeout=5)
    for i in range(TOTAL):
        await pub.publish("t", b"%d." % i + b"." * 1000)
    got = [await sub.recv(timeout=5) for _ in range(TOTAL)]
    assert [int(m.split(b".")[0]) for _, m in got] == list(range(TOTAL))
    assert sub.stats.dropped == 0 and sub.stats.reconnects == 0  # the link never failed
    await sub.close()
    await pub.close()
