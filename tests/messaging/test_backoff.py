"""Reconnection backoff: exponential ceiling, full jitter, reset after a stable connection."""

from __future__ import annotations

import random

import pytest

from opensocket.errors import ConfigError
from opensocket.messaging.backoff import Backoff, BackoffOptions


def test_ceilings_grow_to_the_maximum() -> None:
    backoff = Backoff(BackoffOptions(base=0.5, max_delay=10, multiplier=2), rng=lambda: 1.0)
    delays = [backoff.failed(0.0) for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_full_jitter_stays_within_bounds() -> None:
    rng = random.Random(11)
    backoff = Backoff(BackoffOptions(base=0.1, max_delay=5.0), rng=rng.random)
    for attempt in range(200):
        ceiling = backoff.ceiling()
        assert ceiling == min(5.0, 0.1 * 2**attempt)
        when = backoff.failed(100.0)
        assert when is not None and 100.0 <= when < 100.0 + ceiling
    assert backoff.attempts == 200


def test_jitter_spreads_clients() -> None:
    rng = random.Random(1)
    firsts = {Backoff(rng=rng.random).failed(0.0) for _ in range(50)}
    assert len(firsts) == 50


def test_reset_only_after_a_stable_connection() -> None:
    backoff = Backoff(BackoffOptions(base=1, max_delay=100, reset_after=10), rng=lambda: 1.0)
    for _ in range(3):
        backoff.failed(0)
    backoff.connected(50.0)
    assert backoff.disconnected(55.0) == 55.0 + 8  # up 5 s: a flapping link keeps backing off
    backoff.connected(60.0)
    assert backoff.disconnected(70.0) == 71.0  # up 10 s: start over


def test_max_attempts() -> None:
    backoff = Backoff(BackoffOptions(max_attempts=2), rng=lambda: 0.5)
    assert backoff.failed(0) is not None
    assert backoff.failed(0) is not None
    assert backoff.failed(0) is None


def test_huge_attempt_counts_do_not_overflow() -> None:
    backoff = Backoff(BackoffOptions(multiplier=10, max_delay=7), rng=lambda: 1.0)
    backoff.attempts = 5000
    assert backoff.ceiling() == 7


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0},
        {"base": 2, "max_delay": 1},
        {"multiplier": 0.5},
        {"reset_after": -1},
        {"max_attempts": 0},
    ],
)
def test_options_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BackoffOptions(**kwargs)  # type: ignore[arg-type]
