"""In-process: help texts, usage errors (exit 2) and clear one-line errors."""

from __future__ import annotations

import argparse
import json
import shlex
import socket
from pathlib import Path

import pytest

from opensocket.cli import build_parser, main, parse_args

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


def test_server_help_says_which_codecs_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "(default: bytes,json, and msgpack when installed (pip install 'opensocket[msgpack]'))"
        in text
    )


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
        (["serve", "--listen", "udp://127.0.0.1:0"], "use tcp://, tls:// or unix://"),
        (["serve", "--backplane", "redis://127.0.0.1:6379/x"], "the database must be a number"),
        (
            ["serve", "--password-env", "OS_CLI_UNSET_VARIABLE"],
            "--password-env: the environment variable OS_CLI_UNSET_VARIABLE is not set",
        ),
        (["echo", "tcp://127.0.0.1:1", "--count", "-1"], "--count must be 0 or more"),
        (["connect", "tcp://127.0.0.1:1", "-q", "-1"], "--quit-after must be 0 or more"),
        (["echo", "serve", "tls://127.0.0.1:0"], "tls:// addresses need --tls-cert and --tls-key"),
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


# ---- help texts: pasteable examples, every option explained ---------------------------------

HELP_COMMANDS = [
    ["serve"],
    ["echo"],
    ["echo", "serve"],
    ["connect"],
    ["listen"],
    ["cert"],
    ["broker"],
    ["chat"],
    ["chat", "serve"],
]


def _examples(help_text: str) -> list[str]:
    """The example command lines of a help text, continuation lines joined."""
    section = help_text.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0]
    return section.replace("\\\n", " ").splitlines()


def _opensocket_words(line: str) -> list[str]:
    """The words of the opensocket command in an example line (the pipeline's opensocket part,
    before '<' '>')."""
    words = shlex.split(line, comments=True)
    while "|" in words:
        cut = words.index("|")
        if words[0] == "opensocket":
            words = words[:cut]
            break
        words = words[cut + 1 :]
    for i, word in enumerate(words):
        if word in ("<", ">"):
            return words[:i]
    return words


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=" ".join)
def test_help_examples_are_pasteable(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every example parses as written; descriptions are shell comments, not arguments."""
    assert main([*command, "--help"]) == 0
    examples = _examples(capsys.readouterr().out)
    assert len(examples) >= 3
    for line in examples:
        assert " (" not in line.split("#")[0], line
        words = _opensocket_words(line)
        assert words[0] == "opensocket", line
        parse_args(words[1:])  # raises UsageError for a description left in the arguments


def _parser(command: list[str]) -> argparse.ArgumentParser:
    from opensocket.cli import _parser_for

    return _parser_for([*command, "--help"])[0]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=" ".join)
def test_every_option_has_help(command: list[str]) -> None:
    parser = _parser(command) if command == ["echo", "serve"] else None
    if parser is None:
        top = build_parser()
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[command[0]]
    missing = [
        a.option_strings or a.dest
        for a in parser._actions
        if not a.help or a.help == "==SUPPRESS=="
    ]
    assert missing == []


def test_server_limit_options_say_what_they_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-connections N connections open at once" in text
    assert "--max-per-ip N connections open at once from one IP address" in text
    assert "--idle-timeout SECONDS close connections silent this long" in text


# ---- usage errors that name the flag ---------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["echo", "serve", "tcp://127.0.0.1:0", "--max-frame-size", "10"],
         "--max-frame-size must be at least 64 bytes (got 10)"),
        (["echo", "serve", "tcp://127.0.0.1:0", "--heartbeat", "-1"],
         "--heartbeat must be 0 (off) or a positive number of seconds"),
        (["echo", "serve", "tcp://127.0.0.1:0", "--max-connections", "0"],
         "--max-connections must be at least 1 (got 0)"),
        (["serve", "--listen", "tcp://127.0.0.1:0", "--max-per-ip", "0"],
         "--max-per-ip must be at least 1 (got 0)"),
        (["echo", "serve", "tcp://127.0.0.1:0", "--rate", "0"], "--rate must be a positive"),
        (["echo", "serve", "tcp://127.0.0.1:0", "--idle-timeout", "-2"],
         "--idle-timeout must be a positive number (got -2)"),
        (["echo", "serve", "tcp://127.0.0.1:0", "--deny", "10.0.0.0/33"],
         "--deny '10.0.0.0/33' is not an IP network"),
        (["echo", "serve", "tcp://127.0.0.1:0", "--codec", "nosuch"],
         "unknown payload codec 'nosuch'"),
        (["echo", "serve", "tcp://127.0.0.1:0", "--codec", ","], "--codec needs at least one"),
        (["echo", "tcp://127.0.0.1:1", "--timeout", "0"],
         "--timeout must be a positive number (got 0)"),
        (["echo", "tcp://127.0.0.1:1", "--interval", "-1"],
         "--interval must be 0 or more seconds (got -1)"),
        (["connect", "tcp://127.0.0.1:1", "--timeout", "-1"], "--timeout must be a positive"),
        (["echo", "tcp://127.0.0.1:1", "--secret-env", "OS_CLI_UNSET_VARIABLE"],
         "--secret-env: the environment variable OS_CLI_UNSET_VARIABLE is not set"),
    ],
)  # fmt: skip
def test_bad_values_name_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    other = "--interval" if "--timeout" in message else "--timeout"
    assert other not in err
    assert err.count("\n") == 1


def test_a_short_secret_is_refused_with_its_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("short\n")
    assert main(["echo", "tcp://127.0.0.1:1", "--secret-file", str(secret)]) == 2
    assert f"the secret in {secret} is 5 bytes long" in capsys.readouterr().err


FRAMED_ONLY = [
    (["echo", "serve", "tcp://127.0.0.1:0", "--raw", "--secret-env", "X"],
     "--secret-env applies to the framed protocol only, not to --raw byte streams"),
    (["echo", "serve", "tcp://127.0.0.1:0", "--raw", "--codec", "json", "--heartbeat", "1"],
     "--codec, --heartbeat apply to the framed protocol only"),
    (["echo", "serve", "udp://127.0.0.1:0", "--name", "n"],
     "--name applies to the framed protocol only, not to udp:// datagrams"),
    (["echo", "serve", "udp://127.0.0.1:0", "--max-frame-size", "1000"], "framed protocol only"),
    (["echo", "tcp://127.0.0.1:1", "--raw", "--codec", "json"], "framed protocol only"),
    (["echo", "udp://127.0.0.1:1", "--codec", "json"], "not to udp:// datagrams"),
    (["echo", "serve", "tcp://127.0.0.1:0", "--tls-cert", "c.pem", "--tls-key", "k.pem"],
     "--tls-cert, --tls-key apply to tls:// addresses only: use tls://127.0.0.1:0 instead of "
     "tcp://127.0.0.1:0"),
    (["echo", "serve", "tcp://127.0.0.1:0", "--tls-client-auth", "required"],
     "--tls-client-auth applies to tls:// addresses only"),
    (["echo", "serve", "unix:///tmp/os.sock", "udp://127.0.0.1:0", "--tls-ca", "ca.pem"],
     "--tls-ca applies to tls:// addresses only: use a tls:// address"),
    (["echo", "tcp://127.0.0.1:1", "--tls-ca", "ca.pem"],
     "use tls://127.0.0.1:1 instead of tcp://127.0.0.1:1"),
    (["connect", "tcp://127.0.0.1:1", "--tls-insecure"], "--tls-insecure applies to tls://"),
    (["listen", "udp://127.0.0.1:0", "--tls-cert", "c.pem"], "--tls-cert applies to tls://"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), FRAMED_ONLY)
def test_options_that_would_be_ignored_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"opensocket {argv[0]}")
    assert message in err


def test_secret_env_and_secret_file_exclude_each_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["echo", "serve", "tcp://127.0.0.1:0", "--secret-env", "A", "--secret-file", "f"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: opensocket echo serve")
    assert "argument --secret-file: not allowed with argument --secret-env" in err


# ---- --json failures, command choices, per-command usage -------------------------------------


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["echo", "serve", "tcp://127.0.0.1:99999", "--json"], 2, "out of range"),
        (["echo", "serve", "udp://127.0.0.1:0", "--codec", "json", "--json"], 2,
         "framed protocol only"),
        (["serve", "--listen", "udp://127.0.0.1:0", "--json"], 2, "use tcp://, tls:// or unix://"),
        (["echo", "serve", "--json"], 2, "the following arguments are required: URL"),
        (["echo", "tcp://127.0.0.1:1", "--json", "--bogus"], 2,
         "unrecognized arguments: --bogus"),
    ],
)  # fmt: skip
def test_json_mode_reports_failures_as_json_too(
    argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == code
    captured = capsys.readouterr()
    assert message in captured.err
    failure = json.loads(captured.out)
    assert failure["exit"] == code
    assert message in failure["error"]
    assert not failure["error"].startswith("opensocket")


def test_json_echo_to_a_closed_port(free_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", f"tcp://127.0.0.1:{free_port}", "-c", "1", "--json"]) == 1
    captured = capsys.readouterr()
    assert "nothing is listening" in captured.err
    failure = json.loads(captured.out)
    assert failure["exit"] == 1
    assert failure["error"].startswith(f"nothing is listening on 127.0.0.1:{free_port}")


def test_json_serve_on_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--listen", f"tcp://127.0.0.1:{port}", "--json"]) == 1
    captured = capsys.readouterr()
    assert "opensocket serve --listen tcp://127.0.0.1:0" in captured.err
    failure = json.loads(captured.out)
    assert failure["exit"] == 1
    assert failure["error"].startswith(f"127.0.0.1:{port} is already in use")


def test_unknown_command_lists_only_real_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bogus"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err
    assert "'cert'" in err
    assert "echo serve" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["listen", "tcp://127.0.0.1:0", "--bogus"],
        ["connect", "tcp://127.0.0.1:1", "--bogus"],
        ["echo", "serve", "tcp://127.0.0.1:0", "--bogus"],
        ["cert", "--bogus"],
    ],
)
def test_an_unknown_option_shows_the_command_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    command = " ".join(argv[:2] if argv[1] == "serve" else argv[:1])
    assert err.startswith(f"usage: opensocket {command} ")
    assert f"opensocket {command}: error: unrecognized arguments: --bogus" in err
