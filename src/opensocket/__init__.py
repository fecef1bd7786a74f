"""opensocket: sockets done properly, for asyncio and threads.

The asyncio API is at the top level (``await opensocket.connect(url)``); the blocking API
with the same names is ``opensocket.sync``. The sans-IO protocol core is
``opensocket.protocol``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import *  # noqa: F403

if TYPE_CHECKING:
    from .address import Address, parse_address
    from .aio import (
        Connection,
        DatagramEndpoint,
        ReliableConnection,
        ReliableServer,
        Server,
        Stream,
        connect,
        open_datagram,
        run,
        serve,
    )
    from .codecs import Codec, get_codec, protobuf_codec, register_codec
    from .hooks import Hooks
    from .options import KeepAlive, ProtocolOptions, ServerLimits, SocketOptions, TLSOptions
    from .rudp import RudpOptions
    from .stats import ConnectionStats, ServerStats

# Imported on first use, so that a CLI command or ``opensocket.sync`` does not pay for the
# asyncio runtime (and the protocol core) unless it uses them.
_LAZY = {
    **dict.fromkeys(("Address", "parse_address"), "address"),
    **dict.fromkeys(
        (
            "Connection",
            "DatagramEndpoint",
            "ReliableConnection",
            "ReliableServer",
            "Server",
            "Stream",
            "connect",
            "open_datagram",
            "run",
            "serve",
        ),
        "aio",
    ),
    **dict.fromkeys(("Codec", "get_codec", "protobuf_codec", "register_codec"), "codecs"),
    "Hooks": "hooks",
    **dict.fromkeys(
        ("KeepAlive", "ProtocolOptions", "ServerLimits", "SocketOptions", "TLSOptions"),
        "options",
    ),
    **dict.fromkeys(("ConnectionStats", "ServerStats"), "stats"),
    "RudpOptions": "rudp",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'opensocket' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "ReliableConnection",
    "ReliableServer",
    "RudpOptions",
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
