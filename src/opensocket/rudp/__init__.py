"""Reliable UDP, sans I/O: channels, fragmentation, loss recovery, congestion and flow control.

The wire format is in docs/rudp.md. ``RudpConnection.connect`` makes a client; a
``RudpServer`` validates clients with stateless cookies and creates their connections.
"""

from ..errors import SendBufferFull
from .congestion import BbrLite, CongestionController, FixedWindow, NewReno
from .connection import RudpConnection, State
from .events import (
    Connected,
    ConnectionAccepted,
    ConnectionTerminated,
    Event,
    MessageReceived,
    RudpStats,
    Writable,
)
from .options import DEFAULT_CHANNELS, ChannelKind, RudpOptions
from .server import RudpServer, ServerStats

__all__ = [
    "DEFAULT_CHANNELS",
    "BbrLite",
    "ChannelKind",
    "CongestionController",
    "Connected",
    "ConnectionAccepted",
    "ConnectionTerminated",
    "Event",
    "FixedWindow",
    "MessageReceived",
    "NewReno",
    "RudpConnection",
    "RudpOptions",
    "RudpServer",
    "RudpStats",
    "SendBufferFull",
    "ServerStats",
    "State",
    "Writable",
]
