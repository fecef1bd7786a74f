"""The full-screen chat client (prompt_toolkit): ``opensocket chat URL --nick NAME``.

Two parts. ``ChatView`` is plain state with no terminal: it follows the hub's events (rooms,
members, topics, the connection's state), keeps the scrollback, and renders everything as
prompt_toolkit formatted text (``rows`` wraps the message pane to a width and scroll
position). ``build_app`` lays it out (title bar, messages, rooms and members on the right,
status bar, input line) and binds the keys; ``run_tui`` connects the view to a ChatClient:
events in, typed lines out through the command parser line mode uses (``CommandLine``).

Everything a peer (or the hub) sends passes ``safe`` before it is stored, so no nick, topic
or message can put a control character or an escape sequence on the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

from prompt_toolkit.application import Application, get_app
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.formatted_text.utils import fragment_list_width
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import (
    BufferControl,
    ConditionalContainer,
    FormattedTextControl,
    HSplit,
    Layout,
    UIContent,
    UIControl,
    VSplit,
    Window,
)
from prompt_toolkit.layout.processors import BeforeInput
from prompt_toolkit.output import Output
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth

from ..aio.chat_client import ChatClient, room_key
from ..chat.commands import nick_key
from ..chat.events import (
    Action,
    ErrorEvent,
    Event,
    History,
    Joined,
    Kicked,
    Left,
    Message,
    NickChanged,
    Notice,
    Pong,
    Private,
    QuitNotice,
    RoomInfo,
    RoomList,
    TopicInfo,
    Welcome,
    WhoList,
)
from ..errors import ConnectionClosed, OpenSocketError
from .chat import CommandLine, LineError, clean

__all__ = ["MIN_SIDE_COLUMNS", "ChatView", "Line", "Room", "build_app", "run_tui", "safe", "wrap"]

Fragments = StyleAndTextTuples
State = Literal["connecting", "connected", "reconnecting", "lost"]
T = TypeVar("T")

SCROLLBACK: Final = 5000  # lines kept
MIN_SIDE_COLUMNS: Final = 60  # narrower terminals hide the rooms/members pane
SIDE_WIDTH: Final = 22
STAMP_WIDTH: Final = 6  # "12:34 ": wrapped rows start under the text
NICK_COLORS: Final = 6
KEYS_HELP: Final = (
    "Tab/Ctrl-N next room, Shift-Tab/Ctrl-P previous, Alt-1..9 room N, PageUp/PageDown "
    "scroll, Ctrl-D quit; commands: /join /leave /nick /msg /me /who /rooms /topic /quit"
)
STYLE: Final = Style.from_dict(
    {
        "bar": "bg:#303030 #d0d0d0",
        "bar.room": "bold #ffd75f",
        "time": "#808080",
        "tag": "#808080",
        "tag.current": "bold #ffd75f",
        "notice": "#8a8a8a",
        "history": "#8a8a8a",
        "error": "bold #ff5f5f",
        "good": "#5fd75f",
        "private": "#d787d7",
        "action": "#5fafaf",
        "mention": "bold #ffaf5f",
        "nick.self": "bold #5fd75f",
        "nick.0": "#5fafff",
        "nick.1": "#d7af5f",
        "nick.2": "#af87ff",
        "nick.3": "#5fd7af",
        "nick.4": "#ff87af",
        "nick.5": "#87d7ff",
        "side.head": "bold",
        "side.current": "reverse bold",
        "unread": "bold #ffd75f",
        "dim": "#6c6c6c",
        "sep": "#444444",
        "prompt": "bold #5fafff",
        "state.connected": "bold #5fd75f",
        "state.connecting": "bold #ffd75f",
        "state.reconnecting": "bold #ffd75f",
        "state.lost": "bold #ff5f5f",
    }
)


def safe(item: T) -> T:
    """A copy of an event (or a RoomInfo) with every string ``clean``: what the view stores."""
    if isinstance(item, str):
        return clean(item)  # type: ignore[return-value]
    if isinstance(item, tuple):
        return tuple(safe(v) for v in item)  # type: ignore[return-value]
    if not isinstance(item, Event | RoomInfo):
        return item
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(item):
        value = getattr(item, f.name)
        new = clean(value, newlines=True) if f.name == "text" else safe(value)
        if new is not value and new != value:
            changes[f.name] = new
    return dataclasses.replace(item, **changes) if changes else item


def wrap(fragments: Fragments, width: int, indent: int = 0) -> list[Fragments]:
    """Break styled text into rows of at most ``width`` cells (at a space when one is near,
    and at every ``\\n``), rows after the first indented; wide characters count two cells."""
    width = max(width, 1)
    pad = [("", " ", 1)] * (indent if indent * 2 <= width else 0)
    rows: list[list[tuple[str, str, int]]] = []
    row: list[tuple[str, str, int]] = []
    col = 0
    space = -1  # where the row may break
    for fragment in fragments:
        style, text = fragment[0], fragment[1]
        for ch in text:
            if ch == "\n":
                rows.append(row)
                row, col, space = list(pad), len(pad), -1
                continue
            w = get_cwidth(ch)
            if col + w > width and len(row) > len(pad):
                cut = space > len(pad)
                carry = pad + row[space + 1 :] if cut else list(pad)
                rows.append(row[: space + 1] if cut else row)
                row, col, space = carry, sum(c[2] for c in carry), -1
            row.append((style, ch, w))
            col += w
            if ch == " ":
                space = len(row) - 1
    rows.append(row)
    return [_merge(r) for r in rows]


def _merge(row: list[tuple[str, str, int]]) -> Fragments:
    out: Fragments = []
    for style, ch, _ in row:
        if out and out[-1][0] == style:
            out[-1] = (style, out[-1][1] + ch)
        else:
            out.append((style, ch))
    return out


@dataclass(frozen=True, slots=True)
class Line:
    """One entry of the scrollback: ``room`` is the hub's spelling, None for no room."""

    seq: int
    stamp: str
    room: str | None
    body: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Room:
    """A room we are in (``joined``) or are joining, as the side pane shows it."""

    name: str
    joined: bool = False
    topic: str = ""
    unread: int = 0
    members: dict[str, str] = field(default_factory=dict)  # nick key -> nick
    seen: float = 0.0  # the newest message shown: a rejoin's history repeats no older one


class ChatView:
    """What the full-screen client shows, without a terminal: feed it events, ask for text.

    ``room`` (the current room) is also the ``Focus`` of the command parser, so /join and
    /leave move it as they do in line mode.
    """

    def __init__(self, nick: str, url: str, room: str | None = None) -> None:
        self.nick = nick
        self.url = url
        self.server = ""
        self.state: State = "connecting"
        self.lost_reason = ""
        self.rooms: dict[str, Room] = {}  # room key -> Room, in the order we joined
        self.lines: deque[Line] = deque(maxlen=SCROLLBACK)
        self.offset = 0  # rows scrolled up from the bottom
        self.page = 10  # the message pane's height at the last render
        self.width = 80  # and its width
        self._current: str | None = None
        self._seq = 0
        self._wrapped: dict[tuple[int, int, bool], list[Fragments]] = {}
        self.room = room

    # ---- the current room --------------------------------------------------------------

    @property
    def room(self) -> str | None:
        """The current room (where plain lines go), as the hub spells it."""
        return self.rooms[self._current].name if self._current in self.rooms else None

    @room.setter
    def room(self, name: str | None) -> None:
        if name is None:
            self._current = None
            return
        key = room_key(name)
        self.rooms.setdefault(key, Room(clean(name.removeprefix("#")))).unread = 0
        self._current = key

    def switch(self, step: int) -> None:
        """Make the next (``step`` 1) or previous (-1) room current."""
        keys = list(self.rooms)
        if not keys:
            return
        at = keys.index(self._current) if self._current in keys else -1
        self.room = self.rooms[keys[(at + step) % len(keys)]].name

    def select(self, number: int) -> None:
        """Make room ``number`` (1 = the first in the side pane) current."""
        rooms = list(self.rooms.values())
        if 1 <= number <= len(rooms):
            self.room = rooms[number - 1].name

    def forget_pending(self, joining: Sequence[str]) -> None:
        """Drop rooms we are not in and no longer joining (the hub refused the join)."""
        keep = {room_key(r) for r in joining}
        for key in [k for k, r in self.rooms.items() if not r.joined and k not in keep]:
            self._drop(key)

    # ---- scrolling ---------------------------------------------------------------------

    def scroll(self, pages: int) -> None:
        """Scroll up (``pages`` > 0) or down; the top is clamped when rendering."""
        self.offset = max(0, self.offset + pages * max(1, self.page - 2))

    # ---- what happens ------------------------------------------------------------------

    def event(self, event: Event, now: float) -> None:
        """Follow one event from the hub (made ``safe`` first)."""
        event = safe(event)
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event, now)

    def note(self, text: str, now: float, style: str = "class:notice") -> None:
        """A line of our own (help, errors of the command line)."""
        self._add(None, now, [(style, clean(text))])

    def error(self, text: str, now: float) -> None:
        """A command line error."""
        self.note("! " + text, now, "class:error")

    def reconnecting(self, now: float) -> None:
        """The connection is lost and the client is trying again: rooms wait for a rejoin."""
        self.state = "reconnecting"
        for room in self.rooms.values():
            room.joined = False
            room.members.clear()
        self.note("! connection lost: reconnecting...", now, "class:error")

    def lost(self, reason: str, now: float) -> None:
        """The connection is gone for good."""
        self.state = "lost"
        self.lost_reason = clean(reason)
        for room in self.rooms.values():
            room.joined = False
            room.members.clear()
        self.note(f"! {self.lost_reason} (Ctrl-D or /quit to exit)", now, "class:error")

    def mine(self, nick: str) -> bool:
        """Is ``nick`` us?"""
        return nick_key(nick) == nick_key(self.nick)

    def _add(
        self, room: str | None, ts: float, body: Sequence[tuple[str, str]], unread: bool = False
    ) -> None:
        self._seq += 1
        line = Line(self._seq, time.strftime("%H:%M", time.localtime(ts)), room, tuple(body))
        self.lines.append(line)
        if room is not None and unread:
            target = self.rooms.get(room_key(room))
            if target is not None and room_key(room) != self._current:
                target.unread += 1
        if self.offset:  # keep what the reader is looking at in place
            self.offset += len(self._rows_of(line, self.width))

    def _drop(self, key: str) -> None:
        self.rooms.pop(key, None)
        if self._current == key:
            self._current = next(iter(self.rooms), None)

    def _nick(self, nick: str) -> tuple[str, str]:
        if self.mine(nick):
            return ("class:nick.self", nick)
        return (f"class:nick.{zlib.crc32(nick_key(nick).encode()) % NICK_COLORS}", nick)

    def _members(self) -> list[dict[str, str]]:
        return [r.members for r in self.rooms.values()]

    def on_welcome(self, e: Welcome, now: float) -> None:
        again = bool(self.server)
        self.nick, self.server, self.state = e.nick, e.server, "connected"
        verb = "reconnected to" if again else "connected to"
        rejoin = "; rejoining your rooms" if again and self.rooms else ""
        self._add(None, now, [("class:good", f"* {verb} {e.server} as {e.nick}{rejoin}")])
        if e.motd and not again:
            self._add(None, now, [("class:notice", f"* {e.motd}")])

    def on_joined(self, e: Joined, now: float) -> None:
        key = room_key(e.room)
        if self.mine(e.nick):
            room = self.rooms.setdefault(key, Room(e.room))
            room.name, room.joined = e.room, True
            if self._current is None:
                self._current = key
        if key in self.rooms:
            self.rooms[key].members[nick_key(e.nick)] = e.nick
        self._add(e.room, e.ts, [self._nick(e.nick), ("class:notice", " joined")])

    def on_left(self, e: Left, now: float) -> None:
        key = room_key(e.room)
        if self.mine(e.nick):
            self._drop(key)
        elif key in self.rooms:
            self.rooms[key].members.pop(nick_key(e.nick), None)
        why = f" ({e.reason})" if e.reason else ""
        self._add(e.room, e.ts, [self._nick(e.nick), ("class:notice", f" left{why}")])

    def on_nick(self, e: NickChanged, now: float) -> None:
        for members in self._members():
            if members.pop(nick_key(e.old), None) is not None:
                members[nick_key(e.new)] = e.new
        if self.mine(e.old):
            self.nick = e.new
        body = [self._nick(e.old), ("class:notice", " is now "), self._nick(e.new)]
        self._add(None, e.ts, body)

    def on_quit(self, e: QuitNotice, now: float) -> None:
        for members in self._members():
            members.pop(nick_key(e.nick), None)
        why = f" ({e.reason})" if e.reason else ""
        self._add(None, e.ts, [self._nick(e.nick), ("class:notice", f" quit{why}")])

    def on_message(self, e: Message | Action, now: float, history: bool = False) -> None:
        text_style = "class:history" if history else ""
        if not self.mine(e.nick) and nick_key(self.nick) in nick_key(e.text):
            text_style = "class:mention"
        if isinstance(e, Action):
            body = [("class:action", "* "), self._nick(e.nick), (text_style, " " + e.text)]
        else:
            nick_style, nick = self._nick(e.nick)
            body = [(nick_style, f"<{nick}>"), (text_style, " " + e.text)]
        room = self.rooms.get(room_key(e.room))
        if room is not None:
            room.seen = max(room.seen, e.ts)
        self._add(e.room, e.ts, body, unread=not history)

    def on_private(self, e: Private, now: float) -> None:
        head = f"[private {e.nick} -> {e.to}]"
        self._add(None, e.ts, [("class:private", head), ("", " " + e.text)])

    def on_rooms(self, e: RoomList, now: float) -> None:
        names = ", ".join(f"{r.name} ({r.members})" for r in e.rooms) or "none"
        self._add(None, now, [("class:notice", f"* rooms: {names}")])

    def on_who(self, e: WhoList, now: float) -> None:
        room = self.rooms.get(room_key(e.room))
        if room is not None:
            room.members = {nick_key(n): n for n in e.nicks}
        self._add(e.room, now, [("class:notice", f"here: {', '.join(e.nicks)}")])

    def on_topic(self, e: TopicInfo, now: float) -> None:
        room = self.rooms.get(room_key(e.room))
        if room is not None:
            room.topic = e.topic
        by = f" (set by {e.by})" if e.by else ""
        self._add(e.room, e.ts or now, [("class:notice", f"topic: {e.topic or '(none)'}{by}")])

    def on_history(self, e: History, now: float) -> None:
        room = self.rooms.get(room_key(e.room))
        seen = room.seen if room is not None else 0.0
        for message in e.messages:
            if message.ts > seen:
                self.on_message(message, now, history=True)

    def on_error(self, e: ErrorEvent, now: float) -> None:
        self.note(f"! {e.message} ({e.code})", now, "class:error")

    def on_notice(self, e: Notice, now: float) -> None:
        self._add(None, e.ts, [("class:notice", f"* notice: {e.text}")])

    def on_kicked(self, e: Kicked, now: float) -> None:
        if e.room is not None:
            self._drop(room_key(e.room))
        where = f" from {e.room}" if e.room else " from the server"
        why = f" ({e.reason})" if e.reason else ""
        self.note(f"! kicked by {e.by}{where}{why}", now, "class:error")

    def on_pong(self, e: Pong, now: float) -> None:
        self.note(f"* pong {e.data or ''}".rstrip(), now)

    # ---- rendering ---------------------------------------------------------------------

    def rows(self, width: int, height: int) -> list[Fragments]:
        """The message pane: ``height`` rows of ``width`` cells, the newest at the bottom
        (``offset`` rows up); clamps ``offset`` at the top of the scrollback."""
        self.width, self.page = width, height
        need = height + self.offset
        chunks: list[list[Fragments]] = []
        count = 0
        for line in reversed(self.lines):
            if count >= need:
                break
            chunk = self._rows_of(line, width)
            chunks.append(chunk)
            count += len(chunk)
        rows = [row for chunk in reversed(chunks) for row in chunk]
        if len(rows) < need:
            self.offset = max(0, len(rows) - height)
        end = len(rows) - self.offset
        shown = rows[max(0, end - height) : end]
        return [[] for _ in range(height - len(shown))] + shown

    def _rows_of(self, line: Line, width: int) -> list[Fragments]:
        current = line.room is not None and room_key(line.room) == self._current
        key = (line.seq, width, current)
        rows = self._wrapped.get(key)
        if rows is None:
            if len(self._wrapped) > 4 * SCROLLBACK:
                self._wrapped.clear()
            head: Fragments = [("class:time", line.stamp + " ")]
            if line.room is not None:
                head.append(("class:tag.current" if current else "class:tag", f"[{line.room}] "))
            rows = self._wrapped[key] = wrap([*head, *line.body], width, STAMP_WIDTH)
        return rows

    def side(self) -> Fragments:
        """The side pane: our rooms (numbered for Alt-N, current marked), then who is in
        the current room."""
        out: Fragments = [("class:side.head", " Rooms\n")]
        if not self.rooms:
            out.append(("class:dim", "  /join ROOM\n"))
        for number, (key, room) in enumerate(self.rooms.items(), 1):
            label = f"{number if number < 10 else ' '} {room.name}"
            if key == self._current:
                out.append(("class:side.current", f">{label}"))
            else:
                out.append(("" if room.joined else "class:dim", f" {label}"))
            if not room.joined:
                out.append(("class:dim", " ..."))
            if room.unread:
                out.append(("class:unread", f" ({room.unread})"))
            out.append(("", "\n"))
        current = self.rooms.get(self._current or "")
        if current is None:
            return out
        out.append(("class:side.head", f"\n {len(current.members)} in {current.name}\n"))
        for nick in sorted(current.members.values(), key=str.lower):
            out += [("", "  "), self._nick(nick), ("", "\n")]
        return out

    def title(self) -> Fragments:
        """The top bar: the current room and its topic."""
        current = self.rooms.get(self._current or "")
        if current is None:
            return [("class:bar", " no room: /join ROOM")]
        topic = current.topic or "(no topic)"
        return [("class:bar.room", f" [{current.name}] "), ("class:bar", topic)]

    def status(self, width: int) -> Fragments:
        """The bottom bar: nick, the connection's state, the server (when it fits), and how
        far the pane is scrolled (or how to quit) on the right."""
        state = "reconnecting..." if self.state == "reconnecting" else self.state
        out: Fragments = [
            ("class:nick.self", f" {self.nick} "),
            (f"class:state.{self.state}", f" {state} "),
        ]
        server = f" {self.server} at {self.url}" if self.server else f" {self.url}"
        hint = f"scrolled up {self.offset} rows: PageDown " if self.offset else "Ctrl-D quit "
        hint_style = "class:unread" if self.offset else "class:dim"
        room = width - fragment_list_width(out) - get_cwidth(hint)
        if get_cwidth(server) < room:
            out.append(("", server))
            room -= get_cwidth(server)
        if room > 0 or self.offset:
            out += [("", " " * max(0, room)), (hint_style, hint)]
        return out

    def prompt(self) -> Fragments:
        """What stands before the input line."""
        return [("class:prompt", f"[{self.room}] " if self.room else "> ")]


_HANDLERS: Final[dict[type[Event], Callable[[ChatView, Any, float], None]]] = {
    Welcome: ChatView.on_welcome,
    Joined: ChatView.on_joined,
    Left: ChatView.on_left,
    NickChanged: ChatView.on_nick,
    QuitNotice: ChatView.on_quit,
    Message: ChatView.on_message,
    Action: ChatView.on_message,
    Private: ChatView.on_private,
    RoomList: ChatView.on_rooms,
    WhoList: ChatView.on_who,
    TopicInfo: ChatView.on_topic,
    History: ChatView.on_history,
    ErrorEvent: ChatView.on_error,
    Notice: ChatView.on_notice,
    Kicked: ChatView.on_kicked,
    Pong: ChatView.on_pong,
}


# ---- the screen -------------------------------------------------------------------------------


class _Messages(UIControl):
    """The message pane: the view wraps and scrolls, this only hands rows to the window."""

    def __init__(self, view: ChatView) -> None:
        self.view = view

    def create_content(self, width: int, height: int) -> UIContent:
        rows = self.view.rows(width, height)
        return UIContent(get_line=lambda i: rows[i], line_count=len(rows), show_cursor=False)

    def is_focusable(self) -> bool:
        return False


def _columns() -> int:
    return get_app().output.get_size().columns


def build_app(
    view: ChatView,
    submit: Callable[[str], None],
    leave: Callable[[], None],
    *,
    input: Input | None = None,
    output: Output | None = None,
) -> Application[str | None]:
    """The full-screen application over ``view``: ``submit`` gets each typed line,
    ``leave`` is called on Ctrl-C (and Ctrl-D on an empty line)."""

    def accept(buffer: Buffer) -> bool:
        for line in buffer.text.splitlines():  # a paste of several lines: one by one
            if line.strip():
                submit(line)
        view.offset = 0
        return False  # clear the input line

    buffer = Buffer(multiline=False, history=InMemoryHistory(), accept_handler=accept)
    side = Window(FormattedTextControl(view.side), width=SIDE_WIDTH, wrap_lines=False)
    body = VSplit(
        [
            Window(_Messages(view)),
            ConditionalContainer(
                VSplit([Window(width=1, char="\u2502", style="class:sep"), side]),
                filter=Condition(lambda: _columns() >= MIN_SIDE_COLUMNS),
            ),
        ]
    )
    root = HSplit(
        [
            Window(FormattedTextControl(view.title), height=1, style="class:bar"),
            body,
            Window(
                FormattedTextControl(lambda: view.status(_columns())),
                height=1,
                style="class:bar",
            ),
            Window(
                BufferControl(buffer, input_processors=[BeforeInput(view.prompt)]),
                height=1,
            ),
        ]
    )
    app: Application[str | None] = Application(
        layout=Layout(root, focused_element=buffer),
        key_bindings=_keys(view, buffer, leave),
        style=STYLE,
        full_screen=True,
        input=input,
        output=output,
    )
    return app


def _keys(view: ChatView, buffer: Buffer, leave: Callable[[], None]) -> KeyBindings:
    keys = KeyBindings()

    def on(*names: str, call: Callable[[], None], **kw: Any) -> None:
        def handler(event: KeyPressEvent) -> None:
            call()

        keys.add(*names, **kw)(handler)

    for name in ("tab", "c-n"):
        on(name, call=lambda: view.switch(1))
    for name in ("s-tab", "c-p"):
        on(name, call=lambda: view.switch(-1))
    for number in range(1, 10):
        on("escape", str(number), call=lambda n=number: view.select(n))  # type: ignore[misc]
    on("pageup", call=lambda: view.scroll(1))
    on("pagedown", call=lambda: view.scroll(-1))
    on("c-c", call=leave)
    on("c-d", call=leave, filter=Condition(lambda: not buffer.text))
    return keys


# ---- running it -------------------------------------------------------------------------------


def _stop(app: Application[str | None], result: str | None) -> None:
    if app.future is not None and not app.future.done():
        app.exit(result=result)


async def run_tui(
    client: ChatClient,
    rooms: Sequence[str],
    *,
    input: Input | None = None,
    output: Output | None = None,
    view: ChatView | None = None,
) -> int:
    """Run the full-screen client on a connected ``client`` until /quit, Ctrl-C or Ctrl-D;
    0, or 1 when the connection was lost for good (the reason goes to stderr).

    ``input``/``output`` default to the terminal; ``view`` to a new one (tests look at it).
    """
    if view is None:
        view = ChatView(client.current_nick, client.url, rooms[0] if rooms else None)
    if client.welcome is not None:
        view.event(client.welcome, time.time())
    view.note(KEYS_HELP, time.time())
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    app = build_app(view, lines.put_nowait, lambda: _stop(app, None), input=input, output=output)

    def report(message: str) -> None:
        view.error(message, time.time())
        app.invalidate()

    typing = asyncio.ensure_future(
        CommandLine(client, view).run(lines, report, (LineError, ConnectionClosed))
    )
    typing.add_done_callback(lambda t: _stop(app, _reason(t, view)))
    tasks = [typing]

    def reconnecting(lost: ConnectionClosed) -> None:
        view.reconnecting(time.time())
        app.invalidate()

    client.on_reconnecting = reconnecting
    pump = asyncio.ensure_future(_pump(client, view, app))
    reason: str | None = None
    with _signals(lambda: _stop(app, None)):
        try:
            reason = await app.run_async(handle_sigint=False)  # ours: a clean quit
        except (EOFError, OSError):  # the terminal is gone (hung up): quit all the same
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if view.state == "lost":
                await client.close()
            else:
                await client.quit(reason)
            await asyncio.gather(pump, return_exceptions=True)
    if view.state == "lost":
        with contextlib.suppress(OSError):  # stderr may be the terminal that went away
            print(f"opensocket chat: {view.lost_reason}", file=sys.stderr)
        return 1
    return 0


def _reason(typing: asyncio.Future[str | None], view: ChatView) -> str | None:
    """The quit reason once the command line ends (an unexpected error: told, no reason)."""
    if typing.cancelled():
        return None
    error = typing.exception()
    if error is not None:
        view.lost(f"the command line failed: {error!r}", time.time())
        return None
    return typing.result()


async def _pump(client: ChatClient, view: ChatView, app: Application[str | None]) -> None:
    """Hub events into the view until the client ends."""
    try:
        async for event in client:
            view.event(event, time.time())
            if isinstance(event, ErrorEvent):
                view.forget_pending(client.joined_rooms)
            app.invalidate()
    except OpenSocketError as exc:
        view.lost(str(exc), time.time())
        app.invalidate()


@contextlib.contextmanager
def _signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP (the terminal closed) leave like Ctrl-C: quit, terminal
    restored."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, stop)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
