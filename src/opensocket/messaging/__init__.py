"""The sans-IO core of the messaging patterns: envelopes, resumable sessions, high-water
marks, request/reply, publish/subscribe, push/pull, monitoring and reconnection backoff.

Nothing here touches sockets, threads or clocks: runtimes feed frames and ``now`` in and take
frames and events out (see /work/notes/docs-messaging.md for the architecture).
"""

from ..errors import MalformedEnvelope, QueueFull, RequestAborted, RequestTimeout
from .backoff import Backoff, BackoffOptions
from .bridge import Bridge
from .envelope import Envelope, Kind, MetaFlags, SessionHello, SessionStatus, decode, encode
from .events import (
    Acked,
    DeliveryAcked,
    Event,
    MessageDropped,
    MessageRedelivered,
    ReplyReceived,
    RequestFailed,
    RequestReceived,
    SessionLost,
    SessionResumed,
    SessionStarted,
    SubscriptionReady,
)
from .hwm import BoundedQueue, FairQueue, HighWaterMark, Outcome, Policy, QueueCounters
from .monitor import (
    Connected,
    Disconnected,
    HandshakeFailed,
    PeerStats,
    Reconnecting,
    SocketStats,
    StatsRecorder,
)
from .pair import Pair
from .pubsub import Publisher, PublisherOptions, Subscriber, SubscriptionIndex
from .pushpull import Puller, PullOptions, Pusher, PushOptions
from .reqrep import Balance, Replier, Requester, RequesterOptions
from .session import ResumeWindow, Session, SessionOptions, SessionState, SessionStore

__all__ = [
    "Acked",
    "Backoff",
    "BackoffOptions",
    "Balance",
    "BoundedQueue",
    "Bridge",
    "Connected",
    "DeliveryAcked",
    "Disconnected",
    "Envelope",
    "Event",
    "FairQueue",
    "HandshakeFailed",
    "HighWaterMark",
    "Kind",
    "MalformedEnvelope",
    "MessageDropped",
    "MessageRedelivered",
    "MetaFlags",
    "Outcome",
    "Pair",
    "PeerStats",
    "Policy",
    "Publisher",
    "PublisherOptions",
    "PullOptions",
    "Puller",
    "PushOptions",
    "Pusher",
    "QueueCounters",
    "QueueFull",
    "Reconnecting",
    "Replier",
    "ReplyReceived",
    "RequestAborted",
    "RequestFailed",
    "RequestReceived",
    "RequestTimeout",
    "Requester",
    "RequesterOptions",
    "ResumeWindow",
    "Session",
    "SessionHello",
    "SessionLost",
    "SessionOptions",
    "SessionResumed",
    "SessionStarted",
    "SessionState",
    "SessionStatus",
    "SessionStore",
    "SocketStats",
    "StatsRecorder",
    "Subscriber",
    "SubscriptionIndex",
    "SubscriptionReady",
    "decode",
    "encode",
]
