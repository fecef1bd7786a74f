"""Regressions from the review of the chat hub (issue 4): ping floods, bad upgrades,
cross-site WebSockets, the Redis password in errors, escapes in the terminal client."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvloop
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

import opensocket
from opensocket.aio import Connection
from opensocket.aio import chat_server as chat_server_module
from opensocket.aio._chat_route import TRANSPORT_HIGH
from opensocket.aio.chat_server import ChatServer, serve_chat
from opensocket.aio.chat_web import WebProtocol, normalize_origin, origin_allowed
from opensocket.chat import SlowClientPolicy
from opensocket.chat.redis_backplane import parse_redis_url, redact_url
from opensocket.cli import main
from opensocket.errors import CloseCode, ConfigError
from opensocket.options import SocketOptions

WAIT = 5.0
PING = 125 * b"p"
SMALL_BUFFERS = SocketOptions(send_buffer=4096)  # the hub's transport fills up sooner


def masked(opcode: int, payload: bytes) -> bytes:
    """A client-to-server WebSocket frame (masked, payload under 126 bytes)."""
    mask = os.urandom(4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + data


def upgrade(
    host: str, *, key: bool = True, version: bytes | None = b"13", extra: str = ""
) -> bytes:
    lines = [f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"]
    if key:
        lines.append(f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version.decode()}\r\n")
    return ("".join(lines) + extra + "\r\n").encode()


@pytest.fixture
async def hub() -> AsyncIterator[ChatServer]:
    srv = await serve_chat([], ["http://127.0.0.1:0"], ws_ping=None)
    yield srv
    await srv.close()


def web_port(srv: ChatServer) -> int:
    port = srv.web_addresses[0].port
    assert port is not None
    return port


async def raw_request(srv: ChatServer, request: bytes) -> bytes:
    """Send ``request`` on a new connection; everything the hub answers before it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port(srv))
    writer.write(request)
    async with asyncio.timeout(WAIT):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


async def flooding_client(srv: ChatServer) -> tuple[socket.socket, WebProtocol]:
    """A WebSocket client that will not read (a tiny receive buffer), and its hub side."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", web_port(srv)))
    await loop.sock_sendall(sock, upgrade(f"127.0.0.1:{web_port(srv)}"))
    head = b""
    async with asyncio.timeout(WAIT):
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 4096)
    assert head.startswith(b"HTTP/1.1 101")
    [proto] = [p for p in srv.web_conns if p.client is not None]
    return sock, proto


async def flood(sock: socket.socket, stop: asyncio.Event | None = None) -> int:
    """Pings without end (bounded: 100 rounds of 1000), never reading the pongs; how many."""
    loop = asyncio.get_running_loop()
    batch = masked(0x9, PING) * 1000
    for rounds in range(100):
        if stop is not None and stop.is_set():
            return rounds * 1000
        await loop.sock_sendall(sock, batch)
    return 100 * 1000


async def until(condition: Any, what: str) -> None:
    """Let the loop run until ``condition()`` (bounded in time)."""
    for _ in range(int(WAIT / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


# ---- B5: a client that floods pings and never reads ---------------------------------------


async def test_ping_flood_without_reading_keeps_the_hub_buffer_bounded(hub: ChatServer) -> None:
    await flood_stays_bounded(hub)


def test_ping_flood_stays_bounded_on_uvloop() -> None:
    async def scenario() -> None:
        srv = await serve_chat([], ["http://127.0.0.1:0"], ws_ping=None)
        try:
            await flood_stays_bounded(srv)
        finally:
            await srv.close()

    uvloop.run(scenario())


async def flood_stays_bounded(hub: ChatServer) -> None:
    """A flood of pings with the client never reading: the hub stops reading, holds one pong."""
    sock, proto = await flooding_client(hub)
    transport = proto.transport
    assert transport is not None
    sender = asyncio.create_task(flood(sock))
    try:
        # Before the fix the hub read all 13 MB and buffered a pong for each ping.
        await until(lambda: sender.done() or not transport.is_reading(), "reading stops")
        assert not sender.done(), "the hub took the whole flood"
        assert proto.write_paused
        for _ in range(20):  # the loop runs on: nothing more is read, nothing more buffered
            await asyncio.sleep(0)
        assert transport.get_write_buffer_size() <= 2 * TRANSPORT_HIGH
        assert not transport.is_reading()
        assert proto.pong is not None and proto.pong.endswith(PING)  # the latest, held
    finally:
        sender.cancel()
        sock.close()


async def test_after_a_ping_flood_the_latest_ping_is_answered_and_reading_resumes() -> None:
    srv = await serve_chat([], ["http://127.0.0.1:0"], ws_ping=None, socket_options=SMALL_BUFFERS)
    sock, proto = await flooding_client(srv)
    transport = proto.transport
    assert transport is not None
    stop = asyncio.Event()
    sender = asyncio.create_task(flood(sock, stop))
    await until(lambda: not transport.is_reading(), "reading stops")
    stop.set()  # the flood ends after the batch in progress; now the client reads
    loop = asyncio.get_running_loop()
    last = bytes((0x8A, 4)) + b"last"  # the pong for the final ping
    data = bytearray()
    async with asyncio.timeout(WAIT):
        while not sender.done():
            data += await loop.sock_recv(sock, 1 << 16)
        pings = sender.result()
        await loop.sock_sendall(sock, masked(0x9, b"last"))
        while not data.endswith(last):
            chunk = await loop.sock_recv(sock, 1 << 16)
            assert chunk, "the hub closed the connection"
            data += chunk
    pongs = data.count(bytes((0x8A, len(PING))) + PING)
    assert 0 < pongs < pings  # pings met while the client was not reading got one answer
    assert transport.is_reading() and not proto.write_paused
    assert srv.clients  # still connected
    sock.close()
    await srv.close()


async def test_a_websocket_client_stuck_over_the_lag_limit_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat_server_module, "LAG_TICK", 0.05)
    policy = SlowClientPolicy(max_lag=0.2)
    srv = await serve_chat(
        [], ["http://127.0.0.1:0"], ws_ping=None, policy=policy, socket_options=SMALL_BUFFERS
    )
    sock, _ = await flooding_client(srv)
    sender = asyncio.create_task(flood(sock))
    try:
        await until(lambda: not srv.clients, "the stuck client is dropped")
        assert srv.hub.counters.drops["slow"] == 1  # type: ignore[attr-defined]
    finally:
        sender.cancel()
    # It learns why: the hub reads (and drops) the rest of the flood while it waits for the
    # client's close frame, so its own close frame is not lost to a reset.
    loop = asyncio.get_running_loop()
    close = struct.pack("!H", CloseCode.SLOW_CONSUMER) + b"too far behind"
    data = bytearray()
    async with asyncio.timeout(WAIT):
        while close not in data:
            chunk = await loop.sock_recv(sock, 1 << 16)
            assert chunk, "the connection ended without the close frame"
            data += chunk
    sock.close()
    await until(lambda: not srv.web_conns, "the hub closes the socket")
    await srv.close()


# ---- B6: a bad upgrade request --------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (upgrade("x", key=False), b"HTTP/1.1 400"),
        (upgrade("x", version=None), b"HTTP/1.1 400"),
        (upgrade("x", version=b"8"), b"HTTP/1.1 426"),
    ],
    ids=["no-key", "no-version", "old-version"],
)
async def test_bad_websocket_handshake_gets_400(
    hub: ChatServer, request_bytes: bytes, status: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    data = await raw_request(hub, request_bytes)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(status)
    assert body.startswith(b"bad websocket handshake")
    if status == b"HTTP/1.1 426":
        assert b"sec-websocket-version: 13" in head.lower()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not hub.clients
    # the port still serves the next client
    async with ws_connect(f"ws://127.0.0.1:{web_port(hub)}/ws") as ws:
        await ws.send(json.dumps({"type": "hello", "nick": "after"}))
        async with asyncio.timeout(WAIT):
            assert json.loads(await ws.recv())["type"] == "welcome"


# ---- B7: cross-site WebSocket hijacking --------------------------------------------------


async def test_a_foreign_origin_is_refused_the_own_page_and_no_origin_are_not(
    hub: ChatServer,
) -> None:
    port = web_port(hub)
    url = f"ws://127.0.0.1:{port}/ws"
    for origin in ("https://evil.example", "null", f"http://127.0.0.2:{port}", "http://127.0.0.1"):
        with pytest.raises(InvalidStatus, match="403"):
            await ws_connect(url, origin=origin)  # type: ignore[arg-type]
    assert not hub.clients
    assert hub.hub.counters.drops.get("web origin refused") == 4  # visible in /metrics
    for origin in (f"http://127.0.0.1:{port}", f"HTTP://127.0.0.1:{port}/", None):
        async with ws_connect(url, origin=origin) as ws:  # type: ignore[arg-type]
            await ws.send(json.dumps({"type": "hello", "nick": "home"}))
            async with asyncio.timeout(WAIT):
                assert json.loads(await ws.recv())["type"] == "welcome"


async def test_allow_origin_lets_a_listed_site_in() -> None:
    srv = await serve_chat(
        [], ["http://127.0.0.1:0"], ws_ping=None, allow_origins=["https://chat.example.com"]
    )
    url = f"ws://127.0.0.1:{web_port(srv)}/ws"
    async with ws_connect(url, origin="https://chat.example.com:443") as ws:  # type: ignore[arg-type]
        await ws.ping()
    with pytest.raises(InvalidStatus, match="403"):
        await ws_connect(url, origin="https://evil.example")  # type: ignore[arg-type]
    await srv.close()
    srv = await serve_chat([], ["http://127.0.0.1:0"], ws_ping=None, allow_origins=["*"])
    async with ws_connect(
        f"ws://127.0.0.1:{web_port(srv)}/ws",
        origin="https://evil.example",  # type: ignore[arg-type]
    ) as ws:
        await ws.ping()
    await srv.close()


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (b"http://127.0.0.1:8070", b"127.0.0.1:8070", (), True),
        (b"http://LOCALHOST:8070", b"localhost:8070", (), True),
        (b"https://chat.example.com", b"chat.example.com", (), True),  # behind a proxy
        (b"https://chat.example.com", b"chat.example.com:443", (), True),
        (b"http://[::1]:8070", b"[::1]:8070", (), True),
        (b"http://127.0.0.1:8071", b"127.0.0.1:8070", (), False),
        (b"http://evil.example:8070", b"127.0.0.1:8070", (), False),
        (b"http://127.0.0.1:8070", None, (), False),
        (b"null", b"127.0.0.1:8070", (), False),
        (b"file://", b"127.0.0.1:8070", (), False),
        (b"http://u@127.0.0.1:8070", b"127.0.0.1:8070", (), False),
        (b"http://127.0.0.1:99999", b"127.0.0.1:99999", (), False),
        (b"https://a.example", b"127.0.0.1:8070", ("https://a.example:443",), True),
        (b"https://a.example:444", b"127.0.0.1:8070", ("https://a.example:443",), False),
        (b"null", b"x", ("*",), True),
    ],
)
def test_origin_rules(
    origin: bytes, host: bytes | None, allowed: tuple[str, ...], ok: bool
) -> None:
    assert origin_allowed(origin, host, frozenset(allowed)) is ok


def test_allow_origin_values() -> None:
    assert normalize_origin("HTTPS://Chat.Example.com/") == "https://chat.example.com:443"
    assert normalize_origin("http://[::1]:8080") == "http://[::1]:8080"
    assert normalize_origin("*") == "*"
    for bad in ("chat.example.com", "https://x/path", "ftp://x", "https://u:p@x", "https://"):
        with pytest.raises(ConfigError, match="not an origin"):
            normalize_origin(bad)


def test_cli_rejects_a_bad_allow_origin(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve", "--listen", "tcp://127.0.0.1:0", "--web", "http://127.0.0.1:0"]
    assert main([*argv, "--allow-origin", "evil.example"]) == 2
    assert "'evil.example' is not an origin" in capsys.readouterr().err


async def test_cli_serve_passes_allow_origin_to_the_hub() -> None:
    args = ["--listen", "tcp://127.0.0.1:0", "--web", "http://127.0.0.1:0", "--json"]
    args += ["--allow-origin", "https://chat.example.com"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "opensocket", "serve", *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            url = json.loads(await proc.stdout.readline())["websocket"][0]
        async with ws_connect(url, origin="https://chat.example.com") as ws:  # type: ignore[arg-type]
            await ws.ping()
        with pytest.raises(InvalidStatus, match="403"):
            await ws_connect(url, origin="https://evil.example")  # type: ignore[arg-type]
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ---- the page's headers --------------------------------------------------------------------


async def test_page_headers(hub: ChatServer) -> None:
    data = await raw_request(hub, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = data.partition(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 200")
    assert "x-content-type-options: nosniff" in head
    assert "referrer-policy: no-referrer" in head
    assert "content-security-policy: frame-ancestors 'none'" in head


# ---- M1: the Redis password --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://user:hunter2@h/1", "rediss://user:***@h/1"),
        ("redis://:hun/ter@2@h/0", "redis://:***@h/0"),  # unescaped / and @ in the password
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:6379/abc",
        "redis://:hunter2@127.0.0.1:port/0",
        "http://:hunter2@127.0.0.1:6379/0",
        "redis://:hunter2@/0",
        "redis://:hunter2@127.0.0.1/0?x=1",
        "redis://:hunter2@[::1/0",
    ],
)
def test_redis_url_errors_hide_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_redis_url(url)
    assert "hunter2" not in str(caught.value)
    assert ":***@" in str(caught.value)


@pytest.mark.parametrize(
    "extra",
    [
        ["--backplane", "redis://:hunter2@127.0.0.1:6379/abc"],
        ["--backplane", "redis://:hunter2@127.0.0.1:6379/0", "--backplane-ca", __file__],
    ],
)
def test_cli_hides_the_redis_password(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve", "--listen", "tcp://127.0.0.1:0", "--web", "http://127.0.0.1:0"]
    assert main([*argv, *extra, "--json"]) == 2
    out, err = capsys.readouterr()
    assert "hunter2" not in out + err
    assert ":***@127.0.0.1:6379" in err


# ---- M2: what a hostile hub can make the terminal client print ----------------------------


async def hostile_hub(text: str, reason: str) -> opensocket.aio.Server:
    """A 'hub' that welcomes, sends a notice with ``text``, and closes with ``reason`` when
    the client sends its first command (so the client is up and has the notice by then)."""

    async def handler(conn: Connection) -> None:
        await conn.recv(timeout=WAIT)  # the hello
        await conn.send({"type": "welcome", "nick": "v", "server": "evil\x1b[2J"})
        await conn.send({"type": "notice", "text": text, "ts": 1.0})
        await conn.recv(timeout=WAIT)  # /rooms, typed on stdin
        await conn.close(CloseCode.POLICY, reason)

    return await opensocket.serve("tcp://127.0.0.1:0", handler, codec="json")


async def run_client(url: str, *args: str) -> tuple[int, bytes, bytes]:
    """``opensocket chat URL --plain`` typing ``/rooms``; its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "opensocket",
        "chat",
        url,
        "--nick",
        "v",
        "--plain",
        "--no-reconnect",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(b"/rooms\n")  # stdin stays open: the hub ends the session
        async with asyncio.timeout(10):
            out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        proc.stdin.close()
    assert proc.returncode is not None
    return proc.returncode, out, err


BAD_TEXT = "a\x9b31mb\u202ec\u2066d\x85e\x1b]0;x\x07"
UNSAFE = [b"\x1b", b"\x07", "\x9b".encode(), "\u202e".encode(), "\u2066".encode(), "\x85".encode()]


@pytest.mark.parametrize("mode", [[], ["--json"]], ids=["text", "json"])
async def test_plain_client_prints_no_escapes_from_the_hub(mode: list[str]) -> None:
    server = await hostile_hub(BAD_TEXT, "bye\x1b]0;pwned\x07\u202e")
    try:
        code, out, err = await run_client(server.url, *mode)
    finally:
        await server.close()
    assert code == 1
    for unsafe in UNSAFE:
        assert unsafe not in out, (unsafe, out)
        assert unsafe not in err, (unsafe, err)
    assert b"policy (1008): bye\n" in err
    if mode:
        notice = [json.loads(line) for line in out.splitlines() if b'"notice"' in line]
        assert notice == [{"type": "notice", "text": BAD_TEXT, "ts": 1.0}]  # escaped, not lost
        assert b"\\u009b" in out and b"\\u202e" in out


@pytest.mark.parametrize("mode", [[], ["--json"]], ids=["text", "json"])
async def test_a_refusal_before_welcome_is_printed_clean(mode: list[str]) -> None:
    async def handler(conn: Connection) -> None:
        await conn.recv(timeout=WAIT)  # the hello
        await conn.close(CloseCode.POLICY, "no\x1b]0;pwned\x07\u202e")

    server = await opensocket.serve("tcp://127.0.0.1:0", handler, codec="json")
    try:
        code, out, err = await run_client(server.url, *mode)
    finally:
        await server.close()
    assert code == 1
    for unsafe in UNSAFE:
        assert unsafe not in out + err, (unsafe, out, err)
    assert b"policy (1008): no" in err
    if mode:
        assert json.loads(out)["exit"] == 1
