"""Two hubs sharing a real redis-server: rooms, presence, nicks, history, bans, outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from opensocket.aio.chat_redis import RedisLink
from opensocket.chat import ChatOptions, Hub, render_metrics
from opensocket.chat.redis_backplane import CHANNEL, RedisBackplane

from .helpers import TOKEN, Harness

INSTALL = (
    "redis-server not found: install the Debian package redis-server (apt-get install redis-server)"
)


class RedisServer:
    """A redis-server of our own on a loopback port, without persistence; killed by PID."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.proc: asyncio.subprocess.Process | None = None
        self.output: list[bytes] = []
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(INSTALL)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        args += ["no", "--dir", str(self.directory)]
        self.proc = proc = await asyncio.create_subprocess_exec(
            binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            while True:
                line = await proc.stdout.readline()
                self.output.append(line)
                if not line:
                    raise AssertionError(f"redis-server exited: {b''.join(self.output)!r}")
                if b"Ready to accept connections" in line:
                    break
        self._drain = asyncio.create_task(self._read_rest(proc.stdout))

    async def _read_rest(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.output.append(line)

    async def kill(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        if self._drain is not None:
            await self._drain
            self._drain = None


@pytest.fixture
async def redis_server(free_port: int, tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(free_port, tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


class Node:
    """One hub with its own RedisBackplane and link; its clients' inboxes in ``h``."""

    def __init__(
        self, name: str, port: int, heartbeat: float = 20.0, nick_ttl: float = 60.0
    ) -> None:
        self.h = Harness(hub=Hub(ChatOptions(operator_token=TOKEN), RedisBackplane(), node=name))
        self.bp = self.h.hub.backplane
        assert isinstance(self.bp, RedisBackplane)
        self.link = RedisLink(
            self.h.hub,
            self.h.apply,
            port=port,
            clock=lambda: self.h.now,
            retry_max=0.1,
            heartbeat=heartbeat,
            nick_ttl=nick_ttl,
        )

    async def crash(self) -> None:
        """Stop the link the way a killed process does: nothing released, nothing said."""
        task, self.link._task = self.link._task, None
        assert task is not None
        self.link._closing = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], *nodes: Node, timeout: float = 5.0) -> None:
    """Wait, event by event, until ``predicate()`` holds (bounded)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            waits = [node.link.changed() for node in nodes]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[tuple[Node, Node]]:
    n1, n2 = Node("n1", redis_server.port), Node("n2", redis_server.port)
    for node in (n1, n2):
        node.link.start()
    try:
        await until(lambda: n1.link.up and n2.link.up, n1, n2)
        yield n1, n2
    finally:
        for node in (n1, n2):
            await node.link.aclose()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis(port=redis_server.port, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def texts(events: list[dict[str, object]]) -> list[object]:
    return [e.get("text") for e in events if e["type"] == "message"]


async def two_users(n1: Node, n2: Node) -> None:
    """alice on n1 and bob on n2, both in room r, inboxes emptied."""
    n1.h.login("a", "alice")
    n1.h.join("a", "r")
    await until(lambda: n2.bp.room_meta("r") is not None, n2)
    n2.h.login("b", "bob")
    n2.h.join("b", "r")
    await until(lambda: n1.bp.members("r") == ["alice", "bob"], n1)
    await until(lambda: any(e["type"] == "joined" for e in n1.h.inbox["a"]), n1)
    n1.h.take_all()
    n2.h.take_all()


async def test_two_hubs_share_rooms_presence_and_history(
    nodes: tuple[Node, Node], redis: Redis
) -> None:
    n1, n2 = nodes
    n1.h.login("a", "alice")
    n1.h.join("a", "r")
    n1.h.cmd("a", "topic", room="r", topic="shared")
    n1.h.cmd("a", "say", room="r", text="before bob")
    n1.h.take_all()
    await until(lambda: len(n2.bp.history("r")) == 1, n2)
    n2.h.login("b", "bob")
    events = n2.h.join("b", "R")
    assert [e["type"] for e in events] == ["joined", "topic", "who", "history"]
    assert events[1]["topic"] == "shared"
    assert events[2]["nicks"] == ["alice", "bob"]
    assert events[3]["messages"][0]["text"] == "before bob"
    await until(lambda: bool(n1.h.inbox["a"]), n1)
    assert n1.h.take("a") == [{"type": "joined", "room": "r", "nick": "bob", "ts": 1000.0}]
    n2.h.cmd("b", "say", room="r", text="hi from n2")
    await until(lambda: bool(n1.h.inbox["a"]), n1)
    assert texts(n1.h.take("a")) == ["hi from n2"]
    n1.h.cmd("a", "msg", to="BOB", text="psst")
    await until(lambda: len(n2.h.inbox["b"]) == 2, n2)
    assert n2.h.take("b")[1] == {
        "type": "private",
        "nick": "alice",
        "to": "BOB",
        "text": "psst",
        "ts": 1000.0,
    }
    assert n1.h.take("a")[0]["type"] == "private"  # the sender's copy
    n1.h.cmd("a", "rooms")
    assert n1.h.take("a")[0]["rooms"] == [
        {"name": "r", "members": 2, "topic": "shared", "locked": False}
    ]
    await n1.link.flush()
    await n2.link.flush()
    # what Redis itself holds (the documented keys)
    assert await redis.get("chat:nick:alice") == "n1"
    assert await redis.get("chat:nick:bob") == "n2"
    assert 0 < await redis.pttl("chat:nick:bob") <= 60_000
    assert (await redis.hgetall("chat:room:r"))["topic"] == "shared"
    assert await redis.hgetall("chat:room:r:members") == {"alice": "alice", "bob": "bob"}
    assert await redis.zscore("chat:rooms", "r") == 2
    history = await redis.lrange("chat:room:r:history", 0, -1)
    assert [h for h in history if "before bob" in h] and len(history) == 2
    # nick uniqueness through the mirror, and presence when bob leaves
    n2.h.connect("c")
    n2.h.cmd("c", "hello", nick="ALICE")
    assert n2.h.error("c") == "nick_taken"
    n2.h.disconnect("b", "gone")
    await until(lambda: bool(n1.h.inbox["a"]), n1)
    assert n1.h.take("a") == [{"type": "quit", "nick": "bob", "ts": 1000.0, "reason": "gone"}]
    await n2.link.flush()
    assert await redis.get("chat:nick:bob") is None
    assert await redis.hgetall("chat:room:r:members") == {"alice": "alice"}


async def test_nick_race_across_hubs_has_one_winner(nodes: tuple[Node, Node], redis: Redis) -> None:
    n1, n2 = nodes
    n1.h.connect("a")
    n2.h.connect("b")
    n1.h.cmd("a", "hello", nick="zed")  # both claim before either reaches Redis:
    n2.h.cmd("b", "hello", nick="Zed")  # each mirror says free, Redis decides
    assert n1.h.take("a")[0]["type"] == n2.h.take("b")[0]["type"] == "welcome"
    await until(lambda: bool(n1.h.inbox["a"]) or bool(n2.h.inbox["b"]), n1, n2)
    await n1.link.flush()
    await n2.link.flush()
    winner = await redis.get("chat:nick:zed")
    loser, client = (n2, "b") if winner == "n1" else (n1, "a")
    assert winner in ("n1", "n2")
    events = loser.h.take(client)
    assert events[0]["code"] == "nick_taken" and "Guest1" in events[0]["message"]
    assert events[1] == {"type": "nick", "old": events[1]["old"], "new": "Guest1", "ts": 1000.0}
    assert n1.h.take_all() == {} and n2.h.take_all() == {}  # the winner noticed nothing
    assert await redis.get("chat:nick:guest1") == loser.h.hub.node
    loser.h.cmd(client, "nick", nick="ZED")  # the loser's mirror now knows the owner
    assert loser.h.error(client) == "nick_taken"


async def test_ban_and_kick_travel_through_redis(nodes: tuple[Node, Node], redis: Redis) -> None:
    n1, n2 = nodes
    await two_users(n1, n2)
    n2.h.login("c", "carol", ip="10.9.9.9")
    await until(lambda: n1.bp.nick_owner("carol") == "n2", n1)
    n1.h.cmd("a", "kick", nick="bob", room="r", token=TOKEN)
    await until(lambda: bool(n2.h.inbox["b"]), n2)
    assert n2.h.take("b")[0] == {"type": "kicked", "by": "alice", "room": "r"}
    n1.h.cmd("a", "ban", nick="carol", by_ip=True, token=TOKEN)
    await until(lambda: "c" in n2.h.closed, n2)
    await until(lambda: n1.bp.is_banned("ip", "10.9.9.9"), n1)
    n1.h.connect("c2", ip="10.9.9.9")  # the IP ban n2 made holds on n1
    assert "c2" in n1.h.closed
    await n1.link.flush()
    await n2.link.flush()
    assert await redis.smembers("chat:bans:nick") == {"carol"}
    assert await redis.smembers("chat:bans:ip") == {"10.9.9.9"}


async def test_broken_channel_messages_are_counted(nodes: tuple[Node, Node], redis: Redis) -> None:
    n1, n2 = nodes
    await redis.publish(CHANNEL, "not json")
    await redis.publish(CHANNEL, '{"origin":"x","kind":"weird"}')
    await redis.publish(CHANNEL, '{"origin":"x","kind":"state","op":"nope","key":"k"}')
    bad = lambda: (n1.h.hub.counters.remote_bad, n2.h.hub.counters.remote_bad)  # noqa: E731
    await until(lambda: bad() == (3, 3), n1, n2)
    assert n1.h.take_all() == {} and n2.h.take_all() == {}


async def test_outage_keeps_local_users_served_then_resyncs(
    nodes: tuple[Node, Node], redis_server: RedisServer, redis: Redis
) -> None:
    n1, n2 = nodes
    await two_users(n1, n2)
    n1.h.cmd("a", "lock", room="r", password="pw")
    n1.h.cmd("a", "say", room="r", text="before the outage")
    await until(lambda: texts(n2.h.inbox["b"]) == ["before the outage"], n2)
    n1.h.join("a", "idle")
    n1.h.cmd("a", "say", room="idle", text="in a room nobody is in any more")
    n1.h.cmd("a", "leave", room="idle")  # its history idles out in Redis: not to come back
    n1.h.take_all()
    n2.h.take_all()
    await redis_server.kill()
    await until(lambda: not n1.link.up and not n2.link.up, n1, n2)
    assert n1.link.outages == n2.link.outages == 1
    assert "opensocket_chat_backplane_up 0" in render_metrics(n1.h.hub.metrics())
    # local users keep talking; a new local user registers and joins the locked room
    n1.h.login("c", "carol")
    n1.h.join("c", "r", password="pw")
    n2.h.now = n1.h.now = 1001.0
    n1.h.cmd("c", "say", room="r", text="during the outage")
    assert texts(n1.h.take("a")) == ["during the outage"]
    n1.h.take("c")
    n2.h.now = 1002.0
    n2.h.cmd("b", "say", room="r", text="bob alone")
    assert texts(n2.h.take("b")) == ["bob alone"]
    await redis_server.start()  # empty: no persistence
    await until(lambda: n1.link.resyncs == n2.link.resyncs == 2, n1, n2)
    await until(
        lambda: n1.bp.members("r") == n2.bp.members("r") == ["alice", "bob", "carol"], n1, n2
    )
    await n1.link.flush()
    await n2.link.flush()
    assert "opensocket_chat_backplane_up 1" in render_metrics(n2.h.hub.metrics())
    assert await redis.hgetall("chat:room:r:members") == {
        "alice": "alice",
        "bob": "bob",
        "carol": "carol",
    }
    assert (await redis.hgetall("chat:room:r"))["password"]  # still locked
    nick_owners = {k: await redis.get(f"chat:nick:{k}") for k in ("alice", "bob", "carol")}
    assert nick_owners == {"alice": "n1", "bob": "n2", "carol": "n1"}
    # Redis came back empty: the lines both hubs showed are put back once, each side's
    # outage lines too, and every mirror holds what Redis holds
    stored = [json.loads(line)["text"] for line in await redis.lrange("chat:room:r:history", 0, -1)]
    said = ["before the outage", "during the outage", "bob alone"]
    assert sorted(stored) == sorted(said)
    for node in (n1, n2):
        assert [entry["text"] for entry in node.bp.history("r")] == said  # in time order
    assert not await redis.exists("chat:room:idle:history", "chat:room:idle")
    assert n1.bp.history("idle") == []  # nor in the mirror, for a room made again later
    # the cluster works again, and nobody got the other side's outage messages
    n1.h.cmd("a", "say", room="r", text="back")
    await until(lambda: bool(n2.h.inbox["b"]), n2)
    assert texts(n2.h.take("b")) == ["back"]
    n2.h.cmd("b", "who", room="r")
    assert n2.h.take("b")[0]["nicks"] == ["alice", "bob", "carol"]
    n2.h.connect("x")
    n2.h.cmd("x", "hello", nick="carol")
    assert n2.h.error("x") == "nick_taken"
    assert texts(n1.h.take("c")) == ["back"]


async def test_heartbeat_renews_and_restores_own_nicks(
    redis_server: RedisServer, redis: Redis
) -> None:
    node = Node("n1", redis_server.port, heartbeat=0.02)
    node.link.start()
    try:
        await until(lambda: node.link.up, node)
        node.h.login("a", "alice")
        node.h.login("b", "bob")
        await node.link.flush()
        await redis.pexpire("chat:nick:alice", 1000)  # about to expire
        await redis.delete("chat:nick:bob")  # expired (or lost)
        await redis.set("chat:nick:carol", "n9")  # another node's: left alone
        beats = node.link.heartbeats
        await until(lambda: node.link.heartbeats >= beats + 2, node)
        assert await redis.pttl("chat:nick:alice") > 1000
        assert await redis.get("chat:nick:bob") == "n1"
        assert await redis.get("chat:nick:carol") == "n9"
    finally:
        await node.link.aclose()
    assert await redis.get("chat:nick:alice") is None  # released on close


async def test_a_hub_that_dies_leaves_no_ghosts_and_frees_its_nicks(
    redis_server: RedisServer, redis: Redis
) -> None:
    fast = {"heartbeat": 0.05, "nick_ttl": 0.3}
    n1, n2, n3 = (Node(name, redis_server.port, **fast) for name in ("n1", "n2", "n3"))
    for node in (n1, n2, n3):
        node.link.start()
    try:
        await until(lambda: n1.link.up and n2.link.up and n3.link.up, n1, n2, n3)
        await two_users(n1, n2)  # alice on n1, bob on n2, in room r
        n3.h.login("c", "carol")
        n3.h.join("c", "r")
        n2.h.login("d", "dave")  # in no room: only his nick is left behind
        await until(lambda: n1.bp.members("r") == ["alice", "bob", "carol"], n1)
        await until(lambda: n1.bp.nick_owner("dave") == "n2", n1)
        n1.h.take_all()
        n3.h.take_all()
        await n2.crash()  # killed: bob stays listed in r, dave and bob stay taken
        gone = {"type": "quit", "nick": "bob", "ts": 1000.0, "reason": "their hub stopped"}
        for node, client in ((n1, "a"), (n3, "c")):
            await until(lambda node=node: node.bp.members("r") == ["alice", "carol"], node)
            await until(lambda node=node, c=client: bool(node.h.inbox[c]), node)
            assert node.h.take(client) == [gone]  # one notice, from one node
            await until(lambda node=node: node.bp.nick_owner("dave") is None, node)
        await n1.link.flush()
        await n3.link.flush()
        assert await redis.hgetall("chat:room:r:members") == {"alice": "alice", "carol": "carol"}
        assert n1.h.hub.metrics().ghosts + n3.h.hub.metrics().ghosts == 1
        n1.h.login("b2", "bob")  # the nicks are free again
        n3.h.login("d2", "dave")
        await n1.link.flush()
        await n3.link.flush()
        assert await redis.get("chat:nick:bob") == "n1"
        assert await redis.get("chat:nick:dave") == "n3"
        beats = n1.link.heartbeats
        await until(lambda: n1.link.heartbeats >= beats + 3, n1)
        assert n1.bp.members("r") == ["alice", "carol"] and not n1.h.inbox["a"]  # live: kept
    finally:
        for node in (n1, n3):
            await node.link.aclose()


async def test_a_nick_missing_at_one_sweep_only_is_not_a_ghost(
    nodes: tuple[Node, Node], redis: Redis
) -> None:
    n1, n2 = nodes
    await two_users(n1, n2)  # alice on n1, bob on n2, in room r
    await n2.link.flush()
    client = Redis(port=redis.connection_pool.connection_kwargs["port"])
    try:
        sweep = n1.link._sweep  # the heartbeat's step, driven here one at a time
        await redis.delete("chat:nick:bob")  # gone for a moment (a Redis restart) ...
        await sweep(client)
        await redis.set("chat:nick:bob", "n2")  # ... and renewed by its hub
        await sweep(client)
        await sweep(client)
        assert n1.bp.members("r") == ["alice", "bob"] and not n1.h.inbox["a"]
        assert n1.bp.nick_owner("bob") == "n2"
        await redis.delete("chat:nick:bob")  # missing at two sweeps in a row: left behind
        await sweep(client)
        assert n1.bp.members("r") == ["alice", "bob"]
        await sweep(client)
        assert n1.bp.members("r") == ["alice"] and n1.bp.nick_owner("bob") is None
        assert [e["type"] for e in n1.h.take("a")] == ["quit"]
    finally:
        await client.aclose()


async def test_a_nick_ttl_shorter_than_two_heartbeats_is_refused() -> None:
    from opensocket.errors import ConfigError

    with pytest.raises(ConfigError, match="must exceed two heartbeats"):
        Node("n1", 6379, heartbeat=5.0, nick_ttl=8.0)  # nothing connects: refused at once


async def test_missing_redis_server_fails_with_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        await RedisServer(1, tmp_path).start()
