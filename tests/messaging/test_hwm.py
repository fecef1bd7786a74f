"""High-water marks: each policy, and counters that account for every message."""

from __future__ import annotations

import pytest

from opensocket.errors import ConfigError, QueueFull
from opensocket.messaging.events import MessageDropped
from opensocket.messaging.hwm import (
    BoundedQueue,
    FairQueue,
    HighWaterMark,
    Outcome,
    Policy,
    QueueCounters,
)


def fill(q: BoundedQueue[int], count: int) -> list[Outcome]:
    return [q.push(i, 10) for i in range(count)]


def balanced(c: QueueCounters, queued: int) -> bool:
    return (
        c.offered == c.accepted + c.dropped_newest + c.refused + c.blocked
        and c.accepted == c.taken + c.dropped_oldest + queued + c.removed
    )


def test_block_reports_would_block() -> None:
    q: BoundedQueue[int] = BoundedQueue(HighWaterMark(3, policy=Policy.BLOCK), peer=4)
    assert fill(q, 5) == [Outcome.QUEUED] * 3 + [Outcome.WOULD_BLOCK] * 2
    assert q.full and len(q) == 3
    assert q.take(1) == [0]
    assert q.push(99, 10) is Outcome.QUEUED
    assert q.take() == [1, 2, 99]
    assert q.counters.blocked == 2 and balanced(q.counters, 0)
    assert q.events() == []  # blocking is backpressure, not a drop


def test_drop_newest() -> None:
    q: BoundedQueue[int] = BoundedQueue(HighWaterMark(3, policy=Policy.DROP_NEWEST), peer=1)
    assert fill(q, 10).count(Outcome.DROPPED_NEWEST) == 7
    got = q.take()
    assert got == [0, 1, 2]
    assert len(got) + q.counters.dropped == 10  # sent = received + counted drops
    assert q.events() == [MessageDropped(1, "out", "drop-newest", 7)]
    assert q.events() == []  # reported once
    assert balanced(q.counters, 0)


def test_drop_oldest() -> None:
    q: BoundedQueue[int] = BoundedQueue(HighWaterMark(3, policy=Policy.DROP_OLDEST))
    outcomes = fill(q, 10)
    assert outcomes.count(Outcome.DROPPED_OLDEST) == 7
    assert q.last_dropped == [6]
    got = q.take()
    assert got == [7, 8, 9]
    assert len(got) + q.counters.dropped == 10
    assert q.events() == [MessageDropped(None, "out", "drop-oldest", 7)]
    assert balanced(q.counters, 0)


def test_raise() -> None:
    q: BoundedQueue[int] = BoundedQueue(HighWaterMark(2, policy=Policy.RAISE), peer=3)
    fill(q, 2)
    with pytest.raises(QueueFull, match=r"send queue for peer 3 is full \(2 messages, 20 bytes\)"):
        q.push(2, 10)
    assert len(q) == 2 and q.counters.refused == 1
    assert q.events() == [MessageDropped(3, "out", "queue-full", 1)]
    assert balanced(q.counters, 2)


def test_byte_limit() -> None:
    q: BoundedQueue[int] = BoundedQueue(HighWaterMark(100, bytes=25, policy=Policy.DROP_OLDEST))
    fill(q, 5)
    assert len(q) == 2 and q.bytes == 20 and q.counters.dropped_oldest == 3


def test_receive_side_block_takes_and_reports_full() -> None:
    q: BoundedQueue[int] = BoundedQueue(HighWaterMark(2), receiving=True)
    assert fill(q, 3) == [Outcome.QUEUED] * 3  # already read: never refused
    assert q.full
    # RAISE on receive: nobody to raise to (the runtime is reading): it behaves as BLOCK
    strict: BoundedQueue[int] = BoundedQueue(HighWaterMark(1, policy=Policy.RAISE), receiving=True)
    assert fill(strict, 2) == [Outcome.QUEUED] * 2
    assert strict.full and strict.counters.refused == 0


def test_push_front_and_clear() -> None:
    q: BoundedQueue[int] = BoundedQueue(HighWaterMark(1))
    q.push(1, 1)
    q.push_front(0, 1)  # past the mark: redelivery is never refused
    assert q.peek() == 0 and len(q) == 2
    assert q.clear() == [0, 1]
    assert balanced(q.counters, 0)


def test_fair_queue_round_robin_and_isolation() -> None:
    fq: FairQueue[int, str] = FairQueue(HighWaterMark(3, policy=Policy.DROP_NEWEST))
    for i in range(6):
        fq.push(1, f"a{i}")  # a fast sender overflows its own queue only
    fq.push(2, "b0")
    fq.push(3, "c0")
    fq.push(3, "c1")
    assert len(fq) == 6
    assert fq.take() == [(1, "a0"), (2, "b0"), (3, "c0"), (1, "a1"), (3, "c1"), (1, "a2")]
    assert fq.counters().dropped_newest == 3
    assert fq.events() == [MessageDropped(1, "in", "drop-newest", 3)]
    fq.push(2, "b1")
    assert fq.remove(2) == ["b1"] and fq.remove(9) == []
    assert len(fq) == 0 and fq.take() == []


def test_fair_queue_take_limit() -> None:
    fq: FairQueue[int, int] = FairQueue(HighWaterMark(10))
    for i in range(4):
        fq.push(i % 2, i)
    assert fq.take(3) == [(0, 0), (1, 1), (0, 2)]
    assert fq.take(3) == [(1, 3)]


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError):
        HighWaterMark(0)
    with pytest.raises(ConfigError):
        HighWaterMark(1, bytes=0)
    with pytest.raises(ConfigError):
        HighWaterMark(1, policy="block")  # type: ignore[arg-type]
