"""Blocking messaging sockets: request/reply, publish/subscribe, push/pull, pair.

The same classes and methods as ``opensocket.aio.messaging`` (minus ``async``), over the same
sans-IO pattern core and the blocking framed runtime. Each socket can ``bind`` and ``connect``
to several endpoints; connecting endpoints reconnect by themselves with backoff and jitter,
subscriptions are restored and, with ``sessions=SessionOptions()``, sessions resume across
dropped connections. Repliers run their handler on a thread pool::

    from opensocket.sync.messaging import Replier, Requester

    with Replier(lambda message: message.upper()) as rep:
        url = rep.bind("tcp://127.0.0.1:0")
        with Requester() as req:
            req.connect(url)
            print(req.request(b"hi", timeout=5))
"""

from ._patterns import (
    PairSocket,
    PublisherSocket,
    PullerSocket,
    PusherSocket,
    ReplierSocket,
    ReplyError,
    Request,
    RequesterSocket,
    SubscriberSocket,
)
from ._socket import Socket

Requester = RequesterSocket
Replier = ReplierSocket
Publisher = PublisherSocket
Subscriber = SubscriberSocket
Pusher = PusherSocket
Puller = PullerSocket
Pair = PairSocket

__all__ = [
    "Pair",
    "PairSocket",
    "Publisher",
    "PublisherSocket",
    "Puller",
    "PullerSocket",
    "Pusher",
    "PusherSocket",
    "Replier",
    "ReplierSocket",
    "ReplyError",
    "Request",
    "Requester",
    "RequesterSocket",
    "Socket",
    "Subscriber",
    "SubscriberSocket",
]
