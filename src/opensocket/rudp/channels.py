"""Channels: fragmentation on the way out, and per-kind delivery on the way in.

Each channel has its own message sequence numbers and its own reassembly buffers, so a
message waiting for a lost fragment on one channel never holds back another channel.
"""

from __future__ import annotations

from typing import Final

from .options import ChannelKind
from .wire import Fragment, Malformed

__all__ = ["RecvChannel", "fragment"]

MAX_UNRELIABLE_PARTIALS: Final = 4
_DUPLICATE: Final = b"<duplicate>"  # compared by identity only


def fragment(channel: int, seq: int, data: bytes, chunk: int, single: int) -> list[Fragment]:
    """Split a message into fragments: one when it fits in ``single`` bytes, else ``chunk``
    bytes each (the fragment header takes the difference)."""
    if len(data) <= single:
        return [Fragment(channel, seq, 0, 1, data)]
    view = memoryview(data)
    count = -(-len(data) // chunk)
    return [
        Fragment(channel, seq, i, count, view[i * chunk : (i + 1) * chunk]) for i in range(count)
    ]


class _Partial:
    __slots__ = ("count", "missing", "parts", "size")

    def __init__(self, count: int) -> None:
        self.parts: list[bytes | None] = [None] * count
        self.count = count
        self.missing = count
        self.size = 0


class RecvChannel:
    """Delivery state of one incoming channel."""

    __slots__ = ("buffered", "done", "floor", "kind", "last", "max_message", "partials", "ready")

    def __init__(self, kind: ChannelKind, max_message: int) -> None:
        self.kind = kind
        self.max_message = max_message
        self.partials: dict[int, _Partial] = {}
        self.ready: dict[int, bytes] = {}  # ordered: complete messages waiting for a gap
        self.done: set[int] = set()  # unordered: delivered sequence numbers above floor
        self.floor = 0  # reliable: every seq below was delivered
        self.last = -1  # sequenced: newest delivered
        self.buffered = 0

    def seen(self, seq: int) -> bool:
        """True when ``seq`` was delivered (or is stale, on a sequenced channel)."""
        if self.kind is ChannelKind.UNRELIABLE_SEQUENCED:
            return seq <= self.last
        if seq < self.floor:
            return True
        if self.kind is ChannelKind.RELIABLE_ORDERED:
            return seq in self.ready
        return seq in self.done

    def receive(self, seq: int, index: int, count: int, data: memoryview, out: list[bytes]) -> int:
        """Take one fragment; append completed deliverable messages to ``out``.

        Returns the number of new reliable bytes it accepted (0 for a duplicate).
        """
        if self.seen(seq):
            return -1
        accepted = 0 if self.kind is ChannelKind.UNRELIABLE_SEQUENCED else len(data)
        if count == 1:
            self._complete(seq, bytes(data), out)
            return accepted
        message = self._reassemble(seq, index, count, data)
        if message is _DUPLICATE:
            return -1
        if message is not None:
            self._complete(seq, message, out)
        return accepted

    def _reassemble(self, seq: int, index: int, count: int, data: memoryview) -> bytes | None:
        """The whole message once its last fragment arrives, else None (or _DUPLICATE)."""
        if index >= count:
            raise Malformed("fragment index")
        partial = self.partials.get(seq)
        if partial is None:
            if self.kind is ChannelKind.UNRELIABLE_SEQUENCED:
                self._limit_unreliable()
            partial = self.partials[seq] = _Partial(count)
        elif partial.count != count:
            raise Malformed("fragment count")
        if partial.parts[index] is not None:
            return _DUPLICATE
        if partial.size + len(data) > self.max_message:
            raise Malformed("message too large")
        partial.parts[index] = bytes(data)
        partial.size += len(data)
        self.buffered += len(data)
        partial.missing -= 1
        if partial.missing:
            return None
        del self.partials[seq]
        self.buffered -= partial.size
        return b"".join(partial.parts)  # type: ignore[arg-type]

    def _limit_unreliable(self) -> None:
        while len(self.partials) >= MAX_UNRELIABLE_PARTIALS:
            oldest = min(self.partials)
            self.buffered -= self.partials.pop(oldest).size

    def _complete(self, seq: int, message: bytes, out: list[bytes]) -> None:
        kind = self.kind
        if kind is ChannelKind.UNRELIABLE_SEQUENCED:
            self.last = seq
            for old in [s for s in self.partials if s <= seq]:
                self.buffered -= self.partials.pop(old).size
            out.append(message)
        elif kind is ChannelKind.RELIABLE_UNORDERED:
            self.done.add(seq)
            while self.floor in self.done:
                self.done.discard(self.floor)
                self.floor += 1
            out.append(message)
        elif seq != self.floor:
            self.ready[seq] = message
            self.buffered += len(message)
        else:
            out.append(message)
            self.floor += 1
            ready = self.ready
            while self.floor in ready:
                waiting = ready.pop(self.floor)
                self.buffered -= len(waiting)
                out.append(waiting)
                self.floor += 1
