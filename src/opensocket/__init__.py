"""opensocket: sockets done properly, for asyncio and threads.

The asyncio API is at the top level (``await opensocket.connect(url)``); the blocking API
with the same names is ``opensocket.sync``. The sans-IO protocol core is
``opensocket.protocol``.
"""

from __future__ import annotations

from . import errors
from .address import Address, parse_address
from .aio import Connection, DatagramEndpoint, Server, Stream, connect, open_datagram, run, serve
from .codecs import Codec, get_codec, protobuf_codec, register_codec
from .errors import *  # noqa: F403
from .hooks import Hooks
from .options import KeepAlive, ProtocolOptions, ServerLimits, SocketOptions, TLSOptions
from .stats import ConnectionStats, ServerStats

__version__ = "0.1.0"

__all__ = [
    "Address",
    "Codec",
    "Connection",
    "ConnectionStats",
    "DatagramEndpoint",
    "Hooks",
    "KeepAlive",
    "ProtocolOptions",
    "Server",
    "ServerLimits",
    "ServerStats",
    "SocketOptions",
    "Stream",
    "TLSOptions",
    "__version__",
    "connect",
    "errors",
    "get_codec",
    "open_datagram",
    "parse_address",
    "protobuf_codec",
    "register_codec",
    "run",
    "serve",
]
__all__ += errors.__all__
