"""``opensocket echo serve`` says how to connect (command and Python lines that work)."""

from __future__ import annotations

import ast
import asyncio
import re
import signal
from pathlib import Path
from typing import Any

import pytest

import opensocket
from opensocket.cli import echo as echo_cli
from tests.tlsutil import make_pki

from .conftest import run_cli
from .test_echo import _run_server_in_process as run_server_in_process


def _banner(server: Any) -> list[str]:
    lines = []
    while not (line := server.line()).startswith("press Ctrl-C"):
        lines.append(line.rstrip("\n"))
    return lines


def test_echo_serve_prints_how_to_connect_and_stops_on_sigint(spawn: Any, sock_path: str) -> None:
    server = spawn("echo", "serve", "tcp://127.0.0.1:0", f"unix://{sock_path}")
    banner = _banner(server)
    found = re.fullmatch(
        r"echo server listening on (tcp://127\.0\.0\.1:\d+) "
        r"\(framed: bytes, json, msgpack\)",
        banner[0],
    )
    assert found, banner
    url = found.group(1)
    assert banner[1] == f"  opensocket echo {url}"
    assert (
        banner[2] == f"echo server listening on unix://{sock_path} (framed: bytes, json, msgpack)"
    )
    assert banner[3] == f"  opensocket echo unix://{sock_path}"
    assert banner[4:] == [
        "in Python (python -m asyncio):",
        "  >>> import opensocket",
        f'  >>> conn = await opensocket.connect("{url}")',
        '  >>> await conn.send(b"hello"); await conn.recv()',
    ]

    client = run_cli("echo", url, "--count", "2")
    assert client.returncode == 0, client.stderr
    assert client.stdout.decode().splitlines()[-1].startswith("sent 2, received 2, lost 0")
    _run_snippet(banner[5:])

    assert server.stop(signal.SIGINT) == 0
    summary = server.line()
    assert re.fullmatch(
        r"echo server stopped after \d+\.\ds: 2 connections, 3 messages, "
        r"\d+ bytes in, \d+ bytes out\n",
        summary,
    ), summary


def _run_snippet(lines: list[str]) -> None:
    """Run the printed Python lines as ``python -m asyncio`` would (top-level await)."""
    code = "\n".join(line.split(">>> ", 1)[1] for line in lines)
    compiled = compile(code, "<snippet>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {}

    async def run() -> None:
        result = eval(compiled, namespace)
        if result is not None:
            await result
        conn = namespace["conn"]
        assert conn.stats.messages_in == 1
        await conn.close()

    asyncio.run(run())


def test_echo_serve_stops_on_sigterm_too(spawn: Any) -> None:
    server = spawn("echo", "serve", "tcp://127.0.0.1:0", "--json", "--no-uvloop")
    info = server.json_line()
    assert info["addresses"][0].startswith("tcp://127.0.0.1:")
    assert server.stop(signal.SIGTERM) == 0
    assert '"event": "stopped"' in server.line()


def test_echo_serve_in_process_with_udp_and_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OS_CLI_SECRET", "correct horse battery")

    async def client(service: echo_cli.EchoService, commands: list[str], args: Any) -> None:
        tcp, udp = (str(a) for a in service.addresses)
        assert commands == [
            f"opensocket echo {tcp} --secret-env OS_CLI_SECRET",
            f"opensocket echo {udp}",
        ]
        snippet = echo_cli.python_snippet(args, service)
        assert snippet[1] == "  >>> import opensocket, os"
        await _run_snippet_here(snippet[1:])
        async with await opensocket.open_datagram(udp) as endpoint:
            await endpoint.send(b"dgram")
            assert await endpoint.recv(timeout=5) == b"dgram"

    argv = ["echo", "serve", "tcp://127.0.0.1:0", "udp://127.0.0.1:0"]
    argv += ["--secret-env", "OS_CLI_SECRET"]
    assert run_server_in_process(argv, monkeypatch, client) == 0
    out = capsys.readouterr().out
    assert "(UDP datagrams)" in out
    assert 'secret=os.environ["OS_CLI_SECRET"]' in out
    assert "1 connection, 2 messages" in out  # the snippet's message and the datagram


def test_echo_serve_in_process_tls_snippet_works(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)

    async def client(service: echo_cli.EchoService, commands: list[str], args: Any) -> None:
        snippet = echo_cli.python_snippet(args, service)
        assert f'ca_file="{pki.ca_cert}"' in snippet[2]
        assert f'cert_file="{pki.client_cert}"' in snippet[2]
        await _run_snippet_here(snippet[1:])

    argv = ["echo", "serve", "tls://127.0.0.1:0", "--tls-cert", pki.server_cert]
    argv += ["--tls-key", pki.server_key, "--tls-ca", pki.ca_cert, "--tls-client-auth", "required"]
    assert run_server_in_process(argv, monkeypatch, client) == 0
    assert "1 connection, 1 message," in capsys.readouterr().out


async def _run_snippet_here(lines: list[str]) -> None:
    """Run printed ``>>>`` lines in this loop, as ``python -m asyncio`` would."""
    code = "\n".join(line.split(">>> ", 1)[1] for line in lines)
    compiled = compile(code, "<snippet>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {}
    result = eval(compiled, namespace)
    if result is not None:
        await result
    conn = namespace["conn"]
    assert conn.stats.messages_in == 1
    await conn.close()


def test_echo_serve_narrowed_to_json_prints_working_command_and_snippet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def client(service: echo_cli.EchoService, commands: list[str], args: Any) -> None:
        url = str(service.addresses[0])
        assert commands == [f"opensocket echo {url} --codec json"]
        snippet = echo_cli.python_snippet(args, service)
        assert snippet[2] == f'  >>> conn = await opensocket.connect("{url}", codec="json")'
        assert snippet[3] == '  >>> await conn.send("hello"); await conn.recv()'
        await _run_snippet_here(snippet[1:])

    argv = ["echo", "serve", "tcp://127.0.0.1:0", "--codec", "json,msgpack"]
    assert run_server_in_process(argv, monkeypatch, client) == 0
    out = capsys.readouterr().out
    assert "(framed: json, msgpack)" in out
    assert "1 connection, 1 message," in out
