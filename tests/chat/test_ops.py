"""Running the hub: limits on the web port, WebSocket pings that find dead browsers, secrets
kept out of ``ps``, and a Redis backplane with a password, a database number and TLS."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop
from redis.asyncio import Redis
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

import opensocket
from opensocket.aio.chat_server import ChatServer, serve_chat
from opensocket.chat import ChatOptions
from opensocket.chat.redis_backplane import RedisTarget, parse_redis_url
from opensocket.cli import main
from opensocket.cli.chat_serve import _chat_options, configure
from opensocket.errors import ConfigError
from opensocket.options import ServerLimits, TLSOptions

from ..tlsutil import make_pki
from .hubproc import HubProcess, OptionRedis, metrics, wait_backplane_up
from .test_server import close_all, expect, login, native, send, websocket

WAIT = 5.0
PASSWORD = "redis pass: w0rd"  # a space and a colon, quoted in URLs


async def _web_server(limits: ServerLimits, **kw: object) -> ChatServer:
    srv = ChatServer(**kw)  # type: ignore[arg-type]
    await srv.listen_web("http://127.0.0.1:0", limits=limits)
    return srv


async def _refused(srv: ChatServer) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as refused:
        await websocket(srv)
    return refused.value


# ---- the web port's connection limits -------------------------------------------------------


async def test_web_port_caps_connections_per_ip_and_releases_them() -> None:
    async with await _web_server(ServerLimits(max_connections_per_ip=2)) as srv:
        one, two = await websocket(srv), await websocket(srv)
        refusal = await _refused(srv)
        assert refusal.response.status_code == 503
        assert b"too many connections from 127.0.0.1 (limit 2)" in refusal.response.body
        await login(one, "one")  # the admitted ones are not disturbed
        await one.close()
        for _ in range(100):  # bounded: the hub releases the slot as the socket closes
            if len(srv.web_conns) == 1:
                break
            await asyncio.sleep(0)
        three = await websocket(srv)
        await login(three, "three")
        assert srv.hub.metrics().drops == {"web connection limit": 1}  # the refusal counted
        await close_all(two, three)


async def test_web_port_access_list_and_rate() -> None:
    async with await _web_server(ServerLimits(deny=("127.0.0.0/8",))) as srv:
        refusal = await _refused(srv)
        assert refusal.response.status_code == 403
        assert refusal.response.body == b"127.0.0.1 is denied by the access list\n"
    async with await _web_server(ServerLimits(rate=0.001, burst=2)) as srv:
        first, second = await websocket(srv), await websocket(srv)
        refusal = await _refused(srv)
        assert refusal.response.status_code == 429
        assert b"too many new connections from 127.0.0.1" in refusal.response.body
        await close_all(first, second)


async def test_https_web_port_refuses_before_tls_and_serves_admitted(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    context = ssl.create_default_context(cafile=pki.ca_cert)
    async with ChatServer() as srv:
        await srv.listen_web(
            "https://127.0.0.1:0", tls=pki.server_tls(), limits=ServerLimits(max_connections=1)
        )
        url = srv.web_urls[0].replace("https://", "wss://") + "ws"
        first = await ws_connect(url, ssl=context)
        with pytest.raises((OSError, ssl.SSLError, EOFError)):
            await ws_connect(url, ssl=context, open_timeout=WAIT)  # aborted, no handshake
        await login(first, "first")
        await first.close()


async def test_limits_reach_native_and_web_listeners_of_serve_chat() -> None:
    limits = ServerLimits(max_connections_per_ip=1)
    async with await serve_chat(
        ["tcp://127.0.0.1:0"], ["http://127.0.0.1:0"], limits=limits
    ) as srv:
        alice, bob = await native(srv), await websocket(srv)  # one each: separate counts
        await login(alice, "alice")
        await login(bob, "bob")
        assert (await _refused(srv)).response.status_code == 503
        await close_all(alice, bob)


# ---- WebSocket pings -------------------------------------------------------------------------


class DeadBrowser:
    """A WebSocket client that registers, joins, and then never reads again (no pongs)."""

    async def open(self, srv: ChatServer, nick: str) -> None:
        port = srv.web_addresses[0].port
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        ws = WSConnection(ConnectionType.CLIENT)
        self.writer.write(ws.send(Request(host="127.0.0.1", target="/ws")))
        async with asyncio.timeout(WAIT):
            while not any(isinstance(e, AcceptConnection) for e in ws.events()):
                ws.receive_data(await self.reader.read(4096))
        for command in ({"type": "hello", "nick": nick}, {"type": "join", "room": "lobby"}):
            self.writer.write(ws.send(TextMessage(data=json.dumps(command))))

    async def wait_closed_by_server(self) -> None:
        async with asyncio.timeout(WAIT):
            while await self.reader.read(65536):
                pass  # pings and events, unanswered
        self.writer.close()


async def test_a_browser_that_stops_answering_pings_is_dropped() -> None:
    async with ChatServer(ws_ping=0.1, ws_ping_timeout=0.3) as srv:
        await srv.listen_web("http://127.0.0.1:0")
        alive = await websocket(srv)  # the websockets client answers pings by itself
        await login(alive, "alive")
        dead = DeadBrowser()
        await dead.open(srv, "dead")
        await expect(alive, "joined", nick="dead", room="lobby")
        quit_event = await expect(alive, "quit", nick="dead")
        assert quit_event["reason"] == "no answer to a ping for 0.3s"
        await dead.wait_closed_by_server()
        await send(alive, {"type": "say", "room": "lobby", "text": "still here"})
        await expect(alive, "message", nick="alive", text="still here")  # pinged, and alive
        samples = await metrics(srv.web_addresses[0].port)
        assert samples[("opensocket_chat_drops_total", "ping timeout")] == 1
        await alive.close()


def test_ping_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        asyncio.run(_make(ws_ping=0.0))
    with pytest.raises(ConfigError, match="must be positive"):
        asyncio.run(_make(ws_ping_timeout=-1.0))


async def _make(**kw: float) -> None:
    ChatServer(**kw)  # type: ignore[arg-type]


# ---- secrets out of ps -----------------------------------------------------------------------


def _options(*argv: str) -> ChatOptions:
    parser = argparse.ArgumentParser()
    configure(parser, "chat serve")
    return _chat_options(parser.parse_args(list(argv)))


def test_password_and_token_from_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pass"
    secret.write_text("from the file\nsecond line ignored\n")
    monkeypatch.setenv("HUB_TOKEN", "token from env")
    options = _options("--password-file", str(secret), "--operator-token-env", "HUB_TOKEN")
    assert options.password == "from the file"
    assert options.operator_token == "token from env"
    assert _options("--password", "visible").password == "visible"
    assert _options().password is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--password-env", "HUB_UNSET_VAR"], "--password-env: the environment variable"),
        (["--operator-token-file", "/no/such/file"], "--operator-token-file: cannot read"),
        (["--password-file", "EMPTY"], "is empty: put the password on its first line"),
        (["--operator-token-env", "HUB_SHORT"], "--operator-token must be at least 8"),
    ],
)
def test_bad_secrets_are_usage_errors(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    monkeypatch.setenv("HUB_SHORT", "short")
    argv = [str(empty) if a == "EMPTY" else a for a in argv]
    with pytest.raises(ConfigError, match=message):
        _options(*argv)


def test_password_and_its_env_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--password", "x", "--password-env", "Y"]) == 2
    assert "not allowed with argument --password" in capsys.readouterr().err


async def test_hub_process_reads_secrets_from_env_and_file(tmp_path: Path) -> None:
    (tmp_path / "pass").write_text("door-password\n")
    hub = HubProcess(
        *("--listen", "tcp://127.0.0.1:0", "--web", "http://127.0.0.1:0"),
        *("--password-file", str(tmp_path / "pass"), "--operator-token-env", "HUB_OP"),
        env={"HUB_OP": "operator-secret"},
    )
    try:
        info = await hub.start()
        assert info["terminal"].endswith("--nick NAME --room lobby --password PASSWORD")
        with open(f"/proc/{hub.proc.pid}/cmdline", "rb") as handle:  # type: ignore[union-attr]
            cmdline = handle.read()
        assert b"door-password" not in cmdline
        assert b"operator-secret" not in cmdline
        stranger = await opensocket.connect(hub.native, codec="json")
        await send(stranger, {"type": "hello", "nick": "stranger"})
        assert (await expect(stranger, "error"))["code"] == "bad_password"
        op = await opensocket.connect(hub.native, codec="json")
        await send(op, {"type": "hello", "nick": "op", "password": "door-password"})
        await expect(op, "welcome", nick="op")
        await send(op, {"type": "kick", "nick": "nobody", "token": "operator-secret"})
        assert (await expect(op, "error"))["code"] != "bad_token"  # the token was accepted
        await close_all(stranger, op)
        assert await hub.stop() == 0
    finally:
        await hub.kill()


# ---- Redis backplane: URL, password, database, TLS -------------------------------------------


def test_redis_urls() -> None:
    assert parse_redis_url("redis://h") == RedisTarget("h", 6379, 0)
    target = parse_redis_url("rediss://user:p%40ss@[::1]:6380/7")
    assert target == RedisTarget("::1", 6380, 7, "user", "p@ss", tls=True)
    assert str(target) == "rediss://user:***@[::1]:6380/7"  # logs never show the password
    assert "p@ss" not in repr(target)
    for url, message in (
        ("http://h:1", "not a Redis address"),
        ("redis://:1", "has no host"),
        ("redis://h:99999", "the port must be a number"),
        ("redis://h/one", "the database must be a number"),
        ("redis://h/0?ssl=1", "options after ? or #"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_redis_url(url)


@pytest.fixture
async def locked_redis(free_port: int, tmp_path: Path) -> AsyncIterator[OptionRedis]:
    proc = OptionRedis(free_port, tmp_path, "--requirepass", PASSWORD)
    await proc.start()
    try:
        yield proc
    finally:
        await proc.kill()


def _url(port: int, db: int, password: str = PASSWORD, scheme: str = "redis") -> str:
    quoted = password.replace("%", "%25").replace(" ", "%20").replace(":", "%3A")
    return f"{scheme}://:{quoted}@127.0.0.1:{port}/{db}"


async def _two_hubs_talk(url: str, tls: TLSOptions | None = None) -> None:
    one = await serve_chat(["tcp://127.0.0.1:0"], [], redis=url, redis_tls=tls, node="one")
    two = await serve_chat(["tcp://127.0.0.1:0"], [], redis=url, redis_tls=tls, node="two")
    try:
        for srv in (one, two):
            assert srv.link is not None
            await srv.link.wait_until(lambda srv=srv: srv.link is not None and srv.link.up)
        alice, bob = await native(one), await native(two)
        await login(alice, "alice")
        await login(bob, "bob")
        await expect(alice, "joined", nick="bob", room="lobby")
        await send(bob, {"type": "say", "room": "lobby", "text": "across hubs"})
        await expect(alice, "message", nick="bob", text="across hubs")
        await close_all(alice, bob)
    finally:
        await one.close()
        await two.close()


async def test_backplane_with_password_and_database(locked_redis: OptionRedis) -> None:
    await _two_hubs_talk(_url(locked_redis.port, 3))
    async with Redis(port=locked_redis.port, password=PASSWORD, db=3) as db3:
        assert await db3.keys("chat:*")  # the rooms' history stayed in database 3
    async with Redis(port=locked_redis.port, password=PASSWORD, db=0) as db0:
        assert await db0.keys("chat:*") == []


async def test_wrong_redis_password_is_reported_and_the_hub_stays_local(
    locked_redis: OptionRedis, caplog: pytest.LogCaptureFixture
) -> None:
    url = _url(locked_redis.port, 0, password="wrong")
    async with await serve_chat(["tcp://127.0.0.1:0"], [], redis=url, node="lost") as srv:
        link = srv.link
        assert link is not None
        await link.wait_until(lambda: "check the password in --backplane" in link.last_error)
        assert not link.up
        assert srv.hub.counters.backplane_up == 0
        alice = await native(srv)
        await login(alice, "alice")  # local users are still served
        await alice.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("redis://:***@127.0.0.1" in w and "check the password" in w for w in warnings)
    assert not any("wrong" in w for w in warnings)


async def test_unreachable_redis_at_start_is_said_once(
    free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://127.0.0.1:{free_port}/0"  # nothing listens there
    async with await serve_chat(["tcp://127.0.0.1:0"], [], redis=url, node="alone") as srv:
        link = srv.link
        assert link is not None
        link.retry_max = 0.01
        await link.wait_until(lambda: link.last_error != "")
        first = link.last_error
        await link.changed()  # the next attempt fails the same way: logged at debug only
        await link.wait_until(lambda: link.last_error == first)
        alice = await native(srv)
        await login(alice, "alice")  # local users are served meanwhile
        await alice.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    said = [w for w in warnings if "serving local users only, retrying" in w]
    assert len(said) == 1, warnings
    assert f"redis://127.0.0.1:{free_port}/0" in said[0]


async def test_hub_process_takes_the_redis_password_from_env(locked_redis: OptionRedis) -> None:
    hub = HubProcess(
        *("--listen", "tcp://127.0.0.1:0", "--web", "http://127.0.0.1:0"),
        *("--backplane", f"redis://127.0.0.1:{locked_redis.port}/5"),
        *("--backplane-password-env", "HUB_REDIS_PW"),
        env={"HUB_REDIS_PW": PASSWORD},
    )
    try:
        info = await hub.start()
        assert info["backplane"] == f"redis://:***@127.0.0.1:{locked_redis.port}/5"
        await wait_backplane_up(hub)
        assert await hub.stop() == 0
    finally:
        await hub.kill()


async def test_backplane_over_tls(free_port: int, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with socket.socket() as probe:  # a second port: the plain one stays closed
        probe.bind(("127.0.0.1", 0))
        tls_port = probe.getsockname()[1]
    proc = OptionRedis(
        free_port,
        tmp_path,
        *("--tls-port", str(tls_port), "--tls-cert-file", pki.server_cert),
        *("--tls-key-file", pki.server_key, "--tls-ca-cert-file", pki.ca_cert),
        *("--tls-auth-clients", "no", "--requirepass", PASSWORD),
    )
    await proc.start()
    try:
        url = _url(tls_port, 1, scheme="rediss")
        await _two_hubs_talk(url, TLSOptions(ca_file=pki.ca_cert))
    finally:
        await proc.kill()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backplane-ca", "ca.pem"], "need --backplane redis://"),
        (["--backplane", "redis://h:1/0", "--backplane-ca", "ca.pem"],
         "--backplane-ca applies to rediss:// (TLS) only: use rediss://h:1/0"),
        (["--backplane", "rediss://h:1/0", "--backplane-cert", "c.pem"],
         "--backplane-cert and --backplane-key go together"),
        (["--backplane", "rediss://h:1/0", "--backplane-ca", "/no/ca.pem"],
         "--backplane-ca: /no/ca.pem is not a file"),
    ],
)  # fmt: skip
def test_backplane_option_errors(argv: list[str], message: str) -> None:
    from opensocket.cli.chat_serve import _backplane

    parser = argparse.ArgumentParser()
    configure(parser, "chat serve")
    with pytest.raises(ConfigError, match=re.escape(message)):
        _backplane(parser.parse_args(argv))


def test_web_port_on_uvloop(tmp_path: Path) -> None:
    """The admission, TLS hand-over and ping paths on uvloop (the CLI's default loop)."""
    pki = make_pki(tmp_path)

    async def scenario() -> None:
        async with ChatServer(ws_ping=0.05, ws_ping_timeout=0.2) as srv:
            await srv.listen_web("http://127.0.0.1:0", limits=ServerLimits(max_connections=2))
            await srv.listen_web("https://127.0.0.1:0", tls=pki.server_tls())
            alive = await websocket(srv)
            await login(alive, "alive")
            dead = DeadBrowser()
            await dead.open(srv, "dead")
            assert (await _refused(srv)).response.status_code == 503
            wss = srv.web_urls[1].replace("https://", "wss://") + "ws"
            secure = await ws_connect(wss, ssl=ssl.create_default_context(cafile=pki.ca_cert))
            await login(secure, "secure")
            await expect(alive, "quit", nick="dead")  # pings went unanswered
            await dead.wait_closed_by_server()
            await send(secure, {"type": "say", "room": "lobby", "text": "over wss on uvloop"})
            await expect(alive, "message", text="over wss on uvloop")
            await close_all(alive, secure)

    uvloop.run(scenario())
