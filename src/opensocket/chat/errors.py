"""Chat error codes (stable, machine-readable) and the one exception the chat core raises.

Everything a client does wrong becomes an ``error`` event for that client carrying one of the
``ErrorCode`` values; only the runtime-facing parsing helpers raise, and only
``InvalidChatMessage`` (a ``ProtocolError``, so it sits in the tree of ``opensocket.errors``)::

    OpenSocketError
    └── ProtocolError
        └── InvalidChatMessage       a chat command or event failed validation (has .error)
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import CloseCode, ProtocolError

__all__ = ["ErrorCode", "InvalidChatMessage"]


class ErrorCode(StrEnum):
    """The ``code`` of an ``error`` event; clients switch on these, never on the message."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    NOT_AN_OBJECT = "not_an_object"
    TOO_LARGE = "too_large"
    UNKNOWN_COMMAND = "unknown_command"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_FIELD = "invalid_field"
    TOO_LONG = "too_long"
    INVALID_TEXT = "invalid_text"
    INVALID_NICK = "invalid_nick"
    NICK_TAKEN = "nick_taken"
    INVALID_ROOM = "invalid_room"
    HELLO_REQUIRED = "hello_required"
    HELLO_TIMEOUT = "hello_timeout"
    ALREADY_REGISTERED = "already_registered"
    BAD_PASSWORD = "bad_password"
    BAD_ROOM_PASSWORD = "bad_room_password"
    NO_SUCH_ROOM = "no_such_room"
    NOT_IN_ROOM = "not_in_room"
    ALREADY_IN_ROOM = "already_in_room"
    TOO_MANY_ROOMS = "too_many_rooms"
    SERVER_FULL = "server_full"
    RATE_LIMITED = "rate_limited"
    NO_SUCH_NICK = "no_such_nick"
    NOT_OPERATOR = "not_operator"
    NOT_ROOM_OWNER = "not_room_owner"
    BANNED = "banned"
    KICKED = "kicked"
    INTERNAL_ERROR = "internal_error"


class InvalidChatMessage(ProtocolError):
    """A chat command or event is not valid; ``error`` is the code to report."""

    code = CloseCode.INVALID_PAYLOAD

    def __init__(self, error: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.error = error
