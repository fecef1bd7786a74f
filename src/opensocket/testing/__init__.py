"""Test helpers for socket code: free ports, background servers and the fault proxy.

Importable without pytest. The pytest plugin (``opensocket.testing.plugin``, registered as a
``pytest11`` entry point) wraps these as fixtures: ``free_tcp_port``, ``free_udp_port``,
``background_server`` and ``fault_proxy``.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..proxy import BackgroundProxy, Proxy
    from ._server import BackgroundServer

__all__ = ["BackgroundProxy", "BackgroundServer", "Proxy", "free_tcp_port", "free_udp_port"]


def _free_port(kind: socket.SocketKind, host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (prefer port 0 where you can)."""
    return _free_port(socket.SOCK_STREAM, host)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago on ``host``."""
    return _free_port(socket.SOCK_DGRAM, host)


def __getattr__(name: str) -> Any:
    # Lazy: the pytest plugin imports this package in every session; the proxy and the
    # runtimes load only when a test uses them.
    if name == "BackgroundServer":
        from ._server import BackgroundServer

        return BackgroundServer
    if name in ("BackgroundProxy", "Proxy"):
        from .. import proxy

        return getattr(proxy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
