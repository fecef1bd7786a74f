"""Event hooks: let an application observe its sockets without subclassing anything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Hooks"]


@dataclass(frozen=True, slots=True)
class Hooks:
    """Callables run on connection events; exceptions they raise are logged and ignored.

    ``on_connect(conn)`` after the handshake; ``on_close(conn, code, reason)`` when a
    connection ends; ``on_handshake_failed(peer, error)`` when a peer never got in.
    """

    on_connect: Callable[[Any], None] | None = None
    on_close: Callable[[Any, int, str], None] | None = None
    on_handshake_failed: Callable[[str, BaseException], None] | None = None
