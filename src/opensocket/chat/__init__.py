"""The chat hub, sans I/O: protocol (commands and events), hub state machine, backplane.

Runtimes (the asyncio hub server, WebSocket on the HTTP server, clients, the Redis
backplane) are thin layers over these modules; nothing here touches sockets or clocks.

The clients for bots are here too, imported on first use (so that importing this package
starts no runtime): ``Client`` (asyncio) and ``SyncClient`` (blocking, threads)::

    client = await opensocket.chat.Client.connect("tcp://127.0.0.1:7070", nick="bot")
    with opensocket.chat.SyncClient.connect("tcp://127.0.0.1:7070", nick="bot") as client: ...
"""

from typing import TYPE_CHECKING, Any

from .backplane import Backplane, Envelope, MemoryBackplane, RoomMeta
from .commands import COMMANDS, Command, encode_command, parse_command
from .errors import ErrorCode, InvalidChatMessage
from .events import EVENTS, Event, encode_event, parse_event
from .flow import ClientQueue, SlowClientPolicy, TokenBucket
from .hub import Hub, Session
from .metrics import ChatCounters, render_metrics
from .options import ChatOptions
from .outgoing import Close, Deliver, Outgoing, Payload

if TYPE_CHECKING:
    from ..aio.chat_client import ChatClient as Client
    from ..sync.chat_client import ChatClient as SyncClient

__all__ = [
    "COMMANDS",
    "EVENTS",
    "Backplane",
    "ChatCounters",
    "ChatOptions",
    "Client",
    "ClientQueue",
    "Close",
    "Command",
    "Deliver",
    "Envelope",
    "ErrorCode",
    "Event",
    "Hub",
    "InvalidChatMessage",
    "MemoryBackplane",
    "Outgoing",
    "Payload",
    "RoomMeta",
    "Session",
    "SlowClientPolicy",
    "SyncClient",
    "TokenBucket",
    "encode_command",
    "encode_event",
    "parse_command",
    "parse_event",
    "render_metrics",
]


# The clients live with their runtimes; imported on first use.
_CLIENTS = {"Client": "..aio.chat_client", "SyncClient": "..sync.chat_client"}


def __getattr__(name: str) -> Any:
    module = _CLIENTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = import_module(module, __name__).ChatClient
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
