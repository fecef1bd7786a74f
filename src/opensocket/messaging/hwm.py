"""High-water marks: bounded queues with an explicit policy, every drop counted.

A queue holds at most ``messages`` items (and ``bytes``, when set). What happens to one more:

- BLOCK: nothing is queued; ``push`` returns WOULD_BLOCK and the runtime applies backpressure
  (waits for room). A receive queue cannot refuse what was already read: it takes the item and
  reports ``full`` so the runtime stops reading from that peer until it drains.
- DROP_NEWEST: the new item is dropped; DROP_OLDEST: the oldest queued item is dropped.
- RAISE: ``push`` raises QueueFull and queues nothing. A receive queue has no caller to raise
  to: under RAISE it behaves as under BLOCK.

A full receive queue asks the runtime to stop reading from its peer (``FairQueue.paused``)
under BLOCK and RAISE only: under the drop policies the runtime keeps reading, so the drops
happen in the queue and are counted.

Counters keep ``offered == accepted + dropped_newest + refused + blocked`` and
``accepted == taken + dropped_oldest + len(queue) + removed``. Drops are reported as
``MessageDropped`` events, one per reason per ``events()`` call, for the runtime to log.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from ..errors import ConfigError, QueueFull
from .events import MessageDropped

__all__ = ["BoundedQueue", "FairQueue", "HighWaterMark", "Outcome", "Policy", "QueueCounters"]

T = TypeVar("T")
P = TypeVar("P", bound=Hashable)


class Policy(Enum):
    """What a full queue does with one more message."""

    BLOCK = "block"
    DROP_NEWEST = "drop-newest"
    DROP_OLDEST = "drop-oldest"
    RAISE = "raise"


_DROPPING = frozenset({Policy.DROP_NEWEST, Policy.DROP_OLDEST})


class Outcome(Enum):
    """What ``push`` did."""

    QUEUED = "queued"
    WOULD_BLOCK = "would-block"
    DROPPED_NEWEST = "dropped-newest"
    DROPPED_OLDEST = "dropped-oldest"  # queued, and the oldest item was dropped for it


@dataclass(frozen=True, slots=True)
class HighWaterMark:
    """Queue bounds and the policy applied beyond them."""

    messages: int = 1000
    bytes: int | None = None
    policy: Policy = Policy.BLOCK

    def __post_init__(self) -> None:
        if self.messages < 1:
            raise ConfigError(f"a high-water mark needs messages >= 1, not {self.messages}")
        if self.bytes is not None and self.bytes < 1:
            raise ConfigError(f"a high-water mark in bytes must be >= 1, not {self.bytes}")
        if not isinstance(self.policy, Policy):
            raise ConfigError(f"policy must be a Policy, not {self.policy!r}")


@dataclass(slots=True)
class QueueCounters:
    """Running counts of one queue (see the module docstring for the invariants)."""

    offered: int = 0
    accepted: int = 0
    taken: int = 0
    removed: int = 0
    blocked: int = 0
    refused: int = 0
    dropped_newest: int = 0
    dropped_oldest: int = 0

    @property
    def dropped(self) -> int:
        """Messages dropped by either drop policy."""
        return self.dropped_newest + self.dropped_oldest


class BoundedQueue(Generic[T]):
    """A FIFO with a high-water mark (see the module docstring)."""

    def __init__(
        self, hwm: HighWaterMark, *, receiving: bool = False, peer: int | None = None
    ) -> None:
        self.hwm = hwm
        self.receiving = receiving
        self.peer = peer
        self.counters = QueueCounters()
        self.bytes = 0
        self._items: deque[tuple[T, int]] = deque()
        self._reported = (0, 0, 0)
        self.last_dropped: list[T] = []  # what the latest DROP_OLDEST push pushed out

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        """At or over the mark: one more would trigger the policy."""
        limit = self.hwm.bytes
        return len(self._items) >= self.hwm.messages or (limit is not None and self.bytes >= limit)

    def _fits(self, size: int) -> bool:
        # An item bigger than the byte mark still goes into an empty queue, or it never could.
        items = self._items
        limit = self.hwm.bytes
        if len(items) >= self.hwm.messages:
            return False
        return limit is None or not items or self.bytes + size <= limit

    def push(self, item: T, size: int = 0) -> Outcome:
        """Offer one item; see Policy. Raises QueueFull under RAISE."""
        counters = self.counters
        counters.offered += 1
        outcome = Outcome.QUEUED
        if not self._fits(size):
            policy = self.hwm.policy
            if policy is Policy.RAISE and self.receiving:
                policy = Policy.BLOCK  # what was read cannot be refused: stop reading instead
            if policy is Policy.BLOCK and not self.receiving:
                counters.blocked += 1
                return Outcome.WOULD_BLOCK
            if policy is Policy.DROP_NEWEST:
                counters.dropped_newest += 1
                return Outcome.DROPPED_NEWEST
            if policy is Policy.RAISE:
                counters.refused += 1
                raise QueueFull(self._full_message())
            if policy is Policy.DROP_OLDEST:
                self.last_dropped = []
                self._drop_oldest(size)
                outcome = Outcome.DROPPED_OLDEST
        self._items.append((item, size))
        self.bytes += size
        counters.accepted += 1
        return outcome

    def _full_message(self) -> str:
        where = f" for peer {self.peer}" if self.peer is not None else ""
        way = "receive" if self.receiving else "send"
        return (
            f"the {way} queue{where} is full ({len(self._items)} messages, {self.bytes} bytes): "
            "slow down, raise the high-water mark, or choose another policy"
        )

    def _drop_oldest(self, size: int) -> None:
        while self._items and not self._fits(size):
            item, size = self._items.popleft()
            self.last_dropped.append(item)
            self.bytes -= size
            self.counters.dropped_oldest += 1

    def extend(self, items: list[T], sizes: list[int]) -> bool:
        """Queue all of ``items`` if they fit under the mark together and return True;
        otherwise queue nothing and return False (push them one at a time: the policy then
        applies to each). The batch path of ``push``."""
        count = len(items)
        total = sum(sizes)
        limit = self.hwm.bytes
        if len(self._items) + count > self.hwm.messages or (
            limit is not None and self.bytes + total > limit
        ):
            return False
        self._items.extend(zip(items, sizes, strict=True))
        self.bytes += total
        counters = self.counters
        counters.offered += count
        counters.accepted += count
        return True

    def push_front(self, item: T, size: int = 0) -> None:
        """Put an item back at the head, past any mark (redelivery must not lose it)."""
        self._items.appendleft((item, size))
        self.bytes += size
        self.counters.offered += 1
        self.counters.accepted += 1

    def peek(self) -> T:
        """The head item (the queue must not be empty)."""
        return self._items[0][0]

    def pop(self) -> T:
        """Remove and return the head item (the queue must not be empty)."""
        item, size = self._items.popleft()
        self.bytes -= size
        self.counters.taken += 1
        return item

    def take(self, limit: int | None = None) -> list[T]:
        """Remove and return up to ``limit`` items (all when None), oldest first."""
        items = self._items
        if limit is None or limit >= len(items):
            taken = [item for item, _ in items]
            items.clear()
            self.bytes = 0
            self.counters.taken += len(taken)
            return taken
        return [self.pop() for _ in range(limit)]

    def clear(self) -> list[T]:
        """Remove everything without counting it as taken (the owner accounts for it)."""
        items = [item for item, _ in self._items]
        self._items.clear()
        self.bytes = 0
        self.counters.removed += len(items)
        return items

    def events(self) -> list[MessageDropped]:
        """One MessageDropped per reason for drops since the last call."""
        c = self.counters
        now = (c.dropped_newest, c.dropped_oldest, c.refused)
        if now == self._reported:
            return []  # the common case, asked after every batch
        reasons = ("drop-newest", "drop-oldest", "queue-full")
        direction = "in" if self.receiving else "out"
        found = [
            MessageDropped(self.peer, direction, reason, new - old)
            for reason, new, old in zip(reasons, now, self._reported, strict=True)
            if new != old
        ]
        self._reported = now
        return found


class FairQueue(Generic[P, T]):
    """One bounded queue per peer; ``take`` serves the peers round-robin (fair queueing)."""

    def __init__(self, hwm: HighWaterMark, *, receiving: bool = True) -> None:
        self.hwm = hwm
        self.receiving = receiving
        self.queues: dict[P, BoundedQueue[T]] = {}
        self._ready: deque[P] = deque()
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def queue(self, peer: P) -> BoundedQueue[T]:
        """The queue of ``peer``, created on first use."""
        q = self.queues.get(peer)
        if q is None:
            index = peer if isinstance(peer, int) else None
            q = self.queues[peer] = BoundedQueue(self.hwm, receiving=self.receiving, peer=index)
        return q

    def push(self, peer: P, item: T, size: int = 0) -> Outcome:
        """Queue one item from (or for) ``peer`` under the mark's policy."""
        q = self.queue(peer)
        was_empty = not q
        before = len(q)
        outcome = q.push(item, size)
        self._length += len(q) - before
        if was_empty and q:
            self._ready.append(peer)
        return outcome

    def extend(self, peer: P, items: list[T], sizes: list[int]) -> bool:
        """Queue all of ``items`` from (or for) ``peer`` if they fit together (see
        ``BoundedQueue.extend``); False: nothing queued, push them one at a time."""
        q = self.queue(peer)
        was_empty = not q
        if not q.extend(items, sizes):
            return False
        self._length += len(items)
        if was_empty and items:
            self._ready.append(peer)
        return True

    def paused(self) -> set[P]:
        """Peers whose full queue asks the runtime to stop reading from them (BLOCK, RAISE).

        Under a drop policy the runtime keeps reading so the drops happen here, counted: a
        paused reader would only defer them into the kernel buffer, and DROP_OLDEST would
        then deliver the stale data the kernel held instead of the newest.
        """
        if self.hwm.policy in _DROPPING:
            return set()
        return {peer for peer, q in self.queues.items() if q.full}

    def take(self, limit: int | None = None) -> list[tuple[P, T]]:
        """Up to ``limit`` items, one peer at a time in turn."""
        ready = self._ready
        if len(ready) == 1 and (limit is None or limit >= self._length):
            peer = ready.popleft()  # one peer has everything: no turns to take
            items = self.queues[peer].take()
            self._length -= len(items)
            return [(peer, item) for item in items]
        out: list[tuple[P, T]] = []
        while ready and (limit is None or len(out) < limit):
            peer = ready.popleft()
            q = self.queues[peer]
            out.append((peer, q.pop()))
            if q:
                ready.append(peer)
        self._length -= len(out)
        return out

    def remove(self, peer: P) -> list[T]:
        """Forget ``peer``; return what it still had queued (the caller accounts for it)."""
        q = self.queues.pop(peer, None)
        if q is None:
            return []
        if peer in self._ready:
            self._ready.remove(peer)
        items = q.clear()
        self._length -= len(items)
        return items

    def counters(self) -> QueueCounters:
        """The peers' counters summed (peers removed are not included)."""
        total = QueueCounters()
        for q in self.queues.values():
            for name in QueueCounters.__slots__:
                setattr(total, name, getattr(total, name) + getattr(q.counters, name))
        return total

    def events(self) -> list[MessageDropped]:
        """Drop events of every peer's queue."""
        return [e for q in self.queues.values() for e in q.events()]
