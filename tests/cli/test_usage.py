"""In-process: help texts, usage errors (exit 2) and clear one-line errors."""

from __future__ import annotations

import socket

import pytest

from opensocket.cli import main

COMMANDS = [
    (["serve"], "--listen"),
    (["echo"], "--count"),
    (["echo", "serve"], "--raw"),
    (["connect"], "--no-half-close"),
    (["listen"], "--keep-open"),
]


@pytest.mark.parametrize(("command", "option"), COMMANDS)
def test_help_shows_options_and_examples(
    command: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: opensocket {' '.join(command)} ")
    assert option in out
    assert "--no-uvloop" in out
    assert f"\nexamples:\n  opensocket {command[0]}" in out


def test_top_level_help_lists_commands_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("serve", "echo", "connect", "listen", "cert"):
        assert f"\n    {name} " in out
    assert "\n    echo serve" not in out  # reached through 'echo', documented in its help


def test_server_help_says_every_codec_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "serve", "--help"]) == 0
    assert "default: bytes,json,msgpack" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "argv",
    [
        ["echo"],
        ["echo", "serve"],
        ["echo", "tcp://127.0.0.1:1", "--count", "many"],
        ["connect", "tcp://127.0.0.1:1", "--bogus"],
        ["listen"],
        ["serve", "--listen"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: opensocket" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["echo", "serve", "tcp://127.0.0.1"], "a port is required"),
        (["echo", "127.0.0.1:9000"], "the scheme is missing"),
        (["connect", "ftp://127.0.0.1:21"], "unknown scheme 'ftp'"),
        (["listen", "unix://relative.sock"], "must be absolute"),
        (["serve", "--listen", "tcp://127.0.0.1:99999"], "out of range"),
        (["echo", "tcp://127.0.0.1:1", "--count", "-1"], "--count must be 0 or more"),
        (["connect", "tcp://127.0.0.1:1", "-q", "-1"], "--quit-after must be 0 or more"),
        (["echo", "serve", "tls://127.0.0.1:0"], "needs TLS options"),
        (["echo", "serve", "tcp://127.0.0.1:0", "--allow", "nonsense"], "not an IP network"),
    ],
)
def test_bad_addresses_and_values_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """AddressError and ConfigError are usage problems: exit 2, one clear line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"opensocket {argv[0]}")
    assert ": error: " in err
    assert message in err
    assert err.count("\n") == 1


def test_echo_to_a_closed_port_exits_1(free_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", f"tcp://127.0.0.1:{free_port}", "--count", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("opensocket echo: error: nothing is listening on 127.0.0.1:")


def test_serve_on_a_busy_port_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--listen", f"tcp://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} is already in use" in err
    assert "[Errno" not in err
    assert "opensocket serve --listen tcp://127.0.0.1:0" in err


def test_echo_serve_on_a_busy_port_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["echo", "serve", f"tcp://127.0.0.1:{port}", "udp://127.0.0.1:0"]) == 1
    assert "is already in use" in capsys.readouterr().err
