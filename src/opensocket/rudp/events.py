"""Events a reliable-UDP connection or server reports to its runtime."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import RudpConnection

__all__ = [
    "Connected",
    "ConnectionAccepted",
    "ConnectionTerminated",
    "Event",
    "MessageReceived",
    "RudpStats",
    "Writable",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of reliable-UDP events."""


@dataclass(frozen=True, slots=True)
class Connected(Event):
    """The handshake finished: messages flow. ``secure`` says whether datagrams use AEAD."""

    local_cid: int
    peer_cid: int
    secure: bool


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A whole message arrived on ``channel``."""

    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Writable(Event):
    """The send buffer, full when ``send`` last refused, has room again."""


@dataclass(frozen=True, slots=True)
class ConnectionTerminated(Event):
    """The connection is over (reported once): by a CLOSE from either side, a timeout, or
    a dead peer. ``by_peer`` is True when the peer closed it."""

    code: int
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class ConnectionAccepted(Event):
    """A server endpoint validated a client and created its connection."""

    connection: RudpConnection


@dataclass(slots=True)
class RudpStats:
    """Counters of one connection; ``dropped`` counts discarded datagrams or messages by reason."""

    srtt: float = 0.0
    rttvar: float = 0.0
    min_rtt: float | None = None
    rto: float = 0.0
    cwnd: int = 0
    bytes_in_flight: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    packets_sent: int = 0
    packets_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    retransmits: int = 0
    redundant: int = 0  # copies sent by ``RudpOptions.redundancy``
    lost: int = 0
    loss_episodes: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
