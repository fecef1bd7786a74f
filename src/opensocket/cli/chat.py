"""``opensocket chat URL --nick NAME``: the chat client.

In a terminal it is a full-screen client (``cli/chat_tui.py``): messages, rooms and members,
a status bar and an input line. ``--plain`` is line mode for scripts and pipes: stdin lines
in, one event per line out (``--json``: one JSON object per line). Both modes share one
command parser (``CommandLine``): ``/join /leave /nick /msg /me /who /rooms /topic /quit``,
anything else is said in the current room.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .. import aio
from ..address import Address, parse_address
from ..aio.chat_client import ChatClient, room_key
from ..chat.commands import valid_nick, valid_room
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
    RoomList,
    TopicInfo,
    Welcome,
    WhoList,
)
from ..errors import AddressError, ConfigError, ConnectionClosed, OpenSocketError
from ._common import (
    add_tls_args,
    check_positive,
    tls_from,
)

__all__ = [
    "CLIENT_EPILOG",
    "HELPS",
    "LINE_COMMANDS",
    "CommandLine",
    "Focus",
    "LineError",
    "clean",
    "configure",
    "execute",
]

DEFAULT_LISTEN: Final = "tcp://127.0.0.1:7070"
HELPS: Final = {
    "chat": "chat client: full-screen in a terminal; --plain reads stdin, prints events",
}


def configure(parser: argparse.ArgumentParser, name: str = "chat") -> None:
    """The options of the client, ``chat URL``."""
    configure_client(parser)


def execute(args: argparse.Namespace) -> int:
    """Run the client until /quit, the end of stdin, or a lost connection."""
    return execute_client(args)


# ---- the client: opensocket chat URL --nick NAME [--plain] ----------------------------------

CLIENT_EPILOG: Final = f"""\
examples:
  opensocket chat {DEFAULT_LISTEN} --nick alice --room lobby
  opensocket chat tls://chat.example:7443 --nick alice --room lobby --tls-ca ca.pem
  echo "hello from cron" | opensocket chat tcp://chat.lan:7070 --nick cron --room ops --plain
  opensocket chat unix:///run/chat.sock --nick bot --room lobby --plain --json | jq .

In a terminal the client is full-screen: messages of all your rooms (tagged [room], the
current room's tag highlighted), your rooms and the current room's members on the right
(hidden below 60 columns), a status bar (server, nick, connected / reconnecting / lost)
and an input line. Keys:
  Enter send the line     Tab / Ctrl-N next room   Shift-Tab / Ctrl-P previous room
  Alt-1..Alt-9 room N     PageUp / PageDown scroll  Up / Down earlier lines you typed
  Ctrl-C, or Ctrl-D on an empty line: quit (like /quit)

Line mode (--plain) reads stdin and prints events one per line (one JSON object per line
with --json); use it in scripts and pipes. In both modes a line starting with / is a
command, anything else is said in the current room (the first --room, then the last /join):
  /join ROOM [PASSWORD]   /leave [ROOM] [REASON]   /nick NAME   /msg NICK TEXT   /me TEXT
  /who [ROOM]   /rooms   /topic [TEXT]   /quit [REASON]        (//text says "/text")
A lost connection is re-established (rooms rejoined) unless --no-reconnect.
Exit status: 0 after /quit or the end of stdin, 1 connection lost for good (or refused by the
hub: nick taken, bad password, banned), 2 bad options (or no terminal without --plain).
"""
LINE_COMMANDS: Final = (
    "join", "leave", "nick", "msg", "me", "who", "rooms", "topic", "quit", "help"
)  # fmt: skip
COMMAND_HELP: Final = (
    "/join ROOM [PASSWORD]  /leave [ROOM] [REASON]  /nick NAME  /msg NICK TEXT  /me TEXT  "
    "/who [ROOM]  /rooms  /topic [TEXT]  /quit [REASON]  (//text says /text)"
)


def configure_client(parser: argparse.ArgumentParser) -> None:
    """The options of the client, ``chat URL``."""
    parser.epilog = CLIENT_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "url",
        nargs="?",
        default=DEFAULT_LISTEN,
        metavar="URL",
        help=f"the hub's native address: tcp://, tls://, unix:// (default: {DEFAULT_LISTEN})",
    )
    parser.add_argument("--nick", required=True, help="your nick (1-24 chars, a letter first)")
    parser.add_argument(
        "--room", action="append", default=[], metavar="ROOM", help="join ROOM (repeatable)"
    )
    parser.add_argument("--password", help="the server password, if the hub has one")
    parser.add_argument("--plain", action="store_true", help="line mode: stdin in, events out")
    parser.add_argument("--json", action="store_true", help="with --plain: one JSON event a line")
    parser.add_argument(
        "--no-reconnect", action="store_true", help="exit 1 at once when the connection is lost"
    )
    parser.add_argument(
        "--give-up",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="stop trying to reconnect after this long (default: 30)",
    )
    add_tls_args(parser, server=False)


def execute_client(args: argparse.Namespace) -> int:
    """Run the client (full-screen, or line mode with --plain) until /quit or a lost link."""
    try:
        return _execute(args)
    except (AddressError, ConfigError):
        raise
    except OpenSocketError as exc:
        # The message may quote the hub (a close reason, a refusal), and main() prints it.
        text = str(exc)
        if clean(text) == text:
            raise
        raise OpenSocketError(clean(text)) from exc


def _execute(args: argparse.Namespace) -> int:
    addr = _check(args)
    if args.plain:
        return aio.run(_plain(args, addr))
    if args.json:
        raise ConfigError("--json is for line mode: add --plain")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise ConfigError(
            "the full-screen chat client needs a terminal (stdin and stdout); in scripts "
            f"and pipes use line mode: opensocket chat {args.url} --nick {args.nick} --plain"
        )
    from .chat_tui import run_tui  # prompt_toolkit is loaded only for the full-screen client

    async def full_screen() -> int:
        return await run_tui(await _connect(args, addr), args.room)

    return aio.run(full_screen())


def _check(args: argparse.Namespace) -> Address:
    check_positive(args.give_up, "--give-up")
    addr = parse_address(args.url)
    if addr.scheme not in ("tcp", "tls", "unix"):
        raise ConfigError(f"{args.url}: use tcp://, tls:// or unix:// (the hub's native address)")
    for room in args.room:
        if not valid_room(room, 32):
            raise ConfigError(f"--room {room}: a room is 1-32 letters, digits, _ . - (a # allowed)")
    if not valid_nick(args.nick, 24):
        raise ConfigError(
            f"--nick {args.nick}: a nick is 1-24 characters, a letter first, then letters, "
            "digits or _-[]{}|^`"
        )
    return addr


async def _connect(args: argparse.Namespace, addr: Address) -> ChatClient:
    return await ChatClient.connect(
        addr,
        nick=args.nick,
        password=args.password,
        rooms=args.room,
        tls=tls_from(args, server=False),
        reconnect=not args.no_reconnect,
        give_up=args.give_up,
    )


async def _plain(args: argparse.Namespace, addr: Address) -> int:
    client = await _connect(args, addr)
    show = _json_line if args.json else _text_line
    if client.welcome is not None:
        _print(show(client.welcome))
    events = asyncio.ensure_future(_print_events(client, show))
    commands = CommandLine(client, CurrentRoom(args.room[0] if args.room else None))
    typing = asyncio.ensure_future(commands.run(_stdin_lines(), _complain))
    await asyncio.wait((events, typing), return_when=asyncio.FIRST_COMPLETED)
    error: BaseException | None = None
    if typing.done():
        error = typing.exception()
        if error is None:
            await client.quit(typing.result())
        else:
            await client.close()
    else:
        typing.cancel()
        await client.close()
    try:
        await events
    except ConnectionClosed as exc:
        error = exc
    if error is not None and not isinstance(error, ConnectionClosed):
        raise error
    if error is not None:
        print(f"opensocket chat: {clean(str(error))}", file=sys.stderr)  # has the hub's reason
        return 1
    if not typing.done() or typing.cancelled():
        print("opensocket chat: the hub closed the connection", file=sys.stderr)
        return 1
    return 0


async def _print_events(client: ChatClient, show: Callable[[Event], str]) -> None:
    async for event in client:
        _print(show(event))


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _complain(message: str) -> None:
    print(f"opensocket chat: {clean(message)}", file=sys.stderr, flush=True)


def _stdin_lines() -> asyncio.Queue[str | None]:
    """stdin lines from a thread (works for pipes, files and terminals alike); None at EOF."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    fd = sys.stdin.fileno()

    def put(line: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: we are exiting anyway
            loop.call_soon_threadsafe(lines.put_nowait, line)

    def read() -> None:
        # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader holds its
        # lock, and the interpreter aborts when it finds that lock taken at exit
        pending = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(fd, 65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    put(raw.decode("utf-8", "replace").rstrip("\r"))
        if pending:
            put(pending.decode("utf-8", "replace").rstrip("\r"))
        put(None)

    # a daemon thread: a read blocked on a terminal must not keep the process alive
    threading.Thread(target=read, name="chat-stdin", daemon=True).start()
    return lines


# ---- the command parser both modes share ----------------------------------------------------


class Focus(Protocol):
    """Where the current room lives: line mode keeps a ``CurrentRoom``, the full-screen
    client its view (which also moves it on Tab, or when we leave the room)."""

    room: str | None


@dataclass(slots=True)
class CurrentRoom:
    """The current room of line mode."""

    room: str | None


class LineError(Exception):
    """A line the client cannot act on (reported; the session goes on)."""


class CommandLine:
    """Turns input lines into client commands (no terminal here: errors go to ``report``)."""

    def __init__(self, client: ChatClient, focus: Focus) -> None:
        self.client = client
        self.focus = focus

    async def run(
        self,
        lines: asyncio.Queue[str | None],
        report: Callable[[str], None],
        errors: tuple[type[Exception], ...] = (LineError,),
    ) -> str | None:
        """Act on lines until /quit (return its reason, None for none) or None (end of input);
        ``errors`` are reported and the session goes on (others end it)."""
        while (line := await lines.get()) is not None:
            if not line.strip():
                continue
            try:
                quit_reason = await self.line(line)
            except errors as exc:
                report(str(exc))
                continue
            if quit_reason is not None:
                return quit_reason or None
        return None

    async def line(self, line: str) -> str | None:
        """Act on one line; return the quit reason ("" for none) on /quit, else None."""
        if not line.startswith("/") or line.startswith("//"):
            await self.client.say(self.current(), line[1:] if line.startswith("//") else line)
            return None
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if name not in LINE_COMMANDS:
            raise LineError(f"unknown command /{name}; commands: /" + " /".join(LINE_COMMANDS))
        if name == "quit":
            return rest
        if name == "help":
            raise LineError(COMMAND_HELP)  # reported where errors go, like any answer here
        await getattr(self, "do_" + name)(rest)
        return None

    def current(self) -> str:
        """The current room; LineError when there is none."""
        if self.focus.room is None:
            raise LineError("join a room first: /join ROOM")
        return self.focus.room

    async def do_join(self, rest: str) -> None:
        room, _, password = rest.partition(" ")
        if not room:
            raise LineError("usage: /join ROOM [PASSWORD]")
        await self.client.join(room, password.strip() or None)
        self.focus.room = room

    async def do_leave(self, rest: str) -> None:
        room, _, reason = rest.partition(" ")
        room = room or self.current()
        await self.client.leave(room, reason.strip() or None)
        if self.focus.room is not None and room_key(room) == room_key(self.focus.room):
            others = [r for r in self.client.joined_rooms if room_key(r) != room_key(room)]
            self.focus.room = others[0] if others else None

    async def do_nick(self, rest: str) -> None:
        if not rest:
            raise LineError("usage: /nick NAME")
        await self.client.nick(rest)

    async def do_msg(self, rest: str) -> None:
        to, _, text = rest.partition(" ")
        if not to or not text.strip():
            raise LineError("usage: /msg NICK TEXT")
        await self.client.msg(to, text)

    async def do_me(self, rest: str) -> None:
        if not rest:
            raise LineError("usage: /me TEXT")
        await self.client.me(self.current(), rest)

    async def do_who(self, rest: str) -> None:
        await self.client.who(rest or self.current())

    async def do_rooms(self, rest: str) -> None:
        await self.client.rooms()

    async def do_topic(self, rest: str) -> None:
        await self.client.topic(self.current(), rest or None)


# ---- text for people --------------------------------------------------------------------------

# escape sequences whole (CSI, OSC/DCS/APC strings, two-byte ESC x), so no half of one is left
_ESCAPES: Final = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
# the other C0/C1 controls, and the bidi overrides that would reorder what follows them
_CONTROLS: Final = dict.fromkeys((*range(32), *range(127, 160))) | {
    **dict.fromkeys((*range(8234, 8239), *range(8294, 8298))),
    0x09: " ",
    0x0A: " ",
    0x0D: " ",
    0x2028: " ",
    0x2029: " ",
}
_LINES: Final = {**_CONTROLS, 0x0A: "\n", 0x2028: "\n", 0x2029: "\n"}


def clean(text: str, *, newlines: bool = False) -> str:
    """``text`` from a peer made safe for a terminal: escape sequences and control characters
    removed, tabs and line breaks turned into spaces (kept as ``\\n`` with ``newlines``)."""
    if text.isprintable():
        return text  # the common case: nothing to strip
    return _ESCAPES.sub("", text).translate(_LINES if newlines else _CONTROLS)


# JSON escapes only U+0000-U+001F: C1 controls (some terminals act on them), bidi controls
# (they reorder what a terminal shows) and the Unicode line separators get \uXXXX too.
_JSON_UNSAFE: Final = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _json_line(event: Event) -> str:
    text = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"))
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _text_line(event: Event) -> str:
    """One event as a line of text for people (and grep); peers' text made safe."""
    if isinstance(event, History):
        return "\n".join(map(_replayed, event.messages)) or f"[{event.room}] (no history)"
    text = _TEXT.get(type(event))
    return clean(text(event)) if text is not None else _json_line(event)


def _replayed(message: Message | Action) -> str:
    """A line of a room's history, marked with its time so it does not read as said now."""
    room = f"[{message.room}] "
    when = time.strftime("%H:%M", time.localtime(message.ts))
    return clean(f"{room}({when} earlier) " + _TEXT[type(message)](message).removeprefix(room))


def _why(reason: str | None) -> str:
    return f" ({reason})" if reason else ""


_TEXT: Final[dict[type[Event], Callable[[Any], str]]] = {
    Welcome: lambda e: f"* connected to {e.server} as {e.nick}" + (f": {e.motd}" if e.motd else ""),
    Joined: lambda e: f"[{e.room}] * {e.nick} joined",
    Left: lambda e: f"[{e.room}] * {e.nick} left{_why(e.reason)}",
    NickChanged: lambda e: f"* {e.old} is now {e.new}",
    QuitNotice: lambda e: f"* {e.nick} quit{_why(e.reason)}",
    Message: lambda e: f"[{e.room}] <{e.nick}> {e.text}",
    Action: lambda e: f"[{e.room}] * {e.nick} {e.text}",
    Private: lambda e: f"[private] <{e.nick} -> {e.to}> {e.text}",
    RoomList: lambda e: (
        "* rooms: " + (", ".join(f"{r.name} ({r.members})" for r in e.rooms) or "none")
    ),
    WhoList: lambda e: f"[{e.room}] * here: {', '.join(e.nicks)}",
    TopicInfo: lambda e: (
        f"[{e.room}] * topic: {e.topic or '(none)'}" + (f" (set by {e.by})" if e.by else "")
    ),
    ErrorEvent: lambda e: f"! {e.code}: {e.message}",
    Notice: lambda e: f"* notice: {e.text}",
    Kicked: lambda e: (
        f"! kicked by {e.by}" + (f" from {e.room}" if e.room else "") + _why(e.reason)
    ),
    Pong: lambda e: f"* pong {e.data or ''}".rstrip(),
}
