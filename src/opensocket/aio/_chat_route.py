"""What the chat hub's router sees of a connection: a bounded queue in front of a transport.

``aio.chat_server`` (native clients) and ``aio.chat_web`` (WebSocket clients) subclass
``RoutedClient``; the router (``ChatServer``) pushes each event to it once, and a client that
falls too far behind is reported to the router (``slow``) instead of slowing anyone down.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from ..chat.flow import ClientQueue
from ..chat.outgoing import Payload

if TYPE_CHECKING:
    from .chat_server import ChatServer

__all__ = ["TRANSPORT_HIGH", "WRITE_CHUNK", "Coalescer", "RoutedClient"]

WRITE_CHUNK: Final = 64 * 1024
TRANSPORT_HIGH: Final = 64 * 1024  # bytes a transport holds before the client's queue fills


class RoutedClient:
    """One connection as the router sees it: a bounded queue in front of a transport."""

    __slots__ = ("cid", "closing", "queue", "server")

    def __init__(self, server: ChatServer, cid: int) -> None:
        self.server = server
        self.cid = cid
        self.queue = ClientQueue(server.policy)
        self.closing = False

    def frame(self, payload: Payload) -> bytes:
        """The bytes this protocol writes for one event."""
        raise NotImplementedError

    def paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark."""
        raise NotImplementedError

    def stalled(self, now: float) -> str | None:
        """Why to drop a client whose transport has taken nothing for too long, else None."""
        return None

    def send_pending(self) -> None:
        """Write what ``write`` queued during this loop iteration (``Coalescer`` calls it)."""
        raise NotImplementedError

    def write(self, chunks: list[bytes]) -> None:
        """Hand framed messages to the transport."""
        raise NotImplementedError

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a reason (after what is already written)."""
        raise NotImplementedError

    def push(self, payload: Payload, now: float) -> None:
        """Write at once when the transport takes data, else queue (bounded)."""
        if self.closing:
            return
        queue = self.queue
        if not len(queue) and not self.paused():
            self.write([self.frame(payload)])
            return
        reason = queue.push(self.frame(payload), now)
        if reason is not None:
            self.server.slow(self, reason)
        elif len(queue) == 1:
            self.server.backlogged(self)

    def flush(self) -> None:
        """Move queued messages to the transport while it accepts them."""
        queue = self.queue
        while len(queue) and not self.paused() and not self.closing:
            self.write(queue.pop(WRITE_CHUNK))


class Coalescer:
    """The clients written to in this loop iteration: each one's frames leave in one write at
    its end (one callback per iteration for all of them, not a write per event per client)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.clients: list[RoutedClient] = []

    def add(self, client: RoutedClient) -> None:
        """``client`` has pending frames (called once per client per iteration)."""
        if not self.clients:
            self.loop.call_soon(self.flush)
        self.clients.append(client)

    def flush(self) -> None:
        """Write every pending client's frames."""
        clients, self.clients = self.clients, []
        for client in clients:
            client.send_pending()
