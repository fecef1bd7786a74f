"""Counters for connections and servers, readable from Python as ``conn.stats``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["ConnectionStats", "ServerStats"]


@dataclass(slots=True)
class ConnectionStats:
    """A snapshot of one connection's counters."""

    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    errors: int = 0
    rtt: float | None = None


@dataclass(slots=True)
class ServerStats:
    """A server's counters; ``dropped`` counts closed-by-the-server connections by reason."""

    accepted: int = 0
    active: int = 0
    handshakes_failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    errors: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def add_connection(self, stats: ConnectionStats) -> None:
        """Fold the final counters of a closed connection into the totals."""
        self.bytes_in += stats.bytes_in
        self.bytes_out += stats.bytes_out
        self.messages_in += stats.messages_in
        self.messages_out += stats.messages_out
        self.frames_in += stats.frames_in
        self.frames_out += stats.frames_out
        self.errors += stats.errors
