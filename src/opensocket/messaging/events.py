"""Events the messaging cores report to their runtime (one base class, frozen and slotted).

Session events come from ``Session``; pattern events from the pattern cores; monitor events
are built by runtimes (see ``monitor``). Each names the peer it concerns where it has one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OpenSocketError

__all__ = [
    "Acked",
    "DeliveryAcked",
    "Event",
    "MessageDropped",
    "MessageRedelivered",
    "ReplyReceived",
    "RequestFailed",
    "RequestReceived",
    "SessionLost",
    "SessionResumed",
    "SessionStarted",
    "SubscriptionReady",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of messaging events."""


@dataclass(frozen=True, slots=True)
class SessionStarted(Event):
    """A fresh session began: patterns treat the peer as newly connected."""

    session_id: bytes


@dataclass(frozen=True, slots=True)
class SessionResumed(Event):
    """The session survived a reconnection; ``replayed`` of our messages were sent again."""

    session_id: bytes
    replayed: int


@dataclass(frozen=True, slots=True)
class SessionLost(Event):
    """The session could not go on: ``lost_out`` of our messages never reached the peer and
    ``lost_in`` of the peer's never reached us (as far as either side can know)."""

    session_id: bytes
    reason: str
    lost_out: int
    lost_in: int

    @property
    def lost(self) -> int:
        """Messages lost in both directions."""
        return self.lost_out + self.lost_in


@dataclass(frozen=True, slots=True)
class Acked(Event):
    """The peer confirmed our messages up to ``seq``; ``count`` left the replay buffer."""

    seq: int
    count: int


@dataclass(frozen=True, slots=True)
class MessageDropped(Event):
    """A queue dropped ``count`` messages (``reason``: drop-newest, drop-oldest, ...)."""

    peer: int | None
    direction: str
    reason: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """A replier got a request; answer with ``reply(peer, id, ...)``."""

    peer: int
    id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ReplyReceived(Event):
    """The reply to request ``id`` (``error`` when the replier flagged it as an error)."""

    id: int
    payload: bytes
    error: bool = False


@dataclass(frozen=True, slots=True)
class RequestFailed(Event):
    """Request ``id`` will get no reply: ``error`` says why (RequestTimeout, RequestAborted)."""

    id: int
    error: OpenSocketError


@dataclass(frozen=True, slots=True)
class SubscriptionReady(Event):
    """Every connected publisher confirmed the subscription to ``topic``."""

    topic: bytes


@dataclass(frozen=True, slots=True)
class DeliveryAcked(Event):
    """A puller acknowledged delivery ``id``: it left the in-flight table."""

    peer: int
    id: int


@dataclass(frozen=True, slots=True)
class MessageRedelivered(Event):
    """Delivery ``id`` went back to the queue because puller ``peer`` went away."""

    peer: int
    id: int
