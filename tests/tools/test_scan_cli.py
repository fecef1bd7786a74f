"""`opensocket scan` on the command line: table, --json, --grep, --open, exit codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from opensocket.cli import main

CLI = [sys.executable, "-c", "from opensocket.cli import run; run()"]


@pytest.fixture
def ports() -> Iterator[tuple[list[int], list[int]]]:
    """(open ports, closed ports) on 127.0.0.1: three listeners and three free ports."""
    listeners = []
    for _ in range(3):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        listeners.append(sock)
    spare = [socket.socket() for _ in range(3)]
    for sock in spare:
        sock.bind(("127.0.0.1", 0))
    closed = sorted(s.getsockname()[1] for s in spare)
    for sock in spare:
        sock.close()
    yield sorted(s.getsockname()[1] for s in listeners), closed
    for sock in listeners:
        sock.close()


def _spec(*groups: list[int]) -> str:
    return ",".join(str(p) for group in groups for p in group)


def test_table(ports: tuple[list[int], list[int]], capsys: pytest.CaptureFixture[str]) -> None:
    open_ports, closed = ports
    assert main(["scan", "127.0.0.1", "-p", _spec(closed, open_ports)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "scan report for 127.0.0.1"
    assert lines[1].split() == ["PORT", "STATE", "SERVICE"]  # BANNER only with --banner
    rows = [line.split() for line in lines[2:8]]
    assert rows == [
        [f"{p}/tcp", "open" if p in open_ports else "closed"] for p in sorted(ports[0] + ports[1])
    ]
    assert lines[-1].startswith("scanned 1 host, 6 tcp ports each in ")
    assert lines[-1].endswith(": 3 open")
    assert err == ""  # no progress bar when stderr is not a terminal


def test_table_open_only_and_big_scans(
    ports: tuple[list[int], list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    open_ports, closed = ports
    assert main(["scan", "127.0.0.1", "-p", _spec(closed, open_ports), "--open"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[2:5]] == [f"{p}/tcp" for p in open_ports]
    assert "not shown: 3 ports that are not open" in out
    # past 25 ports the closed ones are counted, not listed (as nmap does)
    spec = f"1-30,{_spec(open_ports)}"
    assert main(["scan", "127.0.0.1", "-p", spec]) == 0
    out = capsys.readouterr().out
    assert "closed" not in out.splitlines()[2]
    assert "not shown: 30 closed tcp ports" in out


def test_json(ports: tuple[list[int], list[int]], capsys: pytest.CaptureFixture[str]) -> None:
    open_ports, closed = ports
    assert main(["scan", "127.0.0.1", "-p", _spec(open_ports, closed), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["protocol"] == "tcp"
    assert doc["ports_scanned"] == 6
    (host,) = doc["hosts"]
    assert host["address"] == "127.0.0.1"
    assert host["closed"] == 3
    assert [p["port"] for p in host["ports"]] == open_ports
    assert {p["state"] for p in host["ports"]} == {"open"}
    assert set(host["ports"][0]) == {"port", "protocol", "state", "service", "reason"}
    assert doc["unresolved"] == []


def test_grep(ports: tuple[list[int], list[int]], capsys: pytest.CaptureFixture[str]) -> None:
    open_ports, closed = ports
    assert main(["scan", "127.0.0.1", "::1", "-p", _spec(open_ports, closed), "--grep"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# opensocket ")
    assert lines[-1].startswith("# opensocket done: 2 hosts scanned in ")
    first = lines[1].split("\t")
    assert first[0] == "Host: 127.0.0.1 ()"
    assert first[1] == "Ports: " + ", ".join(f"{p}/open/tcp/////" for p in open_ports)
    assert first[2] == "Ignored State: closed (3)"
    assert lines[2].startswith("Host: ::1 ()\t")  # the listeners are IPv4 only
    assert lines[2].endswith("Ignored State: closed (6)")


def test_udp_closed(capsys: pytest.CaptureFixture[str]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    assert main(["scan", "127.0.0.1", "--udp", "-p", str(port), "--json"]) == 0
    host = json.loads(capsys.readouterr().out)["hosts"][0]
    assert (host["closed"], host["ports"]) == (1, [])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["127.0.0.1", "-p", "70000"], "bad port spec '70000': port 70000 is out of range"),
        (["127.0.0.999"], "bad scan target '127.0.0.999'"),
        (["10.0.0.0/8", "-p", "80"], "more than 65,536"),
        (["127.0.0.1", "--timeout", "0"], "--timeout must be a positive number"),
        (["127.0.0.1", "--rate", "-5"], "--rate must be a positive number"),
        (["127.0.0.1", "-c", "0"], "-c/--concurrency must be at least 1 (got 0)"),
        (["127.0.0.1", "--retries", "-1"], "--retries must be at least 0 (got -1)"),
        (["127.0.0.1", "--open", "--show-closed"], "--open and --show-closed contradict"),
        (["127.0.0.1", "--json", "--grep"], "not allowed with argument"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", *argv]) == 2
    assert message in capsys.readouterr().err


def test_usage_error_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "127.0.0.1", "-p", "0", "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit"] == 2
    assert "port 0 is out of range" in doc["error"]


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--help"]) == 0
    out = capsys.readouterr().out
    assert "opensocket scan 127.0.0.1 -p- --open" in out
    assert "--udp" in out


def test_subprocess(ports: tuple[list[int], list[int]]) -> None:
    open_ports, closed = ports
    done = subprocess.run(
        [*CLI, "scan", "localhost", "-p", _spec(open_ports, closed), "--grep", "--open"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    host_line = done.stdout.splitlines()[1]
    assert host_line.startswith("Host: 127.0.0.1 (localhost)\tPorts: ")
    assert [int(p.split("/")[0]) for p in host_line.split("\t")[1][7:].split(", ")] == open_ports


def test_banner_column_only_with_banner(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        assert main(["scan", "127.0.0.1", "-p", str(port)]) == 0
        assert capsys.readouterr().out.splitlines()[1].split() == ["PORT", "STATE", "SERVICE"]
        argv = ["scan", "127.0.0.1", "-p", str(port), "--banner", "--banner-timeout", "0.05"]
        assert main(argv) == 0
    header = capsys.readouterr().out.splitlines()[1].split()
    assert header == ["PORT", "STATE", "SERVICE", "BANNER"]


def test_service_names_with_dashes_and_repeated_ports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'http-proxy' is what scan prints for 8080: it must be accepted back; -p repeats merge
    argv = ["scan", "127.0.0.1", "-p", "ssh,http-proxy", "-p", "-3", "-p", "7", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scanned"] == "1-3,7,22,8080"
    assert doc["ports_scanned"] == 6


def test_json_lists_closed_ports_for_small_scans(
    ports: tuple[list[int], list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    open_ports, closed = ports
    assert main(["scan", "127.0.0.1", "-p", _spec(open_ports, closed), "--json"]) == 0
    host = json.loads(capsys.readouterr().out)["hosts"][0]
    assert host["closed_ports"] == closed
    # a big scan counts closed ports unless --show-closed asks for them
    spec = f"1-30,{_spec(open_ports)}"
    assert main(["scan", "127.0.0.1", "-p", spec, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scanned"] == "1-30," + _spec(open_ports)
    assert "closed_ports" not in doc["hosts"][0]
    assert doc["hosts"][0]["closed"] == 30
    assert main(["scan", "127.0.0.1", "-p", spec, "--json", "--show-closed"]) == 0
    assert json.loads(capsys.readouterr().out)["hosts"][0]["closed_ports"] == list(range(1, 31))
    assert main(["scan", "127.0.0.1", "-p", spec, "--show-closed"]) == 0
    out = capsys.readouterr().out
    assert "1/tcp" in out.split()
    assert "not shown" not in out


def test_family_flags(capsys: pytest.CaptureFixture[str]) -> None:
    # -4 skips an IPv6 literal with a message that names the family, not DNS
    assert main(["scan", "-4", "::1", "127.0.0.1", "-p", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert [h["address"] for h in doc["hosts"]] == ["127.0.0.1"]
    assert doc["unresolved"] == [
        {"target": "::1", "error": "::1 is an IPv6 address and IPv4 was asked for"}
    ]
    assert "skipped ::1: ::1 is an IPv6 address" in err
    # nothing left to scan: exit 1, as when no name resolves
    assert main(["scan", "-6", "127.0.0.1", "-p", "1"]) == 1
    assert "127.0.0.1 is an IPv4 address and IPv6 was asked for" in capsys.readouterr().err
    assert main(["scan", "-6", "::1", "-p", "1", "--json"]) == 0
    assert [h["address"] for h in json.loads(capsys.readouterr().out)["hosts"]] == ["::1"]
