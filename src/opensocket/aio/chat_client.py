"""A chat client for bots and tools (asyncio): commands as methods, events as an async iterator.

The client speaks the native chat protocol (the framed protocol, codec ``json``) over
``tcp://``, ``tls://`` or ``unix://``. When the connection is lost it reconnects by itself
with a growing delay, registers its nick again and rejoins its rooms (``reconnect=True``,
the default); the iterator ends (or raises) only when the client is closed, quits, is
kicked from the server, or the connection cannot be re-established within ``give_up`` s.

    client = await ChatClient.connect("tcp://127.0.0.1:7070", nick="bot", rooms=["lobby"])
    await client.say("lobby", "hello")
    async for event in client:
        if isinstance(event, Message) and event.text == "!ping":
            await client.say(event.room, "pong")
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any, Final

from .._log import safe_call
from ..address import Address
from ..chat.client_state import (
    CLIENT_NAME,
    HELLO_TIMEOUT,
    QUIT_TIMEOUT,
    RETRYABLE,
    ChatState,
    hello_failed,
    not_connected,
    room_key,
)
from ..chat.commands import (
    Ban,
    Command,
    Join,
    Kick,
    Leave,
    ListRooms,
    Me,
    Msg,
    Nick,
    Quit,
    Say,
    Topic,
    Who,
)
from ..chat.errors import ErrorCode
from ..chat.events import ErrorEvent, Event, Welcome, parse_event
from ..errors import (
    CloseCode,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionRejected,
    OpenSocketError,
    ReadTimeout,
)
from ..options import TLSOptions
from . import connect as _connect
from ._framed import Connection

__all__ = ["CLIENT_NAME", "ChatClient", "ChatState", "hello_failed", "room_key"]


_END: Final = object()


class ChatClient:
    """A connected chat client (asyncio). Create it with ``await ChatClient.connect(...)``."""

    def __init__(
        self,
        url: str | Address,
        state: ChatState,
        *,
        tls: TLSOptions | None,
        reconnect: bool,
        backoff: tuple[float, float],
        give_up: float,
    ) -> None:
        self.url = str(url)
        self.state = state
        self.reconnect = reconnect
        self.welcome: Welcome | None = None
        self._target = url
        self._tls = tls
        self._backoff = backoff
        self._give_up = give_up
        self._conn: Connection | None = None
        self._ready = asyncio.Event()
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._closing = False
        self._ended: BaseException | None = None  # why the client stopped, told to senders
        self._reader: asyncio.Task[None] | None = None
        self.reconnects = 0
        # called with why the link was lost, as the client starts reconnecting
        self.on_reconnecting: Callable[[ConnectionClosed], None] | None = None

    @classmethod
    async def connect(
        cls,
        url: str | Address,
        *,
        nick: str,
        password: str | None = None,
        rooms: Iterable[str] = (),
        tls: TLSOptions | None = None,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.05, 2.0),
        give_up: float = 30.0,
    ) -> ChatClient:
        """Connect, register ``nick`` (ConnectionRejected if the hub refuses) and join ``rooms``."""
        client = cls(
            url,
            ChatState(nick, password),
            tls=tls,
            reconnect=reconnect,
            backoff=backoff,
            give_up=give_up,
        )
        conn = await client._open()
        client._reader = asyncio.get_running_loop().create_task(client._read(conn))
        for room in rooms:
            await client.join(room)
        return client

    @property
    def current_nick(self) -> str:
        """Our current nick (follows ``nick()`` and the hub's renames)."""
        return self.state.nick

    @property
    def joined_rooms(self) -> list[str]:
        """The rooms we are in (or joining), as the hub spells them."""
        return [name for name, _ in self.state.rooms.values()]

    # ---- commands ------------------------------------------------------------------------

    async def send(self, command: Command) -> None:
        """Send any command (waits while the client reconnects)."""
        command = self.state.command(command)
        while self._conn is None:
            if self._closing or self._reader is None or self._reader.done():
                raise self._not_connected()
            await self._ready.wait()
        await self._conn.send(command.to_dict())

    def _not_connected(self) -> OpenSocketError:
        return not_connected(self._ended, closing=self._closing)

    async def join(self, room: str, password: str | None = None) -> None:
        """Join (or create) ``room``; the client rejoins it after a reconnect."""
        await self.send(Join(room=room, password=password))

    async def leave(self, room: str, reason: str | None = None) -> None:
        """Leave ``room``."""
        await self.send(Leave(room=room, reason=reason))

    async def say(self, room: str, text: str) -> None:
        """Say ``text`` in ``room``."""
        await self.send(Say(room=room, text=text))

    async def me(self, room: str, text: str) -> None:
        """An action (``/me``) in ``room``."""
        await self.send(Me(room=room, text=text))

    async def msg(self, to: str, text: str) -> None:
        """A private message to ``to``."""
        await self.send(Msg(to=to, text=text))

    async def nick(self, nick: str) -> None:
        """Change our nick (``current_nick`` follows once the hub agrees)."""
        await self.send(Nick(nick=nick))

    async def topic(self, room: str, topic: str | None = None) -> None:
        """Ask for the topic of ``room`` (None) or set it (``""`` clears it)."""
        await self.send(Topic(room=room, topic=topic))

    async def who(self, room: str) -> None:
        """Ask who is in ``room`` (the answer is a ``WhoList`` event)."""
        await self.send(Who(room=room))

    async def rooms(self) -> None:
        """Ask for the list of rooms (the answer is a ``RoomList`` event)."""
        await self.send(ListRooms())

    async def kick(
        self, nick: str, token: str, room: str | None = None, reason: str | None = None
    ) -> None:
        """Operator: remove ``nick`` from ``room``, or from the server when ``room`` is None."""
        await self.send(Kick(nick=nick, token=token, room=room, reason=reason))

    async def ban(
        self,
        token: str,
        nick: str | None = None,
        ip: str | None = None,
        by_ip: bool = False,
        reason: str | None = None,
    ) -> None:
        """Operator: ban a nick and/or an IP."""
        await self.send(Ban(token=token, nick=nick, ip=ip, by_ip=by_ip, reason=reason))

    async def quit(self, reason: str | None = None) -> None:
        """Leave the server (the others see ``reason``) and close; the iterator then ends."""
        conn = self._conn
        self._closing = True
        if conn is not None:
            with contextlib.suppress(ConnectionClosed):
                await conn.send(Quit(reason=reason).to_dict())
            if self._reader is not None:
                # the hub closes after quit; the reader sees it and ends the iterator
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._reader), QUIT_TIMEOUT)
        await self.close()

    async def close(self) -> None:
        """Close the connection at once (no quit message); the iterator then ends."""
        self._closing = True
        self._ready.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._events.put_nowait(_END)

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- events --------------------------------------------------------------------------

    async def receive(self, timeout: float | None = None) -> Event:
        """The next event; ReadTimeout after ``timeout`` s; ConnectionClosed once it has ended
        (ConnectionClosedOK after ``quit``/``close``)."""
        try:
            item = await asyncio.wait_for(self._events.get(), timeout)
        except TimeoutError:
            raise ReadTimeout(f"no chat event within {timeout} s") from None
        if isinstance(item, Event):
            return item
        self._events.put_nowait(item)  # every later call ends the same way
        if isinstance(item, BaseException):
            raise item
        raise ConnectionClosed(CloseCode.NORMAL, "the chat client is closed")

    def __aiter__(self) -> ChatClient:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except ConnectionClosed as exc:
            if exc.code == CloseCode.NORMAL and not isinstance(exc, ConnectionClosedError):
                raise StopAsyncIteration from None
            raise

    # ---- connection ----------------------------------------------------------------------

    async def _open(self) -> Connection:
        """Connect and register; rejoin our rooms when this is a reconnect."""
        conn = await _connect(self._target, codec="json", tls=self._tls)
        try:
            welcome = await self._hello(conn)
        except BaseException:
            await conn.close()
            raise
        self.welcome = welcome
        self.state.event(welcome)
        await conn.send_many([c.to_dict() for c in self.state.rejoin()])
        self._conn = conn
        self._ready.set()
        return conn

    async def _hello(self, conn: Connection) -> Welcome:
        refused: ErrorEvent | None = None
        for _ in range(8):  # bounded: a few nick variants at most
            await conn.send(self.state.hello().to_dict())
            event = parse_event(await conn.recv(timeout=HELLO_TIMEOUT))
            while not isinstance(event, Welcome | ErrorEvent):
                event = parse_event(await conn.recv(timeout=HELLO_TIMEOUT))
            if isinstance(event, Welcome):
                return event
            refused = event
            if event.code != ErrorCode.NICK_TAKEN or self.reconnects == 0:
                break
            self.state.retry_nick()
        assert refused is not None
        raise hello_failed(self.url, refused)

    async def _read(self, conn: Connection) -> None:
        while True:
            try:
                while True:
                    event = parse_event(await conn.recv())
                    self.state.event(event)
                    self._events.put_nowait(event)
            except ConnectionClosed as exc:
                self._conn = None
                self._ready.clear()
                if self._closing or not self.reconnect or self.state.gone:
                    self._finish(exc)
                    return
                lost = exc
            except OpenSocketError as exc:  # a hub sending garbage: treat as a lost link
                await conn.close(CloseCode.PROTOCOL_ERROR, "bad chat event")
                self._conn = None
                self._ready.clear()
                lost = ConnectionClosedError(CloseCode.PROTOCOL_ERROR, str(exc))
            reconnected = await self._reconnect(lost)
            if reconnected is None:
                return
            conn = reconnected

    async def _reconnect(self, lost: ConnectionClosed) -> Connection | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._give_up
        delay, most = self._backoff
        self.reconnects += 1
        safe_call(self.on_reconnecting, lost)
        last: BaseException = lost
        while loop.time() < deadline and not self._closing:
            try:
                conn = await self._open()
            except ConnectionRejected as exc:
                self._finish(exc)  # the hub answers but refuses us: retrying will not help
                return None
            except RETRYABLE as exc:
                last = exc
            except OpenSocketError as exc:  # TLS refused, bad options: retrying will not help
                self._finish(exc)
                return None
            else:
                self._events.put_nowait(self.welcome)
                return conn
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, most)
        self._finish(
            ConnectionClosedError(
                CloseCode.ABNORMAL,
                f"lost the chat hub at {self.url} and could not reconnect within "
                f"{self._give_up:g} s ({last})",
            )
        )
        return None

    def _finish(self, exc: BaseException) -> None:
        self._ended = exc
        self._ready.set()  # senders waiting for a reconnect give up
        if self._closing or (
            isinstance(exc, ConnectionClosed)
            and exc.code == CloseCode.NORMAL
            and not self.reconnect
            and not self.state.gone
        ):
            self._events.put_nowait(_END)
        else:
            self._events.put_nowait(exc)
