"""``--reuse-port``: two hub processes share the same native and web ports (SO_REUSEPORT) and,
through one Redis backplane, the same rooms; without the flag the second hub is refused."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect

import opensocket
from opensocket.aio.chat_server import serve_chat
from opensocket.options import SocketOptions

from .hubproc import HubProcess, free_ports, metrics, wait_backplane_up
from .test_redis_backplane import RedisServer
from .test_server import Peer, close_all, expect, send

TRIES = 40  # connections per port: all on one hub by chance has odds 2**-39


@pytest.fixture
async def redis_proc(free_port: int, tmp_path: Path) -> AsyncIterator[RedisServer]:
    proc = RedisServer(free_port, tmp_path)
    await proc.start()
    try:
        yield proc
    finally:
        await proc.kill()


async def _welcome_server(peer: Peer, nick: str) -> str:
    await send(peer, {"type": "hello", "nick": nick})
    return str((await expect(peer, "welcome", nick=nick))["server"])


async def _spread(url: str, websocket: bool) -> dict[str, Peer]:
    """Connect until both hubs answered (bounded); one open client per hub, by its name."""
    found: dict[str, Peer] = {}
    for i in range(TRIES):
        peer: Peer = await (ws_connect(url) if websocket else opensocket.connect(url, codec="json"))
        name = await _welcome_server(peer, f"{'web' if websocket else 'tcp'}{i}")
        if name in found:
            await peer.close()
        else:
            found[name] = peer
        if len(found) == 2:
            return found
    raise AssertionError(f"every connection to {url} landed on {list(found)}")


async def test_two_hubs_share_ports_and_rooms(redis_proc: RedisServer) -> None:
    native_port, web_port = free_ports(2)
    backplane = f"redis://127.0.0.1:{redis_proc.port}/0"
    common = ["--listen", f"tcp://127.0.0.1:{native_port}", "--web", f"http://127.0.0.1:{web_port}"]
    common += ["--reuse-port", "--backplane", backplane]
    hubs = [HubProcess(*common, "--name", name, "--node", name) for name in ("hub-a", "hub-b")]
    try:
        for hub in hubs:
            info = await hub.start()
            assert info.get("native") == [f"tcp://127.0.0.1:{native_port}"], hub.stderr
        await wait_backplane_up(*hubs)
        natives = await _spread(f"tcp://127.0.0.1:{native_port}", websocket=False)
        webs = await _spread(f"ws://127.0.0.1:{web_port}/ws", websocket=True)
        for hub in hubs:  # each process counted its own share of both kinds
            samples = await metrics(hub.web_port)
            assert samples[("opensocket_chat_connections_total", "native")] >= 1
            assert samples[("opensocket_chat_connections_total", "websocket")] >= 1

        alice, bob = natives["hub-a"], webs["hub-b"]  # one per process, talking through Redis
        await close_all(natives["hub-b"], webs["hub-a"])
        for peer, nick in ((alice, "alice"), (bob, "bob")):
            await send(peer, {"type": "nick", "nick": nick})
            await expect(peer, "nick", new=nick)
        await send(alice, {"type": "join", "room": "shared"})
        await expect(alice, "who", room="shared")
        await send(bob, {"type": "join", "room": "shared"})
        await expect(bob, "who", room="shared")
        await expect(alice, "joined", room="shared", nick="bob")
        await send(alice, {"type": "say", "room": "shared", "text": "from hub a"})
        await expect(bob, "message", room="shared", text="from hub a")
        await send(bob, {"type": "say", "room": "shared", "text": "from hub b"})
        await expect(alice, "message", room="shared", text="from hub b")
        await close_all(alice, bob)
        for hub in hubs:
            assert await hub.stop() == 0
    finally:
        for hub in hubs:
            await hub.kill()


async def test_without_reuse_port_the_second_hub_is_refused_clearly() -> None:
    native_port, web_port = free_ports(2)
    ports = ["--listen", f"tcp://127.0.0.1:{native_port}", "--web", f"http://127.0.0.1:{web_port}"]
    first = HubProcess(*ports, "--reuse-port")
    second = HubProcess(*ports)
    try:
        assert (await first.start())["event"] == "listening"
        failure = await second.start()
        assert failure["exit"] == 1
        assert failure["error"].startswith(f"127.0.0.1:{native_port} is already in use")
        assert second.proc is not None
        assert second.proc.returncode == 1
        err = second.stderr.decode()
        assert f"127.0.0.1:{native_port} is already in use" in err
        assert "--reuse-port" in err
        assert "Traceback" not in err
        assert await first.stop() == 0
        assert b"warning: --reuse-port without --backplane: each hub process keeps its own " in (
            first.stderr
        )
    finally:
        await first.kill()
        await second.kill()


async def test_listeners_get_so_reuseport_in_process() -> None:
    """The library path: SocketOptions(reuse_port=True) reaches native and web sockets."""
    opts = SocketOptions(reuse_port=True)
    async with await serve_chat(
        ["tcp://127.0.0.1:0"], ["http://127.0.0.1:0"], socket_options=opts
    ) as one:
        native, web = one.native[0].addresses[0].port, one.web_addresses[0].port
        async with await serve_chat(
            [f"tcp://127.0.0.1:{native}"], [f"http://127.0.0.1:{web}"], socket_options=opts
        ) as two:
            assert two.native[0].addresses[0].port == native
            assert two.web_addresses[0].port == web
            for srv in (one, two):
                for sock in srv._web_servers[0].sockets:
                    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
