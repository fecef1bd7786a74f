"""Redundant copies of small reliable messages (``RudpOptions.redundancy``), sans I/O.

A reliable message that fits one fragment of at most ``REDUNDANT_MAX`` bytes is sent once
as usual and then ``count`` more times, ``gap`` seconds apart (srtt/8 within 1-5 ms: far
enough apart that one burst of loss rarely takes them all, close enough to beat any
acknowledgement-based recovery). Whichever transmission is acknowledged first settles the
fragment: its bytes are released once, and neither the remaining copies nor a retransmission
go out. A copy is never retransmitted itself; the original's loss recovery still stands
behind it.
"""

from __future__ import annotations

import heapq
from typing import Final

from .wire import Fragment

__all__ = ["REDUNDANT_MAX", "Copies", "Copy"]

REDUNDANT_MAX: Final = 512
GAP_MIN: Final = 0.001
GAP_MAX: Final = 0.005


class Copy:
    """A redundant copy of a fragment inside a sent packet."""

    __slots__ = ("frag",)

    def __init__(self, frag: Fragment) -> None:
        self.frag = frag


class Copies:
    """The copies due, and the copied fragments no acknowledgement has covered yet."""

    __slots__ = ("_due", "_order", "count", "outstanding")

    def __init__(self, count: int) -> None:
        self.count = count
        self.outstanding: set[tuple[int, int]] = set()
        self._due: list[tuple[float, int, Fragment]] = []
        self._order = 0

    @staticmethod
    def wanted(frag: Fragment) -> bool:
        """True for a fragment that gets copies (the caller checks it is reliable)."""
        return frag.parts == 1 and len(frag.data) <= REDUNDANT_MAX

    def pending(self, frag: Fragment) -> bool:
        """True while no transmission of ``frag`` has been acknowledged."""
        return (frag.channel, frag.seq) in self.outstanding

    def schedule(self, frag: Fragment, now: float, srtt: float) -> None:
        """``frag`` went out for the first time: plan its copies."""
        self.outstanding.add((frag.channel, frag.seq))
        gap = min(max(srtt / 8, GAP_MIN), GAP_MAX)
        for k in range(1, self.count + 1):
            self._order += 1
            heapq.heappush(self._due, (now + k * gap, self._order, frag))

    def settle(self, frag: Fragment) -> bool:
        """An acknowledgement covers ``frag``: True the first time (release its bytes once)."""
        key = (frag.channel, frag.seq)
        if key not in self.outstanding:
            return False
        self.outstanding.discard(key)
        return True

    def next_due(self) -> float | None:
        """When the next copy still needed is due (settled ones are dropped here)."""
        due = self._due
        while due and not self.pending(due[0][2]):
            heapq.heappop(due)
        return due[0][0] if due else None

    def peek(self, now: float) -> Fragment | None:
        """The next copy due at ``now`` that is still needed, left in place."""
        when = self.next_due()
        return self._due[0][2] if when is not None and when <= now else None

    def pop(self) -> None:
        """The copy ``peek`` returned went out."""
        heapq.heappop(self._due)

    def __bool__(self) -> bool:
        return bool(self._due)
