"""asyncio messaging sockets: request/reply, publish/subscribe, push/pull, pair.

Each socket can ``bind`` and ``connect`` to several endpoints; connecting endpoints
reconnect by themselves with backoff and jitter, subscriptions are restored and, with
``sessions=SessionOptions()``, sessions resume across dropped connections.

    rep = Replier(handler)          # async def handler(message) -> reply
    url = await rep.bind("tcp://127.0.0.1:0")
    req = Requester()
    await req.connect(url)
    print(await req.request({"x": 1}, timeout=5))
"""

from ._broker import Broker, BrokerMode
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
    "Broker",
    "BrokerMode",
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
