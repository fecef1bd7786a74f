"""What both chat clients (asyncio and blocking) share, without I/O: the state a client
restores after a reconnect, the errors worth a retry, and how a refused hello reads."""

from __future__ import annotations

from typing import Final

from ..errors import (
    CloseCode,
    ConnectError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionRejected,
    OpenSocketError,
    OperationTimeout,
    ProtocolError,
)
from .commands import Command, Hello, Join, Leave, nick_key
from .commands import room_key as _room_key
from .errors import ErrorCode
from .events import ErrorEvent, Event, Joined, Kicked, Left, NickChanged, Welcome

__all__ = [
    "CLIENT_NAME",
    "HELLO_TIMEOUT",
    "QUIT_TIMEOUT",
    "RETRYABLE",
    "ChatState",
    "hello_failed",
    "not_connected",
    "room_key",
]

CLIENT_NAME: Final = "opensocket-py"
HELLO_TIMEOUT: Final = 10.0
QUIT_TIMEOUT: Final = 5.0
# failures after which trying again may work (the hub is restarting, the network is back)
RETRYABLE: Final = (ConnectError, ConnectionClosed, OperationTimeout, ProtocolError, OSError)


def not_connected(ended: BaseException | None, *, closing: bool) -> OpenSocketError:
    """Why a command cannot be sent: the reason the client stopped (the hub lost for good,
    a refusal), or that it is closed or between connections."""
    if not closing and isinstance(ended, OpenSocketError):
        return ended
    reason = "the chat client is closed" if closing else "the chat client is not connected"
    return ConnectionClosedError(CloseCode.NORMAL, reason)


def room_key(room: str) -> str:
    """The identity of a room as given by a user (``#Lobby`` and ``lobby`` are one room)."""
    return _room_key(room.removeprefix("#"))


def hello_failed(url: str, event: ErrorEvent) -> ConnectionRejected:
    """The error raised when the hub refuses our ``hello`` (bad password, nick taken, banned)."""
    return ConnectionRejected(f"chat hub at {url} refused us: {event.message} ({event.code})")


class ChatState:
    """What the client must restore after a reconnect: its nick and rooms (no I/O here).

    Both runtimes feed it every command they send and every event they receive.
    """

    def __init__(self, nick: str, password: str | None) -> None:
        self.nick = nick
        self.password = password
        self.rooms: dict[str, tuple[str, str | None]] = {}  # key -> (name, join password)
        self.gone = False  # kicked from the server or banned: do not come back
        self._joins: dict[int, str] = {}
        self._ref = 0

    def command(self, command: Command) -> Command:
        """Record ``command`` before it is sent; return it with a ``ref`` when it needs one."""
        if isinstance(command, Join):
            self._ref += 1
            self._joins[self._ref] = room_key(command.room)
            self.rooms[room_key(command.room)] = (command.room.removeprefix("#"), command.password)
            return Join(room=command.room, password=command.password, ref=self._ref)
        if isinstance(command, Leave):
            self.rooms.pop(room_key(command.room), None)
        return command

    def event(self, event: Event) -> None:
        """Follow our nick and rooms through the events the hub sends."""
        mine = nick_key(self.nick)
        if isinstance(event, Welcome):
            self.nick = event.nick
        elif isinstance(event, NickChanged) and nick_key(event.old) == mine:
            self.nick = event.new
        elif isinstance(event, Joined) and nick_key(event.nick) == mine:
            self.rooms.setdefault(room_key(event.room), (event.room, None))
        elif isinstance(event, Left) and nick_key(event.nick) == mine:
            self.rooms.pop(room_key(event.room), None)
        elif isinstance(event, Kicked):
            if event.room is None:
                self.gone = True
            else:
                self.rooms.pop(room_key(event.room), None)
        elif isinstance(event, ErrorEvent):
            if event.code == ErrorCode.BANNED:
                self.gone = True
            elif isinstance(event.ref, int) and event.ref in self._joins:
                self.rooms.pop(self._joins.pop(event.ref), None)

    def hello(self) -> Hello:
        """The ``hello`` that registers us (again)."""
        return Hello(nick=self.nick, password=self.password, client=CLIENT_NAME)

    def rejoin(self) -> list[Command]:
        """The ``join`` commands that bring us back into our rooms."""
        return [self.command(Join(room=name, password=pw)) for name, pw in self.rooms.values()]

    def retry_nick(self) -> None:
        """Our nick is still held (our old session is not gone yet): try a variant."""
        self.nick = (self.nick + "_")[-24:]
