"""Pair / peer sockets, sans I/O: messages both ways with any number of connected peers.

``send(payload, now, peer=None)`` goes to ``peer``, or to the only connected peer when None
(several peers and no choice is an error: meshes name their peer). Received messages are
fair-queued over the peers in an inbox with its own high-water mark.
"""

from __future__ import annotations

from ._base import PatternCore
from .envelope import Envelope, Kind
from .events import Event
from .hwm import FairQueue, HighWaterMark, Outcome

__all__ = ["Pair"]


class Pair(PatternCore):
    """A bidirectional socket for peer-to-peer use."""

    name = "pair"

    def __init__(self, hwm: HighWaterMark | None = None) -> None:
        super().__init__(hwm)
        self.inbox: FairQueue[int, Envelope] = FairQueue(self.hwm, receiving=True)

    def send(self, payload: bytes, now: float, *, peer: int | None = None) -> Outcome:
        """Queue one message for ``peer`` (see the module docstring)."""
        if peer is None:
            if len(self.peers) != 1:
                raise ValueError(f"{len(self.peers)} peers are connected: pass peer= to choose one")
            peer = next(iter(self.peers))
        if peer not in self.peers:
            raise ValueError(f"peer {peer} is not connected")
        self.check_size(payload)
        return self._queue(peer, Envelope(Kind.MESSAGE, bytes(payload)))

    def _on_message(self, peer: int, env: Envelope, now: float) -> None:
        self._inbox_drop(peer, self.inbox.push(peer, env, env.size))

    def take(self, limit: int | None = None) -> list[tuple[int, Envelope]]:
        """Received messages, fair-queued over the peers."""
        return self.inbox.take(limit)

    @property
    def paused(self) -> set[int]:
        """Peers whose inbox is full under BLOCK (or RAISE): the runtime stops reading from
        them for now (under the drop policies it keeps reading; the inbox drops and counts)."""
        return self.inbox.paused()

    def events(self) -> list[Event]:
        """Events, including the inbox's drop reports."""
        return [*super().events(), *self.inbox.events()]
