"""The chat hub, sans I/O: protocol (commands and events), hub state machine, backplane.

Runtimes (the asyncio hub server, WebSocket on the HTTP server, clients, the Redis
backplane) are thin layers over these modules; nothing here touches sockets or clocks.
"""

from .backplane import Backplane, Envelope, MemoryBackplane, RoomMeta
from .commands import COMMANDS, Command, encode_command, parse_command
from .errors import ErrorCode, InvalidChatMessage
from .events import EVENTS, Event, encode_event, parse_event
from .flow import ClientQueue, SlowClientPolicy, TokenBucket
from .hub import Hub, Session
from .metrics import ChatCounters, render_metrics
from .options import ChatOptions
from .outgoing import Close, Deliver, Outgoing, Payload

__all__ = [
    "COMMANDS",
    "EVENTS",
    "Backplane",
    "ChatCounters",
    "ChatOptions",
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
    "TokenBucket",
    "encode_command",
    "encode_event",
    "parse_command",
    "parse_event",
    "render_metrics",
]
