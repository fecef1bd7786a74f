"""The sans-IO core of the framed protocol: frames, handshake, connection state machine."""

from .connection import FramedConnection, Role, State
from .decoder import FrameDecoder
from .events import ConnectionTerminated, Event, HandshakeComplete, PongReceived
from .frame import HEADER_SIZE, MAGIC, VERSION, Flags, Frame, FrameType, encode_frame

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "VERSION",
    "ConnectionTerminated",
    "Event",
    "Flags",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "FramedConnection",
    "HandshakeComplete",
    "PongReceived",
    "Role",
    "State",
    "encode_frame",
]
