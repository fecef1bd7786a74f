"""Reconnection schedule: exponential backoff with full jitter, sans I/O.

The n-th consecutive failed attempt waits a uniform random time in ``[0, min(max_delay,
base * multiplier**n))`` ("full jitter"), so that many clients cut off at once do not come
back in step. A connection that stayed up for ``reset_after`` seconds resets the count.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["Backoff", "BackoffOptions"]


@dataclass(frozen=True, slots=True)
class BackoffOptions:
    """Parameters of the reconnection schedule (seconds)."""

    base: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    reset_after: float = 10.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.max_delay:
            raise ConfigError(
                f"backoff needs 0 < base <= max_delay, got {self.base}, {self.max_delay}"
            )
        if not self.multiplier >= 1:
            raise ConfigError(f"backoff multiplier must be >= 1, not {self.multiplier}")
        if self.reset_after < 0:
            raise ConfigError(f"reset_after must be >= 0 seconds, not {self.reset_after}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1 or None, not {self.max_attempts}")


class Backoff:
    """Tracks failed attempts and says when to try next."""

    def __init__(
        self, options: BackoffOptions | None = None, *, rng: Callable[[], float] | None = None
    ) -> None:
        self.options = options or BackoffOptions()
        self._rng = rng or random.random
        self.attempts = 0
        self._up_since: float | None = None

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        opts = self.options
        exponent = min(self.attempts, 1024)  # beyond this the float overflows; max_delay wins
        try:
            raw = opts.base * opts.multiplier**exponent
        except OverflowError:
            return opts.max_delay
        return min(opts.max_delay, raw)

    def failed(self, now: float) -> float | None:
        """A connect attempt failed (or a connection dropped): return when to retry, or None
        when ``max_attempts`` is exhausted."""
        self._drop(now)
        limit = self.options.max_attempts
        if limit is not None and self.attempts >= limit:
            return None
        delay = self._rng() * self.ceiling()
        self.attempts += 1
        return now + delay

    def connected(self, now: float) -> None:
        """A connection is up (the count resets once it has lasted ``reset_after``)."""
        self._up_since = now

    def disconnected(self, now: float) -> float | None:
        """The connection dropped: return when to reconnect (see ``failed``)."""
        return self.failed(now)

    def _drop(self, now: float) -> None:
        up = self._up_since
        self._up_since = None
        if up is not None and now - up >= self.options.reset_after:
            self.attempts = 0
