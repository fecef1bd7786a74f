"""A blocking chat client for scripts and bots: commands as methods, events from ``events()``.

The same client as ``opensocket.aio.chat_client.ChatClient`` over ``opensocket.sync``: a
reader thread receives events (and reconnects, registers again and rejoins the rooms when
the link is lost); the calling thread sends and takes events with ``client.events(timeout)``.

    client = ChatClient.connect("tcp://127.0.0.1:7070", nick="bot", rooms=["lobby"])
    client.say("lobby", "hello")
    for event in client.events(timeout=60):
        print(event)
    client.quit("bye")
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from .._log import safe_call
from ..address import Address
from ..chat.client_state import (
    HELLO_TIMEOUT,
    QUIT_TIMEOUT,
    RETRYABLE,
    ChatState,
    hello_failed,
    not_connected,
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

__all__ = ["ChatClient"]

_END: Final = object()


class ChatClient:
    """A connected chat client (blocking). Create it with ``ChatClient.connect(...)``."""

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
        self.reconnects = 0
        # called in the reader thread with why the link was lost, as reconnecting starts
        self.on_reconnecting: Callable[[ConnectionClosed], None] | None = None
        self._target = url
        self._tls = tls
        self._backoff = backoff
        self._give_up = give_up
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # guards state and _conn between reader and callers
        self._ready = threading.Event()
        self._stop = threading.Event()  # set by close(): ends the reconnect wait at once
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closing = False
        self._ended: BaseException | None = None  # why the client stopped, told to senders
        self._reader: threading.Thread | None = None

    @classmethod
    def connect(
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
        conn = client._open()
        client._reader = threading.Thread(
            target=client._read, args=(conn,), name=f"chat-client-{nick}", daemon=True
        )
        client._reader.start()
        for room in rooms:
            client.join(room)
        return client

    @property
    def current_nick(self) -> str:
        """Our current nick (follows ``nick()`` and the hub's renames)."""
        return self.state.nick

    @property
    def joined_rooms(self) -> list[str]:
        """The rooms we are in (or joining), as the hub spells them."""
        with self._lock:
            return [name for name, _ in self.state.rooms.values()]

    # ---- commands ------------------------------------------------------------------------

    def send(self, command: Command) -> None:
        """Send any command (waits while the client reconnects, at most ``give_up`` s)."""
        with self._lock:
            command = self.state.command(command)
        self._ready.wait(self._give_up)
        conn = self._conn
        if conn is None:
            raise self._not_connected()
        conn.send(command.to_dict())

    def _not_connected(self) -> OpenSocketError:
        return not_connected(self._ended, closing=self._closing)

    def join(self, room: str, password: str | None = None) -> None:
        """Join (or create) ``room``; the client rejoins it after a reconnect."""
        self.send(Join(room=room, password=password))

    def leave(self, room: str, reason: str | None = None) -> None:
        """Leave ``room``."""
        self.send(Leave(room=room, reason=reason))

    def say(self, room: str, text: str) -> None:
        """Say ``text`` in ``room``."""
        self.send(Say(room=room, text=text))

    def me(self, room: str, text: str) -> None:
        """An action (``/me``) in ``room``."""
        self.send(Me(room=room, text=text))

    def msg(self, to: str, text: str) -> None:
        """A private message to ``to``."""
        self.send(Msg(to=to, text=text))

    def nick(self, nick: str) -> None:
        """Change our nick (``current_nick`` follows once the hub agrees)."""
        self.send(Nick(nick=nick))

    def topic(self, room: str, topic: str | None = None) -> None:
        """Ask for the topic of ``room`` (None) or set it (``""`` clears it)."""
        self.send(Topic(room=room, topic=topic))

    def who(self, room: str) -> None:
        """Ask who is in ``room`` (the answer is a ``WhoList`` event)."""
        self.send(Who(room=room))

    def rooms(self) -> None:
        """Ask for the list of rooms (the answer is a ``RoomList`` event)."""
        self.send(ListRooms())

    def kick(
        self, nick: str, token: str, room: str | None = None, reason: str | None = None
    ) -> None:
        """Operator: remove ``nick`` from ``room``, or from the server when ``room`` is None."""
        self.send(Kick(nick=nick, token=token, room=room, reason=reason))

    def ban(
        self,
        token: str,
        nick: str | None = None,
        ip: str | None = None,
        by_ip: bool = False,
        reason: str | None = None,
    ) -> None:
        """Operator: ban a nick and/or an IP."""
        self.send(Ban(token=token, nick=nick, ip=ip, by_ip=by_ip, reason=reason))

    def quit(self, reason: str | None = None) -> None:
        """Leave the server (the others see ``reason``) and close; ``events()`` then ends."""
        self._closing = True
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(ConnectionClosed):
                conn.send(Quit(reason=reason).to_dict())
            conn.wait_closed(QUIT_TIMEOUT)  # the hub closes after quit
        self.close()

    def close(self) -> None:
        """Close the connection at once (no quit message); ``events()`` then ends."""
        self._closing = True
        self._stop.set()
        self._ready.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(QUIT_TIMEOUT)
        self._events.put(_END)

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- events --------------------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> Event:
        """The next event; ReadTimeout after ``timeout`` s; ConnectionClosed once it has ended
        (ConnectionClosedOK after ``quit``/``close``)."""
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            raise ReadTimeout(f"no chat event within {timeout} s") from None
        if isinstance(item, Event):
            return item
        self._events.put(item)  # every later call ends the same way
        if isinstance(item, BaseException):
            raise item
        raise ConnectionClosed(CloseCode.NORMAL, "the chat client is closed")

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events as they come; stops after ``timeout`` s without one (None: wait forever) or
        once the client is closed; raises ConnectionClosedError when the hub is lost for good."""
        while True:
            try:
                yield self.receive(timeout)
            except ReadTimeout:
                return
            except ConnectionClosed as exc:
                if isinstance(exc, ConnectionClosedError) or exc.code != CloseCode.NORMAL:
                    raise
                return

    # ---- connection ----------------------------------------------------------------------

    def _open(self) -> Connection:
        conn = _connect(self._target, codec="json", tls=self._tls)
        try:
            welcome = self._hello(conn)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self.welcome = welcome
            self.state.event(welcome)
            rejoin = self.state.rejoin()
        if rejoin:
            conn.send_many([c.to_dict() for c in rejoin])
        self._conn = conn
        self._ready.set()
        return conn

    def _hello(self, conn: Connection) -> Welcome:
        refused: ErrorEvent | None = None
        for _ in range(8):  # bounded: a few nick variants at most
            conn.send(self.state.hello().to_dict())
            event = parse_event(conn.recv(timeout=HELLO_TIMEOUT))
            while not isinstance(event, Welcome | ErrorEvent):
                event = parse_event(conn.recv(timeout=HELLO_TIMEOUT))
            if isinstance(event, Welcome):
                return event
            refused = event
            if event.code != ErrorCode.NICK_TAKEN or self.reconnects == 0:
                break
            self.state.retry_nick()
        assert refused is not None
        raise hello_failed(self.url, refused)

    def _read(self, conn: Connection) -> None:
        while True:
            lost = self._read_until_lost(conn)
            self._conn = None
            self._ready.clear()
            if self._closing or not self.reconnect or self.state.gone:
                self._finish(lost)
                return
            reconnected = self._reconnect(lost)
            if reconnected is None:
                return
            conn = reconnected

    def _read_until_lost(self, conn: Connection) -> ConnectionClosed:
        try:
            while True:
                event = parse_event(conn.recv(timeout=None))
                with self._lock:
                    self.state.event(event)
                self._events.put(event)
        except ConnectionClosed as exc:
            return exc
        except OpenSocketError as exc:  # a hub sending garbage: treat as a lost link
            conn.close(CloseCode.PROTOCOL_ERROR, "bad chat event")
            return ConnectionClosedError(CloseCode.PROTOCOL_ERROR, str(exc))

    def _reconnect(self, lost: ConnectionClosed) -> Connection | None:
        deadline = time.monotonic() + self._give_up
        delay, most = self._backoff
        self.reconnects += 1
        safe_call(self.on_reconnecting, lost)
        last: BaseException = lost
        while time.monotonic() < deadline and not self._closing:
            try:
                conn = self._open()
            except ConnectionRejected as exc:
                self._finish(exc)  # the hub answers but refuses us: retrying will not help
                return None
            except RETRYABLE as exc:
                last = exc
            except OpenSocketError as exc:  # TLS refused, bad options: retrying will not help
                self._finish(exc)
                return None
            else:
                self._events.put(self.welcome)
                return conn
            if self._stop.wait(min(delay, max(0.0, deadline - time.monotonic()))):
                break
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
            self._events.put(_END)
        else:
            self._events.put(exc)
