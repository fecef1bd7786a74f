"""``opensocket proxy`` and ``opensocket proxy ctl``: real subprocesses and in-process calls."""

from __future__ import annotations

import json
import os
import signal
import socket
from typing import Any

import pytest

from opensocket.cli import main
from opensocket.errors import ConfigError
from opensocket.proxy import BackgroundProxy

from ..cli.conftest import EchoServers, run_cli


def _frames(lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["dir"], r["type"]) for r in lines if r.get("event") == "frame"]


def test_inspect_json_on_a_real_exchange(spawn: Any, echo_servers: EchoServers) -> None:
    proxy = spawn("proxy", "tcp://127.0.0.1:0", echo_servers.urls["tcp"], "--inspect", "--json")
    listening = proxy.json_line()
    assert listening["event"] == "listening" and listening["faults"] == []
    done = run_cli("echo", listening["listen"], "--count", "1", "--message", "hello")
    assert done.returncode == 0, done.stderr
    records = [proxy.json_line() for _ in range(6)]
    assert _frames(records) == [
        ("up", "HELLO"),
        ("down", "WELCOME"),
        ("up", "DATA"),
        ("down", "DATA"),
        ("up", "CLOSE"),
        ("down", "CLOSE"),
    ]
    assert records[1]["payload"]["codec"] == "bytes"
    assert records[2]["payload"]["ascii"] == "hello" and records[2]["length"] == 5
    assert records[4]["payload"] == {"code": 1000, "reason": ""}
    assert proxy.stop(signal.SIGTERM) == 0
    stopped = json.loads(proxy.rest().splitlines()[-1])
    assert stopped["event"] == "stopped" and stopped["stats"]["connections"] == 1


def test_inspect_text_lines(spawn: Any, echo_servers: EchoServers) -> None:
    proxy = spawn("proxy", "tcp://127.0.0.1:0", echo_servers.urls["tcp"], "--inspect")
    url = proxy.expect(r"^proxy (\S+) -> ").group(1)
    assert run_cli("echo", url, "--count", "1", "--message", "hi").returncode == 0
    lines = [proxy.line().split(maxsplit=1)[1] for _ in range(4)]  # without the time
    assert lines[0].startswith("#1 up   HELLO    flags=CHECKSUM len=")
    assert lines[1].startswith("#1 down WELCOME  flags=CHECKSUM len=")
    assert lines[2] == "#1 up   DATA     flags=CHECKSUM len=2 hex 6869 |hi|\n"
    assert lines[3] == "#1 down DATA     flags=CHECKSUM len=2 hex 6869 |hi|\n"
    assert proxy.stop() == 0
    assert "stopped: 1 connections" in proxy.rest()


def test_startup_faults_and_ctl_against_a_running_proxy(
    spawn: Any, echo_servers: EchoServers
) -> None:
    control = f"unix:///tmp/os-proxy-{os.getpid()}.sock"
    proxy = spawn(
        "proxy",
        "udp://127.0.0.1:0",
        echo_servers.urls["udp"],
        "--loss",
        "1",
        "--direction",
        "down",
        "--seed",
        "3",
        "--control",
        control,
        "--json",
    )
    listening = proxy.json_line()
    assert listening["control"] == control
    assert listening["faults"] == [
        {"id": 1, "kind": "loss", "direction": "down", "probability": 1.0, "rate": 1.0}
    ]
    host, port = listening["listen"][len("udp://") :].rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(b"lost on the way back", (host, int(port)))
        with pytest.raises(TimeoutError):
            sock.recv(100)
        added = run_cli("proxy", "ctl", control, "add", "latency", "--delay", "10ms", "--json")
        assert json.loads(added.stdout) == {"ok": True, "id": 2}
        cleared = run_cli("proxy", "ctl", control, "clear", "1")
        assert cleared.stdout == b"cleared 1\n"
        sock.settimeout(5)
        sock.sendto(b"back", (host, int(port)))
        assert sock.recv(100) == b"back"
    stats = json.loads(run_cli("proxy", "ctl", control, "stats", "--json").stdout)["stats"]
    assert stats["down"]["dropped"] == 1 and stats["up"]["datagrams_out"] == 2
    assert proxy.stop() == 0
    assert not os.path.exists(control[len("unix://") :])


@pytest.fixture
def controlled() -> Any:
    with socket.socket() as upstream:
        upstream.bind(("127.0.0.1", 0))
        upstream.listen()
        url = f"tcp://127.0.0.1:{upstream.getsockname()[1]}"
        with BackgroundProxy("tcp://127.0.0.1:0", url, control="tcp://127.0.0.1:0") as proxy:
            yield proxy


def test_ctl_in_process(controlled: BackgroundProxy, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(controlled.control_address)
    assert main(["proxy", "ctl", url, "add", "latency", "--delay", "50ms", "--jitter", "5ms"]) == 0
    assert main(["proxy", "ctl", url, "add", "bandwidth", "--rate", "64k"]) == 0
    assert main(["proxy", "ctl", url, "add", "reset", "--nbytes", "10", "--direction", "up"]) == 0
    assert main(["proxy", "ctl", url, "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["added fault 1", "added fault 2", "added fault 3"]
    assert out[3] == "1: latency direction=both probability=1.0 delay=0.05 jitter=0.005"
    assert out[4] == "2: bandwidth direction=both probability=1.0 rate=65536.0"
    assert out[5] == "3: reset direction=up probability=1.0 nbytes=10 seconds=None"
    assert main(["proxy", "ctl", url, "clear"]) == 0
    assert capsys.readouterr().out == "cleared 1, 2, 3\n"
    assert main(["proxy", "ctl", url, "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["listen"] == controlled.url and info["protocol"] == "stream"
    assert controlled.list_faults() == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["add", "loss", "--rate", "2"], "fraction from 0 to 1"),
        (["add", "reset"], "needs nbytes"),
        (["add", "latency", "--delay", "soon"], "not a duration"),
        (["add", "loss", "--rate", "lots"], "fraction from 0 to 1"),
        (["add", "loss", "--rate", "0.2"], "a loss fault applies to udp://"),
        (["add", "reorder", "--rate", "0.5", "--json"], "a reorder fault applies to udp://"),
    ],
)
def test_ctl_refusals_are_usage_errors(
    controlled: BackgroundProxy, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["proxy", "ctl", str(controlled.control_address), *argv]) == 2
    assert message in capsys.readouterr().err
    assert controlled.list_faults() == []


def test_udp_only_fault_refused_the_same_way_everywhere(
    controlled: BackgroundProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as refused:
        controlled.duplicate(0.2)
    assert main(["proxy", "ctl", str(controlled.control_address), "add", "duplicate"]) == 2
    ctl = capsys.readouterr().err
    assert main(["proxy", "tcp://127.0.0.1:0", "tcp://127.0.0.1:9", "--duplicate", "0.2"]) == 2
    startup = capsys.readouterr().err
    assert str(refused.value) in ctl and str(refused.value) in startup


def test_control_protocol_answers_bad_requests(controlled: BackgroundProxy) -> None:
    from opensocket import sync

    with sync.connect(str(controlled.control_address), codec="json") as conn:
        for request, error in (
            ([1, 2], "JSON object"),
            ({"action": "explode"}, "unknown action"),
            ({"action": "add"}, "needs a 'fault'"),
            ({"action": "add", "fault": {"kind": "stall", "speed": 1}}, "no parameter speed"),
            ({"action": "clear", "id": "one"}, "fault id"),
        ):
            conn.send(request)
            reply = conn.recv(timeout=5)
            assert reply["ok"] is False and error in reply["error"]
        conn.send({"action": "add", "fault": {"kind": "stall", "direction": "up"}})
        assert conn.recv(timeout=5) == {"ok": True, "id": 1}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tcp://127.0.0.1:0", "udp://127.0.0.1:9"], "udp:// on both sides"),
        (["tcp://127.0.0.1:0", "tcp://127.0.0.1:9", "--loss", "0.1"], "applies to udp://"),
        (["udp://127.0.0.1:0", "udp://127.0.0.1:9", "--inspect"], "--inspect decodes"),
        (["tcp://127.0.0.1:0", "tcp://127.0.0.1:9", "--latency", "fast"], "not a duration"),
        (["tcp://127.0.0.1:0", "tcp://127.0.0.1:9", "--probability", "3", "--stall"], "fraction"),
        (["tcp://127.0.0.1:0", "tcp://127.0.0.1:9", "--xor", "zz"], "not a number"),
    ],
)
def test_proxy_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["proxy", *argv]) == 2
    assert message in capsys.readouterr().err


def test_ctl_without_a_proxy_fails(capsys: pytest.CaptureFixture[str], sock_path: str) -> None:
    assert main(["proxy", "ctl", f"unix://{sock_path}", "list", "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["exit"] == 1 and "error" in captured.err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "--help"]) == 0
    assert "opensocket proxy udp://127.0.0.1:9003" in capsys.readouterr().out
    assert main(["proxy", "ctl", "--help"]) == 0
    assert "add reset --nbytes 1000" in capsys.readouterr().out
