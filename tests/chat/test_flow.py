"""Token bucket and the slow-client policy."""

from __future__ import annotations

import pytest

from opensocket.chat import ClientQueue, SlowClientPolicy, TokenBucket
from opensocket.errors import ConfigError


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=4.0, burst=2, now=10.0)
    assert bucket.take(10.0) and bucket.take(10.0)
    assert not bucket.take(10.0)
    assert bucket.wait(10.0) == 0.25
    assert not bucket.take(10.2)
    assert bucket.take(10.25)
    assert not bucket.take(5.0)  # a clock going backwards refills nothing
    assert bucket.wait(100.0) == 0.0
    assert bucket.tokens == 2.0


@pytest.mark.parametrize(
    ("messages", "nbytes", "lag", "expected"),
    [
        (0, 0, 0.0, None),
        (10, 100, 5.0, None),
        (10, 100, 5.5, "too far behind: messages waiting for more than 5 s"),
        (11, 100, 0.0, "too far behind: more than 10 messages waiting"),
        (10, 101, 0.0, "too far behind: more than 100 bytes waiting"),
    ],
)
def test_policy_decides_from_sizes_and_age(
    messages: int, nbytes: int, lag: float, expected: str | None
) -> None:
    policy = SlowClientPolicy(max_messages=10, max_bytes=100, max_lag=5.0)
    assert policy.decide(messages, nbytes, lag) == expected


def test_policy_without_lag_limit_and_validation() -> None:
    assert SlowClientPolicy(max_lag=None).decide(1, 1, 1e9) is None
    with pytest.raises(ConfigError):
        SlowClientPolicy(max_messages=0)
    with pytest.raises(ConfigError):
        SlowClientPolicy(max_lag=0)


def test_client_queue_bounds_and_drains() -> None:
    queue = ClientQueue(SlowClientPolicy(max_messages=3, max_bytes=10, max_lag=2.0))
    assert queue.push(b"aaa", 0.0) is None
    assert queue.push(b"bbb", 0.5) is None
    assert len(queue) == 2 and queue.nbytes == 6 and queue.oldest() == 0.0
    assert queue.pop(4) == [b"aaa"]
    assert queue.pop(0) == [b"bbb"]  # at least one, whatever the budget
    assert queue.pop(100) == [] and queue.oldest() is None
    for i in range(3):
        assert queue.push(b"x", 1.0 + i / 10) is None
    reason = queue.push(b"y", 1.5)
    assert reason == "too far behind: more than 3 messages waiting"
    assert len(queue) == 3  # the message that did not fit was not queued
    assert queue.push(b"z", 1.6) == reason  # the verdict sticks: the runtime closes once
    assert queue.check(1.6) == reason


def test_client_queue_too_old_and_too_big() -> None:
    queue = ClientQueue(SlowClientPolicy(max_messages=100, max_bytes=10, max_lag=2.0))
    assert queue.push(b"1", 0.0) is None
    assert queue.check(1.9) is None
    assert queue.check(2.5) == "too far behind: messages waiting for more than 2 s"
    big = ClientQueue(SlowClientPolicy(max_messages=100, max_bytes=10))
    assert big.push(b"12345678901", 0.0) == "too far behind: more than 10 bytes waiting"
    assert len(big) == 0
