"""Events a framed connection reports to its runtime.

Application messages do not travel as events: the connection appends their payloads to its
``messages`` list, which runtimes drain in bulk (one object per message is the hot path).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OpenSocketError

__all__ = ["ConnectionTerminated", "Event", "HandshakeComplete", "PongReceived"]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of connection events."""


@dataclass(frozen=True, slots=True)
class HandshakeComplete(Event):
    """The handshake succeeded; messages may flow. ``pattern``/``peer_pattern`` are the
    messaging patterns both sides agreed on (None on a plain link)."""

    peer_name: str
    codec: str
    heartbeat: float
    checksum: bool
    authenticated: bool
    pattern: str | None = None
    peer_pattern: str | None = None


@dataclass(frozen=True, slots=True)
class PongReceived(Event):
    """A heartbeat reply arrived; ``rtt`` is the round trip in seconds, ``sent`` the ``now``
    of the ``ping(now)`` it answers (so a caller can tell its own ping's answer)."""

    rtt: float
    sent: float = 0.0


@dataclass(frozen=True, slots=True)
class ConnectionTerminated(Event):
    """The connection is over; the runtime flushes ``data_to_send()`` and closes the socket.

    ``error`` is set when it ended because of a failure (ours or reported by the peer).
    """

    code: int
    reason: str
    by_peer: bool
    error: OpenSocketError | None = None
