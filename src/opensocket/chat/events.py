"""Server events: one frozen dataclass per event, their JSON form, and a lenient parser.

Every event becomes a JSON object with a ``type`` field (``Event.to_dict``); fields that are
None are left out. ``encode_event`` produces the compact UTF-8 JSON the hub shares between
all recipients of an event. ``parse_event`` is the client side: it builds the dataclass back
from a dict, ignoring fields it does not know (a newer server may add some).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from .commands import decode_object
from .errors import ErrorCode, InvalidChatMessage

__all__ = [
    "EVENTS",
    "Action",
    "ErrorEvent",
    "Event",
    "History",
    "Joined",
    "Kicked",
    "Left",
    "Message",
    "NickChanged",
    "Notice",
    "Pong",
    "Private",
    "QuitNotice",
    "RoomInfo",
    "RoomList",
    "TopicInfo",
    "Welcome",
    "WhoList",
    "encode_event",
    "parse_event",
]

MAX_EVENT_BYTES: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of server events; ``type`` is the wire name."""

    type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for this event (None fields left out)."""
        out: dict[str, Any] = {"type": self.type}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = [v.to_dict() if isinstance(v, Event | RoomInfo) else v for v in value]
            out[name] = value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomInfo:
    """One row of a room list."""

    name: str
    members: int
    topic: str = ""
    locked: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for this row."""
        return {
            "name": self.name,
            "members": self.members,
            "topic": self.topic,
            "locked": self.locked,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome(Event):
    """Registration succeeded: your nick, the server's name, message of the day, limits."""

    type: ClassVar[str] = "welcome"
    nick: str
    server: str
    motd: str = ""
    limits: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Joined(Event):
    """``nick`` joined ``room`` (you too: your own join comes back as this event)."""

    type: ClassVar[str] = "joined"
    room: str
    nick: str
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Left(Event):
    """``nick`` left ``room`` (or was kicked from it: then ``reason`` says so)."""

    type: ClassVar[str] = "left"
    room: str
    nick: str
    ts: float
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NickChanged(Event):
    """``old`` is now called ``new`` (sent to everyone sharing a room, and to the user)."""

    type: ClassVar[str] = "nick"
    old: str
    new: str
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QuitNotice(Event):
    """``nick`` left the server (sent to everyone sharing a room with them)."""

    type: ClassVar[str] = "quit"
    nick: str
    ts: float
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Message(Event):
    """A message to a room."""

    type: ClassVar[str] = "message"
    room: str
    nick: str
    text: str
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Action(Event):
    """An action to a room (``/me``): shown as ``* nick text``."""

    type: ClassVar[str] = "action"
    room: str
    nick: str
    text: str
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Private(Event):
    """A private message from ``nick`` to ``to`` (the sender gets a copy too)."""

    type: ClassVar[str] = "private"
    nick: str
    to: str
    text: str
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomList(Event):
    """The rooms of the server (or cluster) with their member counts."""

    type: ClassVar[str] = "rooms"
    rooms: tuple[RoomInfo, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class WhoList(Event):
    """Who is in a room."""

    type: ClassVar[str] = "who"
    room: str
    nicks: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicInfo(Event):
    """A room's topic ("" when none); ``by``/``ts`` say who set it, when."""

    type: ClassVar[str] = "topic"
    room: str
    topic: str
    by: str | None = None
    ts: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class History(Event):
    """The last messages of a room, oldest first, sent to whoever joins."""

    type: ClassVar[str] = "history"
    room: str
    messages: tuple[Message | Action, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent(Event):
    """Something you sent was refused; ``code`` is an ErrorCode, ``ref`` your command's id."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    ref: str | int | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice(Event):
    """A message from the server itself."""

    type: ClassVar[str] = "notice"
    text: str
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Kicked(Event):
    """You were kicked by an operator: from ``room``, or from the server when it is absent."""

    type: ClassVar[str] = "kicked"
    by: str
    reason: str | None = None
    room: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(Event):
    """The answer to ``ping``."""

    type: ClassVar[str] = "pong"
    data: str | None = None
    ref: str | int | None = None


EVENTS: Final[dict[str, type[Event]]] = {
    cls.type: cls
    for cls in (
        Welcome,
        Joined,
        Left,
        NickChanged,
        QuitNotice,
        Message,
        Action,
        Private,
        RoomList,
        WhoList,
        TopicInfo,
        History,
        ErrorEvent,
        Notice,
        Kicked,
        Pong,
    )
}
_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _field_names(cls: type[Any]) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def encode_event(event: Event) -> bytes:
    """Compact UTF-8 JSON for one event."""
    return json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


def _convert(name: str, value: Any) -> Any:
    if name == "rooms" and isinstance(value, list):
        return tuple(RoomInfo(**_known(RoomInfo, row)) for row in value)
    if name == "messages" and isinstance(value, list):
        return tuple(_build(row) for row in value)
    if name == "nicks" and isinstance(value, list):
        return tuple(value)
    return value


def _known(cls: type[Any], row: Any) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise InvalidChatMessage(ErrorCode.INVALID_FIELD, f"a {cls.__name__} must be an object")
    names = _field_names(cls)
    return {k: v for k, v in row.items() if k in names}


def _build(obj: Any) -> Any:
    if not isinstance(obj, Mapping):
        raise InvalidChatMessage(ErrorCode.NOT_AN_OBJECT, "an event must be a JSON object")
    cls = EVENTS.get(obj.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise InvalidChatMessage(ErrorCode.UNKNOWN_COMMAND, f"unknown event {obj.get('type')!r}")
    fields = {k: _convert(k, v) for k, v in _known(cls, obj).items()}
    try:
        return cls(**fields)
    except TypeError as exc:
        raise InvalidChatMessage(ErrorCode.MISSING_FIELD, f"a {cls.type!r} event: {exc}")


def parse_event(data: bytes | bytearray | memoryview | str | Mapping[str, Any]) -> Event:
    """Build an event from the server's JSON (client side); raise InvalidChatMessage."""
    event: Event = _build(decode_object(data, MAX_EVENT_BYTES))
    return event
