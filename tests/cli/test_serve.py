"""``opensocket serve`` is the chat hub: a banner that says how to join, clients of every kind
in one room, a clean exit on SIGTERM/SIGINT, clear errors for busy ports."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import signal
import socket
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsClosed

import opensocket
from opensocket.cli import main
from opensocket.errors import CloseCode, ConnectionClosed

from .conftest import run_cli

PORT_0 = ["--listen", "tcp://127.0.0.1:0", "--web", "http://127.0.0.1:0"]
WAIT = 5.0


def _banner(server: Any) -> list[str]:
    lines = []
    for _ in range(30):
        line = server.line().rstrip("\n")
        lines.append(line)
        if line == "press Ctrl-C to stop":
            return lines
    raise AssertionError(f"no end of banner in {lines}")


def _find(lines: list[str], pattern: str) -> re.Match[str]:
    for line in lines:
        found = re.fullmatch(pattern, line)
        if found:
            return found
    raise AssertionError(f"{pattern!r} not in {lines}")


async def _recv(peer: Any) -> dict[str, Any]:
    if isinstance(peer, opensocket.Connection):
        event: dict[str, Any] = await peer.recv(timeout=WAIT)
        return event
    async with asyncio.timeout(WAIT):
        decoded: dict[str, Any] = json.loads(await peer.recv())
        return decoded


async def _expect(peer: Any, kind: str, **fields: Any) -> dict[str, Any]:
    for _ in range(100):
        event = await _recv(peer)
        if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
            return event
    raise AssertionError(f"no {kind} {fields}")


async def _send(peer: Any, command: dict[str, Any]) -> None:
    if isinstance(peer, opensocket.Connection):
        await peer.send(command)
    else:
        await peer.send(json.dumps(command))


async def _login(peer: Any, nick: str) -> None:
    await _send(peer, {"type": "hello", "nick": nick})
    await _expect(peer, "welcome", nick=nick)
    await _send(peer, {"type": "join", "room": "lobby"})
    await _expect(peer, "who", room="lobby")


async def _drain(peer: Any) -> None:
    """Read until the connection ends (its exception propagates); bounded."""
    for _ in range(100):
        await _recv(peer)


async def _run_snippet(lines: list[str]) -> Any:
    """Run the banner's ``>>>`` lines here, as ``python -m asyncio`` would."""
    code = "\n".join(line.split(">>> ", 1)[1] for line in lines)
    compiled = compile(code, "<banner>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {}
    result = eval(compiled, namespace)
    if result is not None:
        await result
    return namespace["client"]


async def test_serve_is_the_hub_and_its_banner_says_how_to_join(spawn: Any) -> None:
    server = spawn("serve", *PORT_0, "--no-uvloop")
    banner = _banner(server)
    assert banner[0] == "opensocket chat hub is running"
    native = _find(banner, r"  native clients  (tcp://127\.0\.0\.1:\d+)   .*codec json\)")[1]
    page = _find(banner, r"  web             (http://127\.0\.0\.1:\d+/)   \(WebSocket .*\)")[1]
    assert f"  in a browser:    open {page} and pick a nick" in banner
    assert f"  in a terminal:   opensocket chat {native} --nick NAME --room lobby" in banner
    assert f"  metrics:         curl {page}metrics" in banner
    snippet = [line for line in banner if ">>> " in line]
    assert snippet[0] == "    >>> import opensocket.chat"

    alice = await opensocket.connect(native, codec="json")
    bob = await ws_connect(page.replace("http://", "ws://") + "ws")
    await _login(alice, "alice")
    await _login(bob, "bob")
    await _send(alice, {"type": "say", "room": "lobby", "text": "from a terminal"})
    await _expect(bob, "message", nick="alice", text="from a terminal")
    bot = await _run_snippet(snippet)  # the printed Python joins lobby and says hello
    try:
        await _expect(alice, "message", nick="bot", text="hello from Python")
        await _expect(bob, "message", nick="bot", text="hello from Python")
    finally:
        await bot.close()

    server.popen.send_signal(signal.SIGTERM)
    with pytest.raises(ConnectionClosed) as closed:
        await _drain(alice)
    assert closed.value.code == CloseCode.GOING_AWAY
    with pytest.raises(WsClosed):
        await _drain(bob)
    assert bob.close_code == CloseCode.GOING_AWAY
    assert await asyncio.to_thread(server.wait) == 0


def test_serve_json_banner_and_sigint(spawn: Any) -> None:
    server = spawn("serve", *PORT_0, "--json")
    info = server.json_line()
    assert info["event"] == "listening"
    native, page = info["native"][0], info["page"]
    assert native.startswith("tcp://127.0.0.1:")
    assert info["websocket"] == [page.replace("http://", "ws://") + "ws"]
    assert info["metrics"] == [page + "metrics"]
    assert info["terminal"] == f"opensocket chat {native} --nick NAME --room lobby"
    assert info["python"][1].startswith(f'client = await opensocket.chat.Client.connect("{native}"')
    assert info["backplane"] is None
    client = run_cli("chat", native, "--nick", "carol", "--plain", input=b"/quit\n")
    assert client.returncode == 0, client.stderr
    assert b"as carol" in client.stdout  # the line-mode client's welcome line
    assert server.stop(signal.SIGINT) == 0
    stopped = server.json_line()  # what the hub did, as one JSON event
    assert stopped["event"] == "stopped"
    assert stopped["connections"] == 1 and stopped["drops"] == 0


def test_serve_help_is_the_hub_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--listen", "--web", "--reuse-port", "--backplane", "--password-file"):
        assert option in text
    assert "visible to other users in ps" in text
    assert "the framed echo service is 'opensocket echo serve'" in text


@pytest.mark.parametrize("which", ["--listen", "--web"])
def test_busy_port_says_so_with_a_hint(which: str, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["serve", "--listen", "tcp://127.0.0.1:0", "--web", "http://127.0.0.1:0", "--json"]
        argv[argv.index(which) + 1] = argv[argv.index(which) + 1].replace(":0", f":{port}")
        assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"opensocket serve: error: 127.0.0.1:{port} is already in use")
    assert "[Errno" not in captured.err
    assert "opensocket serve --listen tcp://127.0.0.1:0 --web http://127.0.0.1:0" in captured.err
    assert "--reuse-port" in captured.err
    failure = json.loads(captured.out)
    assert failure["exit"] == 1
    assert failure["error"].startswith(f"127.0.0.1:{port} is already in use")


def test_chat_serve_names_itself_in_the_hint(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["chat", "serve", "--listen", f"tcp://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("opensocket chat serve: error: ")
    assert "opensocket chat serve --listen tcp://127.0.0.1:0" in err
