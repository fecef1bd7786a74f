"""Client commands: one frozen dataclass per command, and the strict parser that builds them.

A command travels as a JSON object with a ``type`` field (the same dict over WebSocket text
frames and over the native protocol's JSON codec). ``parse_command`` accepts the raw bytes, a
decoded ``str``, or an already decoded dict, and checks everything: size, UTF-8, JSON, the
command name, every field's presence, type, length and characters, and that no unknown field
is present. It raises only ``InvalidChatMessage``, whose ``error`` is the code the hub sends
back to that client. The ``id`` field, allowed on every command, comes back as ``ref`` in the
error (and in ``pong``) so a bot can match replies to requests.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from .errors import ErrorCode, InvalidChatMessage
from .options import ChatOptions

__all__ = [
    "COMMANDS",
    "Ban",
    "Command",
    "Hello",
    "Join",
    "Kick",
    "Leave",
    "ListRooms",
    "Lock",
    "Me",
    "Msg",
    "Nick",
    "Ping",
    "Quit",
    "Say",
    "Topic",
    "Unban",
    "Who",
    "decode_object",
    "encode_command",
    "nick_key",
    "normalize_ip",
    "parse_command",
    "room_key",
    "valid_nick",
    "valid_room",
]

_NICK: Final = re.compile(r"[A-Za-z][A-Za-z0-9_\-\[\]{}|^`]*")
_ROOM: Final = re.compile(r"#?([A-Za-z0-9][A-Za-z0-9_.\-]*)")
# Newlines and tabs are fine inside a message; no other control character, and no lone
# surrogate (JSON can carry "\ud800", UTF-8 cannot).
_BAD_TEXT: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")
_BAD_LINE: Final = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
MAX_SHORT: Final = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """Base class of client commands; ``ref`` is the client's optional ``id``."""

    name: ClassVar[str] = ""
    ref: str | int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for this command (None fields left out, ``ref`` sent as ``id``)."""
        out: dict[str, Any] = {"type": self.name}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is not None or (self.name, item.name) in _NULLABLE:
                out["id" if item.name == "ref" else item.name] = value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Command):
    """Register with a nick (first command of every session)."""

    name: ClassVar[str] = "hello"
    nick: str
    password: str | None = None
    client: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Join(Command):
    """Join a room, creating it (and locking it with ``password``) if it does not exist."""

    name: ClassVar[str] = "join"
    room: str
    password: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Leave(Command):
    """Leave a room."""

    name: ClassVar[str] = "leave"
    room: str
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ListRooms(Command):
    """Ask for the list of rooms with member counts."""

    name: ClassVar[str] = "rooms"


@dataclass(frozen=True, slots=True, kw_only=True)
class Who(Command):
    """Ask who is in a room."""

    name: ClassVar[str] = "who"
    room: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Nick(Command):
    """Change nick."""

    name: ClassVar[str] = "nick"
    nick: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Say(Command):
    """Send a message to a room."""

    name: ClassVar[str] = "say"
    room: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Me(Command):
    """Send an action (``/me waves``) to a room."""

    name: ClassVar[str] = "me"
    room: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Msg(Command):
    """Send a private message to one nick."""

    name: ClassVar[str] = "msg"
    to: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Topic(Command):
    """Get a room's topic (``topic`` absent) or set it (``""`` clears it)."""

    name: ClassVar[str] = "topic"
    room: str
    topic: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Lock(Command):
    """Set (or clear, with null) a room's join password: the room's creator or an operator."""

    name: ClassVar[str] = "lock"
    room: str
    password: str | None
    token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Kick(Command):
    """Operator: remove a nick from one room, or from the server when ``room`` is absent."""

    name: ClassVar[str] = "kick"
    nick: str
    token: str
    room: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ban(Command):
    """Operator: ban a nick and/or an IP (``by_ip`` also bans the IP the nick is using)."""

    name: ClassVar[str] = "ban"
    token: str
    nick: str | None = None
    ip: str | None = None
    by_ip: bool = False
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Unban(Command):
    """Operator: lift a ban on a nick and/or an IP."""

    name: ClassVar[str] = "unban"
    token: str
    nick: str | None = None
    ip: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Command):
    """Ask for a ``pong`` (with ``data`` echoed)."""

    name: ClassVar[str] = "ping"
    data: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Quit(Command):
    """Leave the server (the hub answers with a close)."""

    name: ClassVar[str] = "quit"
    reason: str | None = None


def encode_command(command: Command) -> bytes:
    """Compact UTF-8 JSON for one command (what a client sends)."""
    return json.dumps(command.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


def nick_key(nick: str) -> str:
    """The case-insensitive identity of a nick (nicks are ASCII, so lower() is exact)."""
    return nick.lower()


def room_key(room: str) -> str:
    """The case-insensitive identity of a room name."""
    return room.lower()


def valid_nick(nick: str, limit: int) -> bool:
    """True if ``nick`` is a letter then letters, digits or ``_-[]{}|^```, at most ``limit``."""
    return len(nick) <= limit and _NICK.fullmatch(nick) is not None


def valid_room(room: str, limit: int) -> str | None:
    """The room name without its optional ``#``, or None if it is not valid."""
    match = _ROOM.fullmatch(room)
    if match is None or len(match[1]) > limit:
        return None
    return match[1]


def normalize_ip(text: str) -> str | None:
    """Canonical form of an IP address (IPv4-mapped IPv6 becomes IPv4), or None."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _fail(error: ErrorCode, message: str) -> InvalidChatMessage:
    return InvalidChatMessage(error, message)


def decode_object(
    data: bytes | bytearray | memoryview | str | Mapping[str, Any], limit: int
) -> Any:
    """Bytes or text of at most ``limit`` to a JSON value (a dict passes through)."""
    if isinstance(data, Mapping):
        return data
    if not isinstance(data, str | bytes | bytearray | memoryview):
        return data  # already decoded, and not an object: the caller reports it
    if len(data) > limit:
        raise _fail(ErrorCode.TOO_LARGE, f"a command must be at most {limit} bytes")
    if not isinstance(data, str):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(ErrorCode.INVALID_UTF8, f"the command is not valid UTF-8: {exc.reason}")
    try:
        return json.loads(data)
    except RecursionError:  # [[[[... nested deeper than the interpreter allows
        raise _fail(ErrorCode.INVALID_JSON, "the command is not valid JSON: nested too deeply")
    except ValueError as exc:
        raise _fail(ErrorCode.INVALID_JSON, f"the command is not valid JSON: {exc}")


# --- field checkers: (value, options, field name) -> normalized value -----------------------

Checker = Callable[[Any, ChatOptions, str], Any]


def _string(value: Any, field: str, limit: int, bad: re.Pattern[str] = _BAD_LINE) -> str:
    if not isinstance(value, str):
        raise _fail(ErrorCode.INVALID_FIELD, f"{field!r} must be a string")
    if len(value) > limit:
        raise _fail(ErrorCode.TOO_LONG, f"{field!r} is too long (at most {limit} characters)")
    if bad.search(value):
        raise _fail(ErrorCode.INVALID_TEXT, f"{field!r} contains control characters")
    return value


def _nick(value: Any, opts: ChatOptions, field: str) -> str:
    text = _string(value, field, opts.max_nick_length * 4)
    if not valid_nick(text, opts.max_nick_length):
        raise _fail(
            ErrorCode.INVALID_NICK,
            f"{text[:40]!r} is not a valid nick: 1 to {opts.max_nick_length} characters, a "
            "letter first, then letters, digits or _-[]{}|^`",
        )
    return text


def _room(value: Any, opts: ChatOptions, field: str) -> str:
    text = _string(value, field, opts.max_room_length * 4)
    name = valid_room(text, opts.max_room_length)
    if name is None:
        raise _fail(
            ErrorCode.INVALID_ROOM,
            f"{text[:40]!r} is not a valid room name: an optional #, then 1 to "
            f"{opts.max_room_length} letters, digits, '_', '.' or '-' (not first)",
        )
    return name


def _text(value: Any, opts: ChatOptions, field: str) -> str:
    text = _string(value, field, opts.max_message_length, _BAD_TEXT)
    if not text.strip():
        raise _fail(ErrorCode.INVALID_TEXT, f"{field!r} is empty")
    return text


def _topic(value: Any, opts: ChatOptions, field: str) -> str:
    return _string(value, field, opts.max_topic_length)


def _short(value: Any, opts: ChatOptions, field: str) -> str:
    return _string(value, field, MAX_SHORT)


def _secret(value: Any, opts: ChatOptions, field: str) -> str:
    text = _string(value, field, MAX_SHORT)
    if not text:
        raise _fail(ErrorCode.INVALID_FIELD, f"{field!r} must not be empty")
    return text


def _secret_or_null(value: Any, opts: ChatOptions, field: str) -> str | None:
    return None if value is None else _secret(value, opts, field)


def _ip(value: Any, opts: ChatOptions, field: str) -> str:
    ip = normalize_ip(_string(value, field, 64))
    if ip is None:
        raise _fail(ErrorCode.INVALID_FIELD, f"{field!r} must be an IPv4 or IPv6 address")
    return ip


def _bool(value: Any, opts: ChatOptions, field: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(ErrorCode.INVALID_FIELD, f"{field!r} must be true or false")
    return value


def _ref(value: Any, opts: ChatOptions, field: str) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _fail(ErrorCode.INVALID_FIELD, "'id' must be a string or an integer")
    if isinstance(value, int):
        if not -(2**53) <= value <= 2**53:
            raise _fail(ErrorCode.INVALID_FIELD, "'id' must be an integer within +-2**53")
        return value
    return _string(value, field, 64)


# Per command: its class and {field: (checker, required)}. ``id`` and ``type`` are implicit.
Spec = tuple[type[Command], dict[str, tuple[Checker, bool]]]
REQ, OPT = True, False
COMMANDS: Final[dict[str, Spec]] = {
    "hello": (Hello, {"nick": (_nick, REQ), "password": (_secret, OPT), "client": (_short, OPT)}),
    "join": (Join, {"room": (_room, REQ), "password": (_secret, OPT)}),
    "leave": (Leave, {"room": (_room, REQ), "reason": (_short, OPT)}),
    "rooms": (ListRooms, {}),
    "who": (Who, {"room": (_room, REQ)}),
    "nick": (Nick, {"nick": (_nick, REQ)}),
    "say": (Say, {"room": (_room, REQ), "text": (_text, REQ)}),
    "me": (Me, {"room": (_room, REQ), "text": (_text, REQ)}),
    "msg": (Msg, {"to": (_nick, REQ), "text": (_text, REQ)}),
    "topic": (Topic, {"room": (_room, REQ), "topic": (_topic, OPT)}),
    "lock": (
        Lock,
        {"room": (_room, REQ), "password": (_secret_or_null, REQ), "token": (_secret, OPT)},
    ),
    "kick": (
        Kick,
        {
            "nick": (_nick, REQ),
            "token": (_secret, REQ),
            "room": (_room, OPT),
            "reason": (_short, OPT),
        },
    ),
    "ban": (
        Ban,
        {
            "token": (_secret, REQ),
            "nick": (_nick, OPT),
            "ip": (_ip, OPT),
            "by_ip": (_bool, OPT),
            "reason": (_short, OPT),
        },
    ),
    "unban": (Unban, {"token": (_secret, REQ), "nick": (_nick, OPT), "ip": (_ip, OPT)}),
    "ping": (Ping, {"data": (_short, OPT)}),
    "quit": (Quit, {"reason": (_short, OPT)}),
}
_NULLABLE: Final = frozenset({("lock", "password")})


def parse_command(
    data: bytes | bytearray | memoryview | str | Mapping[str, Any], options: ChatOptions
) -> Command:
    """Validate one command (raw JSON or a decoded dict); raise InvalidChatMessage."""
    obj = decode_object(data, options.max_command_bytes)
    if not isinstance(obj, Mapping):
        raise _fail(ErrorCode.NOT_AN_OBJECT, "a command must be a JSON object")
    kind = obj.get("type")
    if kind is None:
        raise _fail(ErrorCode.MISSING_FIELD, "a command needs a 'type' field")
    if not isinstance(kind, str):
        raise _fail(ErrorCode.INVALID_FIELD, "'type' must be a string")
    spec = COMMANDS.get(kind)
    if spec is None:
        known = ", ".join(COMMANDS)
        raise _fail(ErrorCode.UNKNOWN_COMMAND, f"unknown command {kind[:40]!r} (known: {known})")
    cls, fields = spec
    values: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "type":
            continue
        if key == "id":
            values["ref"] = _ref(value, options, key)
            continue
        entry = fields.get(key) if isinstance(key, str) else None
        if entry is None:
            raise _fail(ErrorCode.UNKNOWN_FIELD, f"{kind!r} has no field {str(key)[:40]!r}")
        if value is None and (kind, key) not in _NULLABLE:
            if entry[1]:
                raise _fail(ErrorCode.INVALID_FIELD, f"{key!r} must not be null")
            continue
        values[key] = entry[0](value, options, key)
    for key, (_, required) in fields.items():
        if required and key not in values:
            raise _fail(ErrorCode.MISSING_FIELD, f"{kind!r} needs a {key!r} field")
    return cls(**values)
