"""The chat clients (asyncio, blocking, ``opensocket chat --plain``) against a real hub."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from opensocket.aio.chat_client import ChatClient
from opensocket.aio.chat_server import ChatServer, serve_chat
from opensocket.chat import ChatOptions
from opensocket.chat.events import (
    Action,
    ErrorEvent,
    Event,
    Joined,
    Kicked,
    Message,
    NickChanged,
    Private,
    QuitNotice,
    RoomList,
    TopicInfo,
    Welcome,
    WhoList,
)
from opensocket.cli import main
from opensocket.errors import (
    CloseCode,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionRejected,
)
from opensocket.sync.chat_client import ChatClient as SyncChatClient

from ..tlsutil import make_pki
from .helpers import TOKEN

WAIT = 5.0
E = TypeVar("E", bound=Event)
T = TypeVar("T")
OPTIONS = ChatOptions(operator_token=TOKEN, rate=10_000.0, burst=10_000)


async def start(url: str = "tcp://127.0.0.1:0", **kw: Any) -> ChatServer:
    return await serve_chat([url], [], options=OPTIONS, **kw)


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    srv = await start()
    yield srv
    await srv.close()


async def expect(client: ChatClient, kind: type[E], **fields: Any) -> E:
    """The next event of ``kind`` with ``fields`` (others skipped, bounded in count and time)."""
    for _ in range(50):
        event = await client.receive(WAIT)
        if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
            return event
    raise AssertionError(f"no {kind.__name__} {fields}")


def expect_sync(client: SyncChatClient, kind: type[E], **fields: Any) -> E:
    for _ in range(50):
        event = client.receive(WAIT)
        if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
            return event
    raise AssertionError(f"no {kind.__name__} {fields}")


async def in_thread(call: Callable[..., T], *args: Any, **kw: Any) -> T:
    """A blocking client call, off the event loop the hub runs on."""
    return await asyncio.to_thread(call, *args, **kw)


async def test_asyncio_and_blocking_clients_talk(server: ChatServer) -> None:
    url = server.urls[0]
    alice = await ChatClient.connect(url, nick="alice", rooms=["#lobby"])
    assert alice.welcome is not None and alice.welcome.nick == "alice"
    await expect(alice, WhoList, room="lobby", nicks=("alice",))
    bob = await in_thread(SyncChatClient.connect, url, nick="bob", rooms=["lobby"])
    await expect(alice, Joined, room="lobby", nick="bob")
    await in_thread(expect_sync, bob, WhoList, room="lobby", nicks=("alice", "bob"))
    assert alice.joined_rooms == ["lobby"] and bob.joined_rooms == ["lobby"]

    await alice.say("lobby", "hi bob")
    await in_thread(expect_sync, bob, Message, nick="alice", text="hi bob")
    await in_thread(bob.say, "lobby", "hi alice")
    await expect(alice, Message, room="lobby", nick="bob", text="hi alice")

    await in_thread(bob.me, "lobby", "waves")
    await expect(alice, Action, nick="bob", text="waves")
    await alice.msg("bob", "psst")
    await in_thread(expect_sync, bob, Private, nick="alice", to="bob", text="psst")
    await in_thread(bob.msg, "alice", "back")
    await expect(alice, Private, nick="bob", to="alice", text="back")

    await in_thread(bob.nick, "robert")
    await expect(alice, NickChanged, old="bob", new="robert")
    await in_thread(expect_sync, bob, NickChanged, old="bob", new="robert")
    assert bob.current_nick == "robert"
    await alice.nick("alicia")
    await expect(alice, NickChanged, old="alice", new="alicia")
    assert alice.current_nick == "alicia"

    await alice.topic("lobby", "Welcome!")
    await in_thread(expect_sync, bob, TopicInfo, room="lobby", topic="Welcome!", by="alicia")
    await alice.who("lobby")
    await expect(alice, WhoList, nicks=("alicia", "robert"))
    await in_thread(bob.rooms)
    rooms = await in_thread(expect_sync, bob, RoomList)
    assert [(r.name, r.members) for r in rooms.rooms] == [("lobby", 2)]

    await in_thread(bob.leave, "lobby", "lunch")
    assert bob.joined_rooms == []
    await alice.say("lobby", "still there?")
    await in_thread(bob.msg, "alicia", "not in the room any more")
    event = await in_thread(expect_sync, bob, Private)  # the room message did not reach bob
    assert event.text == "not in the room any more"

    await in_thread(bob.join, "lobby")
    await expect(alice, Joined, nick="robert")
    await in_thread(bob.quit, "bye")
    quit_event = await expect(alice, QuitNotice)
    assert (quit_event.nick, quit_event.reason) == ("robert", "bye")
    rest = await in_thread(lambda: list(bob.events(timeout=None)))  # ends, no wait, no error
    assert all(isinstance(e, Event) for e in rest)
    await alice.quit()
    assert all([isinstance(e, Event) async for e in alice])  # ends normally
    with pytest.raises(ConnectionClosed):
        await alice.say("lobby", "after quit")


async def test_reconnect_after_the_hub_restarts(free_port: int) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    srv = await start(url)
    alice = await ChatClient.connect(url, nick="alice", rooms=["lobby", "dev"])
    bob = await in_thread(SyncChatClient.connect, url, nick="bob", rooms=["lobby"])
    told: list[tuple[str, ConnectionClosed]] = []
    alice.on_reconnecting = lambda lost: told.append(("alice", lost))
    bob.on_reconnecting = lambda lost: told.append(("bob", lost))
    await expect(alice, Joined, room="lobby", nick="bob")
    await srv.close()  # every client gets 1001 "server shutting down"
    srv = await start(url)
    try:
        # both come back by themselves: a new welcome, then their rooms again
        assert (await expect(alice, Welcome)).nick == "alice"
        await expect(alice, Joined, room="lobby", nick="alice")
        await expect(alice, Joined, room="dev", nick="alice")
        assert (await in_thread(expect_sync, bob, Welcome)).nick == "bob"
        await in_thread(expect_sync, bob, Joined, room="lobby", nick="bob")
        assert alice.reconnects == 1 and bob.reconnects == 1
        assert sorted(who for who, _ in told) == ["alice", "bob"]  # each told once, with why
        assert all(lost.code == CloseCode.GOING_AWAY for _, lost in told)
        assert sorted(alice.joined_rooms) == ["dev", "lobby"]

        carol = await ChatClient.connect(url, nick="carol", rooms=["lobby"])
        await expect(carol, WhoList, room="lobby")
        await carol.say("lobby", "welcome back")
        await expect(alice, Message, nick="carol", text="welcome back")
        await in_thread(expect_sync, bob, Message, nick="carol", text="welcome back")
        await in_thread(bob.say, "lobby", "thanks")
        await expect(alice, Message, nick="bob", text="thanks")
        await carol.close()
        await in_thread(bob.close)
        await alice.close()
    finally:
        await srv.close()


async def test_lost_for_good_without_reconnect(server: ChatServer) -> None:
    url = server.urls[0]
    alice = await ChatClient.connect(url, nick="alice", rooms=["lobby"], reconnect=False)
    bob = await in_thread(SyncChatClient.connect, url, nick="bob", reconnect=False)
    await server.close()
    with pytest.raises(ConnectionClosed) as caught:
        async for _ in alice:
            pass
    assert caught.value.code == CloseCode.GOING_AWAY
    with pytest.raises(ConnectionClosed):
        await in_thread(lambda: list(bob.events(timeout=WAIT)))
    await alice.close()
    await in_thread(bob.close)


async def test_give_up_when_the_hub_does_not_come_back(free_port: int) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    srv = await start(url)
    alice = await ChatClient.connect(url, nick="alice", give_up=0.3, backoff=(0.02, 0.1))
    bob = await in_thread(SyncChatClient.connect, url, nick="bob", give_up=0.3, backoff=(0.02, 0.1))
    await srv.close()
    with pytest.raises(ConnectionClosedError, match=r"could not reconnect within 0\.3 s"):
        await alice.receive(WAIT)
    with pytest.raises(ConnectionClosedError, match=r"could not reconnect within 0\.3 s"):
        await in_thread(lambda: list(bob.events(WAIT)))
    # sending fails at once too, saying why (not "closed normally by the local side")
    with pytest.raises(ConnectionClosedError, match=r"could not reconnect within 0\.3 s"):
        await alice.say("lobby", "anyone?")
    with pytest.raises(ConnectionClosedError, match=r"could not reconnect within 0\.3 s"):
        await in_thread(bob.say, "lobby", "anyone?")
    assert alice.reconnects == 1 and bob.reconnects == 1
    await alice.close()
    await in_thread(bob.close)


async def test_refused_hello_and_kick_from_the_server(server: ChatServer) -> None:
    url = server.urls[0]
    alice = await ChatClient.connect(url, nick="alice", rooms=["lobby"])
    with pytest.raises(ConnectionRejected, match="nick_taken"):
        await ChatClient.connect(url, nick="ALICE")
    with pytest.raises(ConnectionRejected, match="nick_taken"):
        await in_thread(SyncChatClient.connect, url, nick="Alice")
    op = await ChatClient.connect(url, nick="op")
    await op.join("staff", password="s3cret")
    mallory = await ChatClient.connect(url, nick="mallory")
    await mallory.join("staff", password="wrong")
    await expect(mallory, ErrorEvent, code="bad_room_password")
    assert mallory.joined_rooms == []  # a refused join is not rejoined after a reconnect
    await op.kick("alice", TOKEN, reason="spam")
    await expect(alice, Kicked, by="op", reason="spam")
    with pytest.raises(ConnectionClosed):  # kicked from the server: no reconnect
        await alice.receive(WAIT)
    assert alice.reconnects == 0
    for client in (alice, op, mallory):
        await client.close()


async def test_tls_and_unix(tmp_path: Path, sock_path: str) -> None:
    pki = make_pki(tmp_path)
    for url, tls in (("tls://127.0.0.1:0", True), (f"unix://{sock_path}", False)):
        async with await start(url, tls=pki.server_tls() if tls else None) as srv:
            client_tls = pki.client_tls() if tls else None
            alice = await ChatClient.connect(srv.urls[0], nick="alice", rooms=["r"], tls=client_tls)
            bob = await in_thread(SyncChatClient.connect, srv.urls[0], nick="bob", tls=client_tls)
            await in_thread(bob.join, "r")
            await expect(alice, Joined, nick="bob")
            await in_thread(bob.say, "r", f"from {url[:6]}")
            await expect(alice, Message, nick="bob", text=f"from {url[:6]}")
            await alice.say("r", "back")
            await in_thread(expect_sync, bob, Message, nick="alice", text="back")
            await alice.close()
            await in_thread(bob.close)


# ---- opensocket chat URL --plain ------------------------------------------------------------


async def cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "opensocket",
        "chat",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_json_until(proc: asyncio.subprocess.Process, **fields: Any) -> dict[str, Any]:
    assert proc.stdout is not None
    for _ in range(50):
        async with asyncio.timeout(WAIT):
            line = await proc.stdout.readline()
        assert line, "the client ended early"
        event = json.loads(line)
        if all(event.get(k) == v for k, v in fields.items()):
            return dict(event)
    raise AssertionError(f"no event {fields}")


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    try:
        async with asyncio.timeout(10):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_plain_json_mode_with_an_api_client(server: ChatServer) -> None:
    url = server.urls[0]
    alice = await ChatClient.connect(url, nick="alice", rooms=["lobby"])
    proc = await cli(url, "--nick", "x", "--room", "lobby", "--plain", "--json")
    assert proc.stdin is not None
    try:
        assert (await read_json_until(proc, type="welcome"))["nick"] == "x"
        await read_json_until(proc, type="who", room="lobby")
        await expect(alice, Joined, nick="x")
        await alice.say("lobby", "hi cli")
        await read_json_until(proc, type="message", nick="alice", text="hi cli")

        proc.stdin.write(
            b"hello api\n/me waves\n/msg alice psst\n//slash\n/bogus\n/help\n/nick xx\n"
        )
        await proc.stdin.drain()
        await expect(alice, Message, nick="x", text="hello api")
        await expect(alice, Action, nick="x", text="waves")
        await expect(alice, Private, nick="x", to="alice", text="psst")
        await expect(alice, Message, nick="x", text="/slash")
        await expect(alice, NickChanged, old="x", new="xx")
        await read_json_until(proc, type="private", to="alice", text="psst")
        await read_json_until(proc, type="nick", new="xx")
        proc.stdin.write(b"/join dev\nin dev now\n")  # the current room follows /join
        await proc.stdin.drain()
        await read_json_until(proc, type="message", room="dev", text="in dev now")
        proc.stdin.close()  # EOF: the client quits
        assert (await expect(alice, QuitNotice)).nick == "xx"
    finally:
        code, _, err = await finish(proc)
    assert code == 0, err
    assert "unknown command /bogus" in err
    assert "/join ROOM [PASSWORD]" in err  # /help lists the commands
    await alice.close()


async def test_plain_text_mode_and_quit(server: ChatServer) -> None:
    url = server.urls[0]
    alice = await ChatClient.connect(url, nick="alice", rooms=["lobby"])
    proc = await cli(url, "--nick", "tx", "--room", "lobby", "--plain")
    assert proc.stdin is not None
    await expect(alice, Joined, nick="tx")
    await alice.say("lobby", "for the humans")
    proc.stdin.write(b"hello\n")
    await expect(alice, Message, nick="tx", text="hello")  # so tx had the message before
    proc.stdin.write(b"/quit see you\n")
    assert (await expect(alice, QuitNotice)).reason == "see you"
    code, out, err = await finish(proc)
    assert code == 0, err
    assert "* connected to opensocket as tx" in out
    assert "[lobby] <alice> for the humans" in out
    assert "[lobby] <tx> hello" in out
    await alice.close()


async def test_plain_exits_1_when_the_hub_is_lost(server: ChatServer) -> None:
    proc = await cli(server.urls[0], "--nick", "z", "--plain", "--json", "--no-reconnect")
    await read_json_until(proc, type="welcome")
    await server.close()
    code, _, err = await finish(proc)
    assert code == 1
    assert "going away" in err.lower() or "1001" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chat", "--nick", "x"], "--plain"),
        (["chat", "--plain"], "--nick"),
        (["chat", "udp://127.0.0.1:9", "--nick", "x", "--plain"], "tcp://, tls:// or unix://"),
        (["chat", "--nick", "9lives", "--plain"], "--nick 9lives"),
        (["chat", "--nick", "x", "--room", "a b", "--plain"], "--room a b"),
        (["chat", "--nick", "x", "--plain", "--give-up", "0"], "--give-up"),
    ],
)
def test_cli_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_connection_refused(free_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", f"tcp://127.0.0.1:{free_port}", "--nick", "x", "--plain"]) == 1
    assert "connection refused" in capsys.readouterr().err
