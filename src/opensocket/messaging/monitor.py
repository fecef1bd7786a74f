"""Monitoring: counters per socket and per peer, frozen snapshots, and connection events.

Runtimes emit the connection events below as things happen; the session events
(``SessionResumed``, ``SessionLost``) come from the session core and are forwarded as they are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from ..errors import OpenSocketError
from .events import Event

__all__ = [
    "Connected",
    "Disconnected",
    "HandshakeFailed",
    "PeerStats",
    "Reconnecting",
    "SocketStats",
    "StatsRecorder",
]

_FIELDS: Final = (
    "messages_in",
    "messages_out",
    "bytes_in",
    "bytes_out",
    "reconnects",
    "resumes",
    "sessions_lost",
    "redeliveries",
    "timeouts",
)


@dataclass(frozen=True, slots=True)
class Connected(Event):
    """A link to ``address`` is up (``peer`` is the runtime's id for it)."""

    peer: int
    address: str


@dataclass(frozen=True, slots=True)
class Disconnected(Event):
    """The link to ``address`` is gone; ``reason`` says why."""

    peer: int
    address: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reconnecting(Event):
    """Attempt ``attempt`` to reach ``address`` is due in ``delay`` seconds."""

    address: str
    attempt: int
    delay: float


@dataclass(frozen=True, slots=True)
class HandshakeFailed(Event):
    """A link to ``address`` failed its handshake with ``error``."""

    address: str
    error: OpenSocketError


@dataclass(frozen=True, slots=True)
class PeerStats:
    """A frozen snapshot of one peer's (or the whole socket's) counters."""

    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    reconnects: int = 0
    resumes: int = 0
    sessions_lost: int = 0
    redeliveries: int = 0
    timeouts: int = 0
    drops: MappingProxyType[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def dropped(self) -> int:
        """Every drop, whatever the reason."""
        return sum(self.drops.values())


@dataclass(frozen=True, slots=True)
class SocketStats(PeerStats):
    """A socket's totals, with ``peers`` holding each peer's own snapshot."""

    peers: MappingProxyType[int, PeerStats] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(slots=True)
class _Counts:
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    reconnects: int = 0
    resumes: int = 0
    sessions_lost: int = 0
    redeliveries: int = 0
    timeouts: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def freeze(self) -> PeerStats:
        """A frozen copy."""
        values = {name: getattr(self, name) for name in _FIELDS}
        return PeerStats(**values, drops=MappingProxyType(dict(self.drops)))


class StatsRecorder:
    """Mutable counters a socket updates; ``snapshot()`` freezes them."""

    def __init__(self) -> None:
        self._total = _Counts()
        self._peers: dict[int, _Counts] = {}

    def _both(self, peer: int | None) -> tuple[_Counts, ...]:
        if peer is None:
            return (self._total,)
        counts = self._peers.get(peer)
        if counts is None:
            counts = self._peers[peer] = _Counts()
        return (self._total, counts)

    def add(self, name: str, peer: int | None = None, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name`` (one of PeerStats's integer fields)."""
        if name not in _FIELDS:
            raise KeyError(f"no counter named {name!r}")
        for counts in self._both(peer):
            setattr(counts, name, getattr(counts, name) + amount)

    def message_in(self, peer: int | None, size: int) -> None:
        """One message of ``size`` bytes arrived."""
        total = self._total
        total.messages_in += 1
        total.bytes_in += size
        if peer is not None:
            counts = self._peers.get(peer) or self._both(peer)[1]
            counts.messages_in += 1
            counts.bytes_in += size

    def message_out(self, peer: int | None, size: int) -> None:
        """One message of ``size`` bytes went out."""
        total = self._total
        total.messages_out += 1
        total.bytes_out += size
        if peer is not None:
            counts = self._peers.get(peer) or self._both(peer)[1]
            counts.messages_out += 1
            counts.bytes_out += size

    def messages_in(self, peer: int | None, count: int, size: int) -> None:
        """``count`` messages of ``size`` bytes in all arrived (a batch)."""
        for counts in self._both(peer):
            counts.messages_in += count
            counts.bytes_in += size

    def messages_out(self, peer: int | None, count: int, size: int) -> None:
        """``count`` messages of ``size`` bytes in all went out (a batch)."""
        for counts in self._both(peer):
            counts.messages_out += count
            counts.bytes_out += size

    def drop(self, reason: str, peer: int | None = None, count: int = 1) -> None:
        """``count`` messages dropped for ``reason``."""
        for counts in self._both(peer):
            counts.drops[reason] += count

    def forget(self, peer: int) -> None:
        """Stop keeping ``peer``'s own counters (the totals keep its share)."""
        self._peers.pop(peer, None)

    def snapshot(self) -> SocketStats:
        """A frozen copy of every counter."""
        peers = {peer: counts.freeze() for peer, counts in self._peers.items()}
        total = self._total
        values = {name: getattr(total, name) for name in _FIELDS}
        drops = MappingProxyType(dict(total.drops))
        return SocketStats(**values, drops=drops, peers=MappingProxyType(peers))
