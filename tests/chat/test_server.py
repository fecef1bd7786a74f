"""The chat hub's asyncio server over real loopback sockets: native and WebSocket clients."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsClosed

import opensocket
from opensocket.aio import Connection
from opensocket.aio.chat_server import ChatServer, serve_chat
from opensocket.chat import ChatOptions, SlowClientPolicy
from opensocket.cli.chat_serve import configure, execute
from opensocket.errors import CloseCode, ConfigError, ConnectionClosed
from opensocket.options import ProtocolOptions, SocketOptions

from ..tlsutil import make_pki
from .helpers import TOKEN
from .test_metrics import parse
from .test_redis_backplane import RedisServer

WAIT = 5.0
Peer = Connection | ClientConnection


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    options = ChatOptions(operator_token=TOKEN, rate=10_000.0, burst=10_000)
    policy = SlowClientPolicy(max_messages=8, max_bytes=1 << 20, max_lag=None)
    srv = await serve_chat(
        ["tcp://127.0.0.1:0"],
        ["http://127.0.0.1:0"],
        options=options,
        policy=policy,
        socket_options=SocketOptions(send_buffer=4096),
    )
    yield srv
    await srv.close()


@pytest.fixture
async def redis_proc(free_port: int, tmp_path: Path) -> AsyncIterator[RedisServer]:
    proc = RedisServer(free_port, tmp_path)
    await proc.start()
    try:
        yield proc
    finally:
        await proc.kill()


def ws_url(srv: ChatServer) -> str:
    return srv.web_urls[0].replace("http://", "ws://") + "ws"


async def native(srv: ChatServer, **kw: Any) -> Connection:
    return await opensocket.connect(srv.urls[0], codec="json", **kw)


async def websocket(srv: ChatServer) -> ClientConnection:
    return await ws_connect(ws_url(srv))


async def send(peer: Peer, command: dict[str, Any]) -> None:
    if isinstance(peer, Connection):
        await peer.send(command)
    else:
        await peer.send(json.dumps(command))


async def recv(peer: Peer) -> dict[str, Any]:
    if isinstance(peer, Connection):
        event = await peer.recv(timeout=WAIT)
    else:
        async with asyncio.timeout(WAIT):
            event = json.loads(await peer.recv())
    assert isinstance(event, dict)
    return event


async def expect(peer: Peer, kind: str, **fields: Any) -> dict[str, Any]:
    """Read events until one of ``kind`` matching ``fields`` (bounded)."""
    seen = []
    for _ in range(400):
        event = await recv(peer)
        if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
            return event
        seen.append(event["type"])
    raise AssertionError(f"no {kind} {fields} in {seen}")


async def login(peer: Peer, nick: str, room: str | None = "lobby") -> None:
    await send(peer, {"type": "hello", "nick": nick})
    await expect(peer, "welcome", nick=nick)
    if room is not None:
        await send(peer, {"type": "join", "room": room})
        await expect(peer, "who", room=room)


async def quiet(peer: Peer) -> None:
    """Nothing arrived for ``peer`` before the answer to a ping sent now."""
    await send(peer, {"type": "ping", "id": "quiet"})
    assert await recv(peer) == {"type": "pong", "ref": "quiet"}


async def read_until_closed(conn: Connection) -> ConnectionClosed:
    """Read (bounded) until the connection closes; the close as an exception."""
    for _ in range(1000):
        try:
            await conn.recv(timeout=WAIT)
        except ConnectionClosed as exc:
            return exc
    raise AssertionError("the connection was not closed")


async def close_all(*peers: Peer) -> None:
    for peer in peers:
        await peer.close()


async def http_get(srv: ChatServer, path: str, head: str = "") -> tuple[str, str]:
    port = srv.web_addresses[0].port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{head}Connection: close\r\n\r\n".encode())
    async with asyncio.timeout(WAIT):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    status, _, body = data.decode().partition("\r\n\r\n")
    return status, body


async def test_native_and_websocket_share_a_room(server: ChatServer) -> None:
    alice = await native(server)
    bob = await websocket(server)
    await login(alice, "alice")
    await login(bob, "bob")
    await expect(alice, "joined", nick="bob", room="lobby")
    await send(alice, {"type": "say", "room": "lobby", "text": "hi from tcp"})
    await expect(bob, "message", nick="alice", text="hi from tcp")
    await send(bob, {"type": "me", "room": "lobby", "text": "waves from the browser"})
    await expect(alice, "action", nick="bob", text="waves from the browser")
    await send(alice, {"type": "msg", "to": "bob", "text": "psst"})
    await expect(bob, "private", nick="alice", to="bob", text="psst")
    await send(bob, {"type": "msg", "to": "alice", "text": "back at you"})
    await expect(alice, "private", nick="bob", to="alice", text="back at you")
    await send(bob, {"type": "who", "room": "lobby"})
    who = await expect(bob, "who", room="lobby")
    assert sorted(who["nicks"]) == ["alice", "bob"]
    await close_all(alice, bob)


async def test_bad_websocket_input_reaches_only_the_sender(server: ChatServer) -> None:
    alice = await native(server)
    carol = await websocket(server)
    dave = await websocket(server)
    for peer, nick in ((alice, "alice"), (carol, "carol"), (dave, "dave")):
        await login(peer, nick)
    await expect(alice, "joined", nick="dave")
    await expect(carol, "joined", nick="dave")
    await carol.send("{not json")
    assert (await expect(carol, "error"))["code"] == "invalid_json"
    await carol.send(b'{"type":"say","room":"lobby","text":"\xff\xfe"}')
    assert (await expect(carol, "error"))["code"] == "invalid_utf8"
    await carol.send(json.dumps({"type": "say", "room": "lobby", "text": "x" * 40_000}))
    assert (await expect(carol, "error"))["code"] == "too_large"
    await send(carol, {"type": "jump", "room": "lobby"})
    assert (await expect(carol, "error"))["code"] == "unknown_command"
    await quiet(carol)
    await quiet(alice)
    await quiet(dave)
    # carol is still connected and can talk
    await send(carol, {"type": "say", "room": "lobby", "text": "sorry"})
    await expect(alice, "message", nick="carol", text="sorry")
    await expect(dave, "message", nick="carol", text="sorry")
    await close_all(alice, carol, dave)


async def test_bad_native_input_reaches_only_the_sender(server: ChatServer) -> None:
    alice = await native(server)
    mallory = await native(server)
    await login(alice, "alice")
    await login(mallory, "mallory")
    await expect(alice, "joined", nick="mallory")
    # raw payloads, as a broken client would send them past its json codec
    for raw, code in (
        (b"{not json", "invalid_json"),
        (b'{"type":"say","room":"lobby","text":"\xff"}', "invalid_utf8"),
        (b"[1, 2]", "not_an_object"),
    ):
        mallory._core.send(raw)
        mallory._proto.schedule_flush()
        assert (await expect(mallory, "error"))["code"] == code
    await send(mallory, {"type": "say", "room": "lobby", "text": "y" * 30_000})
    assert (await expect(mallory, "error"))["code"] == "too_large"
    await quiet(alice)
    await quiet(mallory)
    await close_all(alice, mallory)


async def test_slow_client_is_dropped_and_the_others_keep_receiving(server: ChatServer) -> None:
    alice = await native(server)
    bob = await websocket(server)
    # sloth stops reading: its inbox stops the socket early, and its buffers are small.
    sloth = await native(
        server,
        options=SocketOptions(recv_buffer=4096),
        protocol=ProtocolOptions(max_queued_messages=2),
    )
    for peer, nick in ((alice, "alice"), (bob, "bob"), (sloth, "sloth")):
        await login(peer, nick)
    await expect(alice, "joined", nick="sloth")
    await expect(bob, "joined", nick="sloth")
    text = "z" * 1900
    count, batch = 200, 10
    received = 0
    quit_event: dict[str, Any] | None = None
    for start in range(0, count, batch):
        for i in range(start, start + batch):
            await send(alice, {"type": "say", "room": "lobby", "text": f"{i} {text}"})
        # bob reads as he goes (at most one batch behind); sloth reads nothing
        while received < start + batch:
            event = await recv(bob)
            if event["type"] == "message":
                received += 1
            elif event["type"] == "quit":
                quit_event = event
        for _ in range(batch):
            await expect(alice, "message", nick="alice")
    if quit_event is None:
        quit_event = await expect(bob, "quit")
    assert received == count
    assert quit_event["nick"] == "sloth"
    assert "too far behind" in quit_event["reason"]
    assert "sloth" not in server.hub.nicks
    _, body = await http_get(server, "/metrics")
    _, samples = parse(body)
    assert samples[("opensocket_chat_drops_total", "slow")] == 1
    # sloth learns why, once it reads what was sent before the close
    closed = await read_until_closed(sloth)
    assert closed.code == CloseCode.SLOW_CONSUMER
    assert "too far behind" in closed.reason
    await close_all(alice, bob)


async def test_metrics_page(server: ChatServer) -> None:
    alice = await native(server)
    bob = await websocket(server)
    await login(alice, "alice")
    await login(bob, "bob")
    await send(alice, {"type": "say", "room": "lobby", "text": "one"})
    await expect(bob, "message", text="one")
    await bob.send(b"\xff")
    await expect(bob, "error", code="invalid_utf8")
    status, body = await http_get(server, "/metrics")
    assert status.startswith("HTTP/1.1 200")
    assert "content-type: text/plain; version=0.0.4; charset=utf-8" in status.lower()
    families, samples = parse(body)
    assert families["opensocket_chat_connections_total"][0] == "counter"
    assert samples[("opensocket_chat_connections_total", "native")] == 1
    assert samples[("opensocket_chat_connections_total", "websocket")] == 1
    assert samples[("opensocket_chat_connections", "websocket")] == 1
    assert samples[("opensocket_chat_users", "")] == 2
    assert samples[("opensocket_chat_rooms", "")] == 1
    assert samples[("opensocket_chat_messages_in_total", "")] == 1
    assert samples[("opensocket_chat_errors_total", "invalid_utf8")] == 1
    await close_all(alice, bob)


async def test_page_and_other_paths(server: ChatServer) -> None:
    status, body = await http_get(server, "/")
    assert status.startswith("HTTP/1.1 200")
    assert "/ws" in body
    status, _ = await http_get(server, "/nope")
    assert status.splitlines()[0] == "HTTP/1.1 404 Not Found"  # with its reason phrase
    status, _ = await http_get(server, "/ws")
    assert status.splitlines()[0] == "HTTP/1.1 426 Upgrade Required"
    with pytest.raises(Exception, match="404"):
        await ws_connect(ws_url(server).replace("/ws", "/other"))


async def test_operator_kick_closes_with_the_reason(server: ChatServer) -> None:
    op = await native(server)
    bob = await websocket(server)
    nat = await native(server)
    await login(op, "op")
    await login(bob, "bob")
    await login(nat, "nat")
    await send(op, {"type": "kick", "nick": "bob", "token": TOKEN, "reason": "spam"})
    await expect(op, "notice", text="kicked bob")
    kicked = await expect(bob, "kicked")
    assert kicked["reason"] == "spam"
    with pytest.raises(WsClosed):
        await recv(bob)
    assert bob.close_code == CloseCode.POLICY
    assert bob.close_reason == "kicked by op: spam"
    await expect(nat, "quit", nick="bob", reason="kicked by op: spam")
    await send(op, {"type": "kick", "nick": "nat", "token": TOKEN, "reason": "flood"})
    await expect(nat, "kicked", reason="flood")
    closed = await read_until_closed(nat)
    assert closed.code == CloseCode.POLICY
    assert closed.reason == "kicked by op: flood"
    await op.close()


async def test_unix_listener_and_http_keep_alive(sock_path: str) -> None:
    async with await serve_chat([f"unix://{sock_path}"], ["http://127.0.0.1:0"]) as srv:
        alice = await opensocket.connect(f"unix://{sock_path}", codec="json")
        await login(alice, "alice")
        assert srv.hub.sessions[next(iter(srv.hub.sessions))].ip is None
        port = srv.web_addresses[0].port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):  # two requests on one connection
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(WAIT):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = (await reader.readexactly(length)).decode()
            assert parse(body)[1][("opensocket_chat_users", "")] == 1
        writer.close()
        await writer.wait_closed()
        await alice.close()


async def test_hello_timeout_closes_a_silent_client() -> None:
    options = ChatOptions(hello_timeout=0.2)
    async with await serve_chat(
        ["tcp://127.0.0.1:0"], ["http://127.0.0.1:0"], options=options
    ) as srv:
        silent = await native(srv)
        web = await websocket(srv)
        assert (await recv(silent))["code"] == "hello_timeout"
        closed = await read_until_closed(silent)
        assert closed.code == CloseCode.POLICY
        assert (await recv(web))["code"] == "hello_timeout"
        with pytest.raises(WsClosed):
            await recv(web)
        assert web.close_code == CloseCode.POLICY
        assert srv.hub.sessions == {}


async def test_two_hubs_share_a_room_through_redis(redis_proc: RedisServer) -> None:
    url = f"redis://127.0.0.1:{redis_proc.port}"
    one = await serve_chat(["tcp://127.0.0.1:0"], [], redis=url, node="one")
    two = await serve_chat([], ["http://127.0.0.1:0"], redis=url, node="two")
    try:
        for srv in (one, two):
            assert srv.link is not None
            await srv.link.wait_until(lambda srv=srv: srv.link is not None and srv.link.up)
        alice = await native(one)
        bob = await websocket(two)
        await login(alice, "alice")
        assert one.link is not None
        assert two.link is not None
        await one.link.flush()
        await two.link.wait_until(lambda: "alice" in two.hub.backplane.members("lobby"))
        await login(bob, "bob")
        await expect(alice, "joined", nick="bob", room="lobby")
        await send(alice, {"type": "say", "room": "lobby", "text": "from hub one"})
        await expect(bob, "message", nick="alice", text="from hub one")
        await send(bob, {"type": "msg", "to": "alice", "text": "from hub two"})
        await expect(alice, "private", nick="bob", text="from hub two")
        await send(bob, {"type": "hello", "nick": "x"})
        await expect(bob, "error", code="already_registered")
        await close_all(alice, bob)
    finally:
        await one.close()
        await two.close()


async def test_tls_native_and_wss(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    async with await serve_chat(
        ["tls://127.0.0.1:0"], ["https://127.0.0.1:0"], tls=pki.server_tls()
    ) as srv:
        assert srv.web_urls[0].startswith("https://")
        alice = await opensocket.connect(srv.urls[0], codec="json", tls=pki.client_tls())
        context = ssl.create_default_context(cafile=pki.ca_cert)
        wss = srv.web_urls[0].replace("https://", "wss://") + "ws"
        bob = await ws_connect(wss, ssl=context)
        await login(alice, "alice")
        await login(bob, "bob")
        await send(bob, {"type": "say", "room": "lobby", "text": "over wss"})
        await expect(alice, "message", nick="bob", text="over wss")
        await close_all(alice, bob)


async def test_cli_chat_serve_prints_addresses_and_stops_on_sigterm() -> None:
    script = (
        "import argparse, sys\n"
        "from opensocket.cli import chat_serve as chat\n"
        "parser = argparse.ArgumentParser()\n"
        "chat.configure(parser, 'chat serve')\n"
        "sys.exit(chat.execute(parser.parse_args(sys.argv[1:])))\n"
    )
    args = ["--listen", "tcp://127.0.0.1:0", "--web", "http://127.0.0.1:0", "--json"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            banner = json.loads(await proc.stdout.readline())
        assert banner["event"] == "listening"
        assert banner["native"][0].startswith("tcp://127.0.0.1:")
        ws = banner["websocket"][0]
        assert ws.startswith("ws://127.0.0.1:") and ws.endswith("/ws")
        alice = await opensocket.connect(banner["native"][0], codec="json")
        bob = await ws_connect(ws)
        await login(alice, "alice")
        await login(bob, "bob")
        await send(alice, {"type": "say", "room": "lobby", "text": "via the cli"})
        await expect(bob, "message", text="via the cli")
        proc.send_signal(signal.SIGTERM)
        assert (await read_until_closed(alice)).code == CloseCode.GOING_AWAY
        with pytest.raises(WsClosed):
            await recv(bob)
        assert bob.close_code == CloseCode.GOING_AWAY
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_cli_rejects_bad_options() -> None:
    parser = argparse.ArgumentParser()
    configure(parser, "chat serve")
    for argv, message in (
        (["--listen", "udp://127.0.0.1:1"], "tcp://, tls:// or unix://"),
        (["--listen", "http://127.0.0.1:1"], "the page and WebSocket go on --web"),
        (["--web", "https://127.0.0.1:0"], "--tls-cert and --tls-key"),
        (["--backplane", "redis://h:1/x"], "the database must be a number"),
        (["--backplane", "http://h:1"], "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]"),
        (["--operator-token", "short"], "at least 8"),
        (["--slow-messages", "0"], "--slow-messages"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            execute(parser.parse_args(argv))


async def test_idle_http_connection_is_dropped_but_a_websocket_stays() -> None:
    async with ChatServer(http_idle=0.2) as srv:
        await srv.listen_web("http://127.0.0.1:0")
        bob = await websocket(srv)
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.web_addresses[0].port)
        async with asyncio.timeout(WAIT):
            assert await reader.read() == b""  # closed by the server, no request sent
        writer.close()
        await writer.wait_closed()
        await login(bob, "bob")  # the WebSocket, older than the idle limit, still works
        await bob.close()
