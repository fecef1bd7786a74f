"""Flow control for the hub, sans I/O: the per-user token bucket and the slow-client policy.

A slow client (one that stops reading) must never slow down a room. The runtime gives every
client a ``ClientQueue``: the hub's deliveries go in with ``push``, the writer drains them
with ``pop`` as the socket accepts data. When the queue would hold more than the policy
allows (messages, bytes), or its oldest item has waited longer than ``max_lag`` seconds,
``push``/``check`` return the reason and the runtime disconnects that client (close code
SLOW_CONSUMER) instead of blocking or growing without bound.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ClientQueue", "SlowClientPolicy", "TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:  # a clock that goes backwards refills nothing
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._refill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate)


@dataclass(frozen=True, slots=True)
class SlowClientPolicy:
    """How far behind a client may fall before it is disconnected."""

    max_messages: int = 1000
    max_bytes: int = 4 * 1024 * 1024
    max_lag: float | None = 30.0

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_bytes < 1:
            raise ConfigError("slow-client limits must be at least 1 message and 1 byte")
        if self.max_lag is not None and self.max_lag <= 0:
            raise ConfigError("max_lag must be positive or None")

    def decide(self, messages: int, nbytes: int, lag: float = 0.0) -> str | None:
        """None if a queue of this size and age is fine, else why the client must go."""
        if messages > self.max_messages:
            return f"too far behind: more than {self.max_messages} messages waiting"
        if nbytes > self.max_bytes:
            return f"too far behind: more than {self.max_bytes} bytes waiting"
        if self.max_lag is not None and lag > self.max_lag:
            return f"too far behind: messages waiting for more than {self.max_lag:g} s"
        return None


class ClientQueue:
    """A client's outgoing messages, bounded by a SlowClientPolicy."""

    __slots__ = ("_items", "nbytes", "policy", "verdict")

    def __init__(self, policy: SlowClientPolicy) -> None:
        self.policy = policy
        self._items: deque[tuple[bytes, float]] = deque()
        self.nbytes = 0
        self.verdict: str | None = None

    def __len__(self) -> int:
        return len(self._items)

    def push(self, data: bytes, now: float) -> str | None:
        """Queue ``data``; return the reason to disconnect instead if it does not fit."""
        if self.verdict is None:
            reason = self.policy.decide(len(self._items) + 1, self.nbytes + len(data))
            if reason is None:
                self._items.append((data, now))
                self.nbytes += len(data)
                reason = self.check(now)
            self.verdict = reason
        return self.verdict

    def check(self, now: float) -> str | None:
        """The reason to disconnect if the oldest message has waited too long, else None."""
        if self.verdict is None and self._items:
            self.verdict = self.policy.decide(
                len(self._items), self.nbytes, now - self._items[0][1]
            )
        return self.verdict

    def pop(self, max_bytes: int) -> list[bytes]:
        """Take queued messages, oldest first, up to ``max_bytes`` (at least one if any)."""
        out: list[bytes] = []
        total = 0
        items = self._items
        while items and (not out or total + len(items[0][0]) <= max_bytes):
            data = items.popleft()[0]
            out.append(data)
            total += len(data)
        self.nbytes -= total
        return out

    def oldest(self) -> float | None:
        """When the oldest waiting message was queued (None when empty)."""
        return self._items[0][1] if self._items else None
