"""What the hub hands back to its runtime: deliveries (one event, many recipients) and closes.

An event is encoded once into a ``Payload`` whatever the number of recipients: the runtime
sends the very same ``bytes`` object to each of them. ``Payload.text`` (for WebSocket
libraries that want ``str`` for a text frame) and ``Payload.memo`` (for a runtime that frames
the bytes once, e.g. a whole WebSocket frame) cache their result on the payload, so every
encoding is also done once per event, not once per recipient.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from .events import Event, encode_event

__all__ = ["Close", "Deliver", "Outgoing", "Payload"]

T = TypeVar("T")


class Payload:
    """One event encoded once, shared by every recipient."""

    __slots__ = ("_memo", "_text", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._text: str | None = None
        self._memo: dict[str, Any] | None = None

    @classmethod
    def of(cls, event: Event) -> Payload:
        """Encode ``event`` as compact UTF-8 JSON."""
        return cls(encode_event(event))

    @property
    def text(self) -> str:
        """The JSON as ``str`` (decoded once)."""
        text = self._text
        if text is None:
            text = self._text = self.data.decode()
        return text

    def memo(self, key: str, build: Callable[[bytes], T]) -> T:
        """``build(data)`` computed once per ``key`` (a runtime's own framing of the bytes)."""
        memo = self._memo
        if memo is None:
            memo = self._memo = {}
        try:
            value: T = memo[key]
        except KeyError:
            value = memo[key] = build(self.data)
        return value

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"Payload({self.data[:60]!r}{'...' if len(self.data) > 60 else ''})"


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send ``payload`` (the encoded ``event``) to every client in ``recipients``."""

    recipients: tuple[Hashable, ...]
    event: Event
    payload: Payload


@dataclass(frozen=True, slots=True)
class Close:
    """Close this client's connection after sending what came before in the list."""

    client: Hashable
    code: int
    reason: str


Outgoing = Deliver | Close
