"""The full-screen chat client: its view without a terminal, its keys over a pipe, the whole
client against a real hub in-process, and the real program in a real terminal (tmux)."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pexpect
import pytest
from prompt_toolkit.application import Application
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.layout import FormattedTextControl
from prompt_toolkit.output import DummyOutput

from opensocket.aio.chat_client import ChatClient
from opensocket.aio.chat_server import ChatServer, serve_chat
from opensocket.chat import ChatOptions
from opensocket.chat.events import (
    Action,
    ErrorEvent,
    Event,
    History,
    Joined,
    Kicked,
    Left,
    Message,
    NickChanged,
    Private,
    QuitNotice,
    RoomInfo,
    RoomList,
    TopicInfo,
    Welcome,
    WhoList,
)
from opensocket.cli import main
from opensocket.cli.chat import _text_line, clean
from opensocket.cli.chat_tui import ChatView, build_app, run_tui, safe, wrap
from opensocket.sync.chat_client import ChatClient as SyncChatClient

WAIT = 10.0
E = TypeVar("E", bound=Event)
NOW = 1_700_000_000.0
HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31mred\x1b[0m\u202eevil\x07\x00\x1bc"


def text(fragments: Any) -> str:
    return "".join(f[1] for f in fragments)


def screen(view: ChatView, width: int = 60, height: int = 8) -> list[str]:
    return [text(row) for row in view.rows(width, height)]


# ---- making peers' text safe -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (
            "plain text, unicode \u00e9\u4e2d\U0001f600",
            "plain text, unicode \u00e9\u4e2d\U0001f600",
        ),
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b[1;2;3;38;5;196mx", "x"),
        ("\x1b]0;window title\x07after", "after"),
        ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x1bP+q544e\x1b\\dcs", "dcs"),
        ("\x9b2J8-bit csi", "8-bit csi"),
        ("\x1bcreset", "reset"),
        ("\x1b(Bcharset", "charset"),
        ("bell\x07nul\x00del\x7fc1\x85", "bellnuldelc1"),
        ("tab\tnew\nline\r\u2028sep", "tab new line  sep"),
        ("\u202eevil\u202c \u2066iso\u2069", "evil iso"),
        ("trailing escape \x1b", "trailing escape "),
        ("unterminated \x1b]0;title", "unterminated "),
    ],
)
def test_clean_strips_escapes_and_controls(raw: str, shown: str) -> None:
    assert clean(raw) == shown
    assert clean(raw).isprintable()
    assert "\x1b" not in clean(raw + raw)


def test_clean_keeps_line_breaks_when_asked() -> None:
    assert clean("one\ntwo\u2029three\x1b[K", newlines=True) == "one\ntwo\nthree"
    ok = "nothing to do here"
    assert clean(ok) is ok  # the fast path returns the same object


def test_safe_cleans_every_string_of_an_event() -> None:
    message = Message(room="lob\x1b[1mby", nick="b\x1b[2Job", text="a\x1b]0;t\x07\nb", ts=1.0)
    assert safe(message) == Message(room="lobby", nick="bob", text="a\nb", ts=1.0)
    history = History(room="r", messages=(message, Action(room="r", nick="x", text=HOSTILE, ts=2)))
    cleaned = safe(history)
    assert cleaned.messages[0].nick == "bob"
    assert "\x1b" not in cleaned.messages[1].text and "red" in cleaned.messages[1].text
    rooms = safe(RoomList(rooms=(RoomInfo(name="a\x07", members=2, topic="\x1b[5m!"),)))
    assert rooms.rooms == (RoomInfo(name="a", members=2, topic="!"),)
    assert safe(WhoList(room="r", nicks=("a\x1b[1m", "b"))).nicks == ("a", "b")
    plain = Joined(room="r", nick="n", ts=1.0)
    assert safe(plain) is plain  # nothing to clean: no copy


def test_line_mode_text_is_safe_too() -> None:
    line = _text_line(Message(room="r", nick="eve", text=HOSTILE + "\nmore", ts=1.0))
    assert line.startswith("[r] <eve> ") and "\x1b" not in line and "\n" not in line
    assert all(ch.isprintable() for ch in line)


def test_line_mode_marks_history_with_its_time() -> None:
    ts = time.mktime((2026, 11, 21, 9, 5, 0, 0, 0, -1))
    history = History(
        room="r",
        messages=(
            Message(room="r", nick="bob", text="hi", ts=ts),
            Action(room="r", nick="eve\x1b[2J", text="waves", ts=ts),
        ),
    )
    assert _text_line(history).split("\n") == [
        "[r] (09:05 earlier) <bob> hi",
        "[r] (09:05 earlier) * eve waves",
    ]
    live = _text_line(Message(room="r", nick="bob", text="hi", ts=ts))
    assert live == "[r] <bob> hi"  # a live line has no time: it was said just now


def test_view_renders_hostile_events_without_escapes() -> None:
    view = joined_view()
    view.event(Message(room="lobby", nick="eve" + HOSTILE, text=HOSTILE, ts=NOW), NOW)
    view.event(TopicInfo(room="lobby", topic=HOSTILE, by="eve"), NOW)
    view.event(ErrorEvent(code="x\x1b[1m", message=HOSTILE), NOW)
    shown = [*screen(view, 200, 20), text(view.side()), text(view.title()), text(view.status(99))]
    for row in shown:
        assert "\x1b" not in row and "\x9b" not in row and "\x07" not in row and "\u202e" not in row


# ---- wrapping --------------------------------------------------------------------------------


def test_wrap_breaks_at_spaces_and_keeps_styles() -> None:
    rows = wrap([("a", "hello "), ("b", "wide world of text")], 12)
    assert [text(r) for r in rows] == ["hello wide ", "world of ", "text"]
    assert rows[0] == [("a", "hello "), ("b", "wide ")]
    assert rows[1] == [("b", "world of ")]


def test_wrap_cuts_long_words_wide_characters_and_line_breaks() -> None:
    assert [text(r) for r in wrap([("", "abcdefghij")], 4)] == ["abcd", "efgh", "ij"]
    # CJK characters take two cells: three fit in 7 cells, never half of one
    assert [text(r) for r in wrap([("", "\u4e2d" * 5)], 7)] == ["\u4e2d" * 3, "\u4e2d" * 2]
    assert [text(r) for r in wrap([("", "one\ntwo")], 20)] == ["one", "two"]
    assert [text(r) for r in wrap([("", "\u4e2d")], 1)] == ["\u4e2d"]  # too wide: shown anyway
    assert wrap([], 10) == [[]]


def test_wrap_indents_continuation_rows() -> None:
    rows = [text(r) for r in wrap([("", "12:00 one two three four")], 14, 6)]
    assert rows == ["12:00 one two ", "      three ", "      four"]
    assert [text(r) for r in wrap([("", "abcdefgh")], 4, 6)] == ["abcd", "efgh"]  # no room


# ---- the view --------------------------------------------------------------------------------


def joined_view(*rooms: str, others: tuple[str, ...] = ("bob",)) -> ChatView:
    view = ChatView("alice", "tcp://127.0.0.1:7070", rooms[0] if rooms else "lobby")
    view.event(Welcome(nick="alice", server="hub", motd="be nice"), NOW)
    for room in rooms or ("lobby",):
        view.event(Joined(room=room, nick="alice", ts=NOW), NOW)
        view.event(WhoList(room=room, nicks=("alice", *others)), NOW)
    return view


def members(view: ChatView, room: str) -> list[str]:
    return sorted(view.rooms[room].members.values())


def test_view_follows_rooms_and_members() -> None:
    view = joined_view("lobby", "dev")
    assert view.state == "connected" and view.server == "hub"
    assert list(view.rooms) == ["lobby", "dev"] and view.room == "lobby"
    assert members(view, "lobby") == ["alice", "bob"]
    view.event(Joined(room="lobby", nick="carol", ts=NOW), NOW)
    view.event(NickChanged(old="bob", new="robert", ts=NOW), NOW)
    assert members(view, "lobby") == ["alice", "carol", "robert"]
    assert members(view, "dev") == ["alice", "robert"]
    view.event(Left(room="lobby", nick="carol", ts=NOW, reason="bye"), NOW)
    view.event(QuitNotice(nick="robert", ts=NOW), NOW)
    assert members(view, "lobby") == ["alice"] and members(view, "dev") == ["alice"]
    view.event(NickChanged(old="alice", new="alicia", ts=NOW), NOW)
    assert view.nick == "alicia" and members(view, "dev") == ["alicia"]
    view.event(Left(room="lobby", nick="alicia", ts=NOW), NOW)  # we left the current room
    assert list(view.rooms) == ["dev"] and view.room == "dev"
    view.event(Kicked(by="op", room="dev", reason="spam"), NOW)
    assert view.rooms == {} and view.room is None
    assert "kicked by op from dev (spam)" in screen(view)[-1]
    assert text(view.title()) == " no room: /join ROOM" and text(view.prompt()) == "> "


def test_view_lines_tags_and_unread() -> None:
    view = joined_view("lobby", "dev")
    view.event(Message(room="dev", nick="bob", text="in dev", ts=NOW), NOW)
    view.event(Action(room="dev", nick="bob", text="waves", ts=NOW), NOW)
    view.event(Private(nick="bob", to="alice", text="psst", ts=NOW), NOW)
    view.event(Message(room="lobby", nick="bob", text="hey alice!", ts=NOW), NOW)
    rows = screen(view, 60, 4)
    stamp = time.strftime("%H:%M", time.localtime(NOW))
    assert rows == [
        f"{stamp} [dev] <bob> in dev",
        f"{stamp} [dev] * bob waves",
        f"{stamp} [private bob -> alice] psst",
        f"{stamp} [lobby] <bob> hey alice!",
    ]
    styles = dict(view.rows(60, 1)[0])
    assert {"class:tag.current", "class:mention"} <= set(styles)  # our room, our nick
    assert view.rooms["dev"].unread == 2 and view.rooms["lobby"].unread == 0
    assert "2 dev (2)" in text(view.side())
    view.switch(1)
    assert view.room == "dev" and view.rooms["dev"].unread == 0
    assert dict(view.rows(60, 4)[0]).get("class:tag.current") == "[dev] "


def test_view_switch_select_and_pending_rooms() -> None:
    view = joined_view("a", "b", "c")
    view.switch(1)
    assert view.room == "b"
    view.switch(-2)
    assert view.room == "c"  # wraps around
    view.select(1)
    assert view.room == "a"
    view.select(9)  # no such room: nothing happens
    assert view.room == "a"
    view.room = "#New"  # what /join does: the room is current before the hub answers
    assert view.room == "New" and "4 New ..." in text(view.side())
    view.forget_pending(["a", "b", "c", "new"])  # still joining: kept
    assert "new" in view.rooms
    view.forget_pending(["a", "b", "c"])  # the hub refused it
    assert "new" not in view.rooms and view.room == "a"
    view.event(Joined(room="b", nick="alice", ts=NOW), NOW)
    assert list(view.rooms) == ["a", "b", "c"]


def test_view_side_pane_and_bars() -> None:
    view = joined_view("lobby", "dev", others=("Zed", "bob"))
    view.event(TopicInfo(room="lobby", topic="welcome all", by="bob", ts=NOW), NOW)
    side = text(view.side()).splitlines()
    assert side == [" Rooms", ">1 lobby", " 2 dev", "", " 3 in lobby", "  alice", "  bob", "  Zed"]
    assert text(view.title()) == " [lobby] welcome all"
    assert text(view.prompt()) == "[lobby] "
    status = text(view.status(100))
    assert status.startswith(" alice  connected  hub at tcp://127.0.0.1:7070 ")
    assert status.endswith("Ctrl-D quit ") and len(status) == 100
    narrow = text(view.status(40))
    assert narrow.startswith(" alice  connected ") and "hub at" not in narrow


def test_view_reconnect_and_lost() -> None:
    view = joined_view("lobby")
    view.event(Message(room="lobby", nick="bob", text="before", ts=NOW), NOW)
    view.reconnecting(NOW)
    assert view.state == "reconnecting" and not view.rooms["lobby"].joined
    assert members(view, "lobby") == []
    assert "reconnecting..." in text(view.status(80))
    assert "lobby ..." in text(view.side())
    view.event(Welcome(nick="alice", server="hub"), NOW)
    view.event(Joined(room="lobby", nick="alice", ts=NOW + 5), NOW)
    view.event(WhoList(room="lobby", nicks=("alice", "bob")), NOW)
    old = Message(room="lobby", nick="bob", text="before", ts=NOW)
    new = Message(room="lobby", nick="bob", text="while away", ts=NOW + 1)
    view.event(History(room="lobby", messages=(old, new)), NOW)  # the rejoin's history
    rows = "\n".join(screen(view, 80, 30))
    assert "reconnected to hub as alice; rejoining your rooms" in rows
    assert rows.count("before") == 1 and "while away" in rows  # no message twice
    assert view.state == "connected" and members(view, "lobby") == ["alice", "bob"]
    view.lost("lost the chat hub", NOW)
    assert view.state == "lost" and "lost" in text(view.status(80))
    assert "lost the chat hub (Ctrl-D or /quit to exit)" in screen(view)[-1]


def test_rows_are_bottom_aligned_and_scroll() -> None:
    view = ChatView("alice", "tcp://h:1", None)
    for n in range(30):
        view.note(f"line {n}", NOW)
    rows = screen(view, 40, 5)
    assert len(rows) == 5 and rows[-1].endswith("line 29") and rows[0].endswith("line 25")
    view.scroll(1)  # a page is the height less two rows of context
    assert screen(view, 40, 5)[-1].endswith("line 26") and view.offset == 3
    view.note("line 30", NOW)  # what we look at stays put
    assert screen(view, 40, 5)[-1].endswith("line 26") and view.offset == 4
    assert "scrolled up 4 rows: PageDown" in text(view.status(80))
    view.scroll(100)  # past the top: clamped when rendered
    assert screen(view, 40, 5)[0].endswith("line 0") and view.offset == 26
    view.scroll(-100)
    assert view.offset == 0 and screen(view, 40, 5)[-1].endswith("line 30")
    few = ChatView("alice", "tcp://h:1", None)
    few.note("only", NOW)
    assert screen(few, 20, 3)[:2] == ["", ""]  # padded above, newest at the bottom


# ---- keys (a pipe for a keyboard, no terminal) -------------------------------------------------


class Output(DummyOutput):
    def __init__(self, columns: int) -> None:
        self.columns = columns

    def get_size(self) -> Size:
        return Size(rows=24, columns=self.columns)


class Keyboard:
    """Runs the app on a pipe; ``lines`` gets (line, current room) as lines are submitted."""

    def __init__(self, view: ChatView, columns: int = 100) -> None:
        self.view = view
        self.columns = columns
        self.lines: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        self.left_at = (0, 0)  # the scroll offset and page height when we left

    def submit(self, line: str) -> None:
        self.lines.put_nowait((line, self.view.room))

    async def next(self) -> tuple[str, str | None]:
        return await asyncio.wait_for(self.lines.get(), WAIT)

    @staticmethod
    def side_shown(app: Application[Any], view: ChatView) -> bool:
        return any(
            isinstance(w.content, FormattedTextControl) and w.content.text == view.side
            for w in app.layout.visible_windows
        )


@pytest.fixture
def pipe() -> Iterator[Any]:
    with create_pipe_input() as pipe:
        yield pipe


async def test_keys_switch_rooms_scroll_and_quit(pipe: Any) -> None:
    view = joined_view("lobby", "dev", "ops")
    for n in range(40):
        view.note(f"filler {n}", NOW)
    keys = Keyboard(view)

    def leave() -> None:
        keys.left_at = (view.offset, view.page)
        app.exit()

    app = build_app(view, keys.submit, leave, input=pipe, output=Output(100))
    running = asyncio.ensure_future(app.run_async())
    pipe.send_text("hello\r")
    assert await keys.next() == ("hello", "lobby")
    pipe.send_text("\tx\r")  # Tab
    assert await keys.next() == ("x", "dev")
    pipe.send_text("\x0ey\r")  # Ctrl-N
    assert await keys.next() == ("y", "ops")
    pipe.send_text("\x10z\r")  # Ctrl-P
    assert await keys.next() == ("z", "dev")
    pipe.send_text("\x1b[Zw\r")  # Shift-Tab
    assert await keys.next() == ("w", "lobby")
    pipe.send_text("\x1b3")  # Alt-3
    pipe.send_text("v\r")
    assert await keys.next() == ("v", "ops")
    pipe.send_text("\x1b[200~one\ntwo\x1b[201~\r")  # a paste of two lines: two lines
    assert [await keys.next(), await keys.next()] == [("one", "ops"), ("two", "ops")]
    pipe.send_text("abc\x04\r")  # Ctrl-D with text on the line does not quit
    assert await keys.next() == ("abc", "ops")
    assert keys.side_shown(app, view)
    pipe.send_text("\x1b[5~\x1b[5~\x1b[6~")  # PageUp twice, PageDown once
    pipe.send_text("\x04")  # Ctrl-D on an empty line: leave
    await asyncio.wait_for(running, WAIT)
    offset, page = keys.left_at
    assert page > 10 and offset == page - 2
    assert keys.lines.empty()


async def test_ctrl_c_leaves_and_narrow_terminals_hide_the_side_pane(pipe: Any) -> None:
    view = joined_view("lobby")
    keys = Keyboard(view)
    app = build_app(
        view, keys.submit, lambda: app.exit(result="bye"), input=pipe, output=Output(50)
    )
    running = asyncio.ensure_future(app.run_async())
    pipe.send_text("hi\r")
    assert await keys.next() == ("hi", "lobby")
    assert not keys.side_shown(app, view)
    pipe.send_text("\x03")  # Ctrl-C
    assert await asyncio.wait_for(running, WAIT) == "bye"


# ---- the client against a real hub, in-process ---------------------------------------------------

OPTIONS = ChatOptions(rate=10_000.0, burst=10_000)


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    srv = await serve_chat(["tcp://127.0.0.1:0"], [], options=OPTIONS)
    yield srv
    await srv.close()


async def expect(client: ChatClient, kind: type[E], **fields: Any) -> E:
    for _ in range(50):
        event = await client.receive(WAIT)
        if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
            return event
    raise AssertionError(f"no {kind.__name__} {fields}")


async def until(check: Callable[[], bool]) -> None:
    """Wait for something the view shows (it has no event to await), bounded."""
    for _ in range(int(WAIT / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the view never got there")


async def test_run_tui_talks_joins_and_quits(server: ChatServer, pipe: Any) -> None:
    url = server.urls[0]
    bob = await ChatClient.connect(url, nick="bob", rooms=["lobby", "dev"])
    alice = await ChatClient.connect(url, nick="alice", rooms=["lobby"])
    view = ChatView("alice", url, "lobby")
    tui = asyncio.ensure_future(
        run_tui(alice, ["lobby"], input=pipe, output=Output(100), view=view)
    )
    await expect(bob, Joined, nick="alice", room="lobby")
    await bob.say("lobby", "hello alice")
    await until(lambda: any("hello alice" in row for row in screen(view)))
    assert members(view, "lobby") == ["alice", "bob"]
    pipe.send_text("hello bob\r/bogus\r/join dev\rin dev\r/me waves\r")
    await expect(bob, Message, nick="alice", room="lobby", text="hello bob")
    await expect(bob, Joined, nick="alice", room="dev")
    await expect(bob, Message, nick="alice", room="dev", text="in dev")
    await expect(bob, Action, nick="alice", room="dev", text="waves")
    assert any("unknown command /bogus" in row for row in screen(view, 100, 30))
    pipe.send_text("\tback\r")  # Tab: lobby again
    await expect(bob, Message, nick="alice", room="lobby", text="back")
    pipe.send_text("/leave dev\r/quit see you\r")
    await expect(bob, Left, nick="alice", room="dev")
    assert (await expect(bob, QuitNotice, nick="alice")).reason == "see you"
    assert await asyncio.wait_for(tui, WAIT) == 0
    await bob.close()


async def test_run_tui_reports_a_lost_hub(
    server: ChatServer, pipe: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = await ChatClient.connect(server.urls[0], nick="alice", rooms=["r"], reconnect=False)
    view = ChatView("alice", server.urls[0], "r")
    tui = asyncio.ensure_future(run_tui(alice, ["r"], input=pipe, output=Output(100), view=view))
    await until(lambda: view.rooms["r"].joined)
    await server.close()
    await until(lambda: view.state == "lost")
    told = sum("shutting down" in row for row in screen(view, 100, 30))
    pipe.send_text("anyone?\r")  # the client is gone: told in the pane why, no crash
    await until(lambda: sum("shutting down" in row for row in screen(view, 100, 30)) > told)
    pipe.send_text("\x04")
    assert await asyncio.wait_for(tui, WAIT) == 1
    assert "opensocket chat: " in capsys.readouterr().err


def test_full_screen_needs_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "tcp://127.0.0.1:9", "--nick", "x"]) == 2  # pytest's stdin: no tty
    err = capsys.readouterr().err
    assert "needs a terminal" in err and "--plain" in err
    assert main(["chat", "tcp://127.0.0.1:9", "--nick", "x", "--json"]) == 2
    assert "--json is for line mode" in capsys.readouterr().err


# ---- the real program in a real terminal ---------------------------------------------------------


class Tmux:
    """One tmux server of our own (its socket in tmp_path) running one program at a size."""

    def __init__(self, tmp_path: Path, command: list[str], columns: int, rows: int) -> None:
        tmux = shutil.which("tmux")
        assert tmux, "tmux is needed (apt-get install tmux)"
        conf = tmp_path / "tmux.conf"
        conf.write_text("set -g status off\nset -g remain-on-exit on\n")
        self.base = [tmux, "-S", str(tmp_path / "tmux.sock"), "-f", str(conf)]
        # the exit status through a file: tmux may leave an ended program a zombie (its pane
        # not dead) for a while
        self.status = tmp_path / "status"
        shell = f"{shlex.join(command)}; echo $? > {shlex.quote(str(self.status))}"
        size = ["-x", str(columns), "-y", str(rows)]
        self.run("new-session", "-d", *size, "-s", "t", shell)

    def run(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def wait_for(self, *wanted: str) -> str:
        """The screen once it shows all of ``wanted``. tmux draws the screen from the
        program's escape sequences; we can only look at it again, a bounded number of times."""
        deadline = time.monotonic() + WAIT
        while True:
            shown = self.screen()
            if all(w in shown for w in wanted):
                return shown
            assert time.monotonic() < deadline, f"never showed {wanted}:\n{shown}"
            time.sleep(0.05)

    def type(self, line: str) -> None:
        self.run("send-keys", "-t", "t", "-l", line)
        self.run("send-keys", "-t", "t", "Enter")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "t", *keys)

    def exit_status(self) -> int:
        """The program's exit status, once it has ended."""
        deadline = time.monotonic() + WAIT
        while not (self.status.exists() and self.status.read_text().endswith("\n")):
            assert time.monotonic() < deadline, f"still running:\n{self.screen()}"
            time.sleep(0.05)
        return int(self.status.read_text())

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=WAIT)


def start_hub(listen: str = "tcp://127.0.0.1:0") -> tuple[pexpect.spawn, str]:
    args = ["-m", "opensocket", "chat", "serve", "--listen", listen, "--web", "http://127.0.0.1:0"]
    hub = pexpect.spawn(sys.executable, [*args, "--json"], encoding="utf-8", timeout=WAIT)
    hub.expect(r'"native": \["(tcp://[^"]+)"\]')
    return hub, str(hub.match.group(1))


def stop_hub(hub: pexpect.spawn) -> None:
    if hub.isalive():
        hub.kill(signal.SIGTERM)
        hub.expect(pexpect.EOF)
    hub.close(force=True)


def chat_command(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "opensocket", "chat", url, "--nick", "alice", *args]


def expect_sync(client: SyncChatClient, kind: type[E], **fields: Any) -> E:
    for _ in range(50):
        event = client.receive(WAIT)
        if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
            return event
    raise AssertionError(f"no {kind.__name__} {fields}")


@pytest.fixture
def hub() -> Iterator[tuple[pexpect.spawn, str]]:
    hub, url = start_hub()
    yield hub, url
    stop_hub(hub)


def test_in_a_terminal_join_send_receive_quit(
    hub: tuple[pexpect.spawn, str], tmp_path: Path
) -> None:
    url = hub[1]
    bob = SyncChatClient.connect(url, nick="bob", rooms=["lobby", "dev"])
    term = Tmux(tmp_path, chat_command(url, "--room", "lobby"), 100, 30)
    try:
        expect_sync(bob, Joined, nick="alice", room="lobby")
        term.wait_for("connected", "Rooms", ">1 lobby")
        bob.say("lobby", "hello-from-bob")
        shown = term.wait_for("<bob> hello-from-bob", "  bob")  # the message, the member
        assert "[lobby] (no topic)" in shown.splitlines()[0]
        term.type("hi-from-alice")
        expect_sync(bob, Message, nick="alice", room="lobby", text="hi-from-alice")
        term.type("/join dev")
        expect_sync(bob, Joined, nick="alice", room="dev")
        term.wait_for(">2 dev", "[dev] ")
        term.type("in-dev")
        expect_sync(bob, Message, nick="alice", room="dev", text="in-dev")
        term.keys("Tab")
        term.wait_for(">1 lobby")
        term.type("back-in-lobby")
        expect_sync(bob, Message, nick="alice", room="lobby", text="back-in-lobby")
        term.run("resize-window", "-t", "t", "-x", "50", "-y", "20")
        bob.say("lobby", "narrow-now")
        shown = term.wait_for("narrow-now")
        assert "Rooms" not in shown and "\u2502" not in shown  # no side pane below 60 columns
        term.type("/quit bye")
        assert expect_sync(bob, QuitNotice, nick="alice").reason == "bye"
        assert term.exit_status() == 0
    finally:
        term.close()
        bob.close()


def test_in_a_terminal_reconnect_and_rejoin(tmp_path: Path, free_port: int) -> None:
    listen = f"tcp://127.0.0.1:{free_port}"
    hub, url = start_hub(listen)
    term = Tmux(tmp_path, chat_command(url, "--room", "lobby", "--room", "dev"), 100, 30)
    try:
        term.wait_for("connected", ">1 lobby", " 2 dev")
        stop_hub(hub)
        term.wait_for("reconnecting...", "lobby ...", "dev ...")
        hub, url = start_hub(listen)
        term.wait_for("reconnected to opensocket as alice", " 1 in lobby")
        with SyncChatClient.connect(url, nick="bob", rooms=["dev"]) as bob:
            assert "alice" in expect_sync(bob, WhoList, room="dev").nicks  # rejoined
            term.wait_for("[dev] bob joined")
            term.keys("C-c")
            assert expect_sync(bob, QuitNotice, nick="alice").nick == "alice"
        assert term.exit_status() == 0
    finally:
        term.close()
        stop_hub(hub)


def test_in_a_terminal_a_hub_lost_for_good(hub: tuple[pexpect.spawn, str], tmp_path: Path) -> None:
    term = Tmux(tmp_path, chat_command(hub[1], "--room", "r", "--no-reconnect"), 80, 24)
    try:
        term.wait_for("connected", ">1 r")
        stop_hub(hub[0])
        term.wait_for("Ctrl-D or /quit to exit", " lost ")
        term.keys("C-d")
        assert term.exit_status() == 1
    finally:
        term.close()
