"""opensocket bench end to end over loopback: every protocol and mode, the JSON schema, the
plot, errors, and a server that survives clients that misbehave."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opensocket import sync
from opensocket.cli import main
from opensocket.errors import ConfigError, ConnectionRefused, TLSError
from opensocket.tools.bench import BenchFailed, BenchResult, BenchServer, run_client
from tests.conftest import fd_count, has_ipv6
from tests.tlsutil import make_pki

SHORT = 0.3


@pytest.fixture(scope="module")
def server() -> Iterator[BenchServer]:
    with BenchServer(["tcp://127.0.0.1:0"]) as bench:
        yield bench


def check_schema(doc: dict[str, Any]) -> None:
    """Keys and types of the --json document, and the sums that must agree."""
    assert doc["schema"] == "opensocket.bench/1"
    start = doc["start"]
    assert {"version", "timestamp", "server", "local", "cookie", "params"} <= set(start)
    params = start["params"]
    assert set(params) == {
        "protocol",
        "mode",
        "streams",
        "duration",
        "interval",
        "length",
        "bitrate",
        "reverse",
        "gso",
    }
    packets = params["protocol"] == "udp" or params["mode"] != "throughput"
    intervals, end = doc["intervals"], doc["end"]
    assert intervals
    previous_end = 0.0
    for record in intervals:
        assert set(record) == {"start", "end", "seconds", "streams", "sum"}
        assert record["start"] == pytest.approx(previous_end, abs=1e-5)
        previous_end = record["end"]
        assert len(record["streams"]) == params["streams"]
        assert record["sum"]["bytes"] == sum(s["bytes"] for s in record["streams"])
        for stream in record["streams"]:
            assert set(stream) == {"id", "bytes", "bits_per_second", "packets"}
            assert isinstance(stream["bytes"], int)
            assert isinstance(stream["packets"], int) == packets
    local = end["receiver"] if params["reverse"] else end["sender"]
    assert sum(r["sum"]["bytes"] for r in intervals) == local["bytes"]
    remote = end["sender"] if params["reverse"] else end["receiver"]
    assert sum(r["sum"]["bytes"] for r in end["server_intervals"]) == remote["bytes"]
    for side in (end["sender"], end["receiver"]):
        assert {"bytes", "seconds", "bits_per_second", "packets"} <= set(side)
        assert side["seconds"] > 0
        assert side["bits_per_second"] == pytest.approx(side["bytes"] * 8 / side["seconds"])
        if packets:
            assert (
                sum(
                    r["sum"]["packets"]
                    for r in (intervals if side is local else end["server_intervals"])
                )
                == side["packets"]
            )
    assert len(end["streams"]) == params["streams"]
    assert sum(s["sender"]["bytes"] for s in end["streams"]) == end["sender"]["bytes"]
    assert sum(s["receiver"]["bytes"] for s in end["streams"]) == end["receiver"]["bytes"]
    json.dumps(doc)  # serialisable as is


def reliable(result: BenchResult) -> None:
    """TCP, TLS and framed streams lose nothing: each stream's bytes arrive exactly."""
    end = result.data["end"]
    assert end["sender"]["bytes"] > 0
    for stream in end["streams"]:
        assert stream["receiver"]["bytes"] == stream["sender"]["bytes"]


@pytest.mark.parametrize(("streams", "reverse"), [(1, False), (3, False), (2, True)])
def test_tcp_throughput(server: BenchServer, streams: int, reverse: bool) -> None:
    result = run_client(server.url, duration=SHORT, interval=0.1, streams=streams, reverse=reverse)
    check_schema(result.data)
    reliable(result)
    assert result.data["end"]["messages_per_second"] is None
    assert result.data["end"]["latency"] is None


def test_tls_throughput(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with BenchServer(["tls://127.0.0.1:0"], tls=pki.server_tls()) as tls_server:
        result = run_client(
            tls_server.url, duration=SHORT, interval=0.1, streams=2, tls=pki.client_tls()
        )
        check_schema(result.data)
        reliable(result)
        assert result.data["start"]["params"]["protocol"] == "tls"
        rtt = run_client(tls_server.url, mode="rtt", duration=SHORT, tls=pki.client_tls())
        assert rtt.data["end"]["latency"]["count"] == rtt.data["end"]["receiver"]["packets"] > 0
        with pytest.raises(TLSError, match="not signed by a trusted CA"):
            run_client(tls_server.url, duration=SHORT)  # the system store lacks our test CA


@pytest.mark.parametrize("gso", [True, False])
def test_udp_with_bitrate(server: BenchServer, gso: bool) -> None:
    bitrate = 20e6
    result = run_client(
        server.url,
        protocol="udp",
        duration=SHORT,
        interval=0.1,
        bitrate=bitrate,
        length=1000,
        gso=gso,
    )
    check_schema(result.data)
    end = result.data["end"]
    sent, recv = end["sender"], end["receiver"]
    # paced: never much above the target (a slow machine may send less, never more)
    assert sent["packets"] <= bitrate * SHORT / 8000 * 1.1 + 2
    assert sent["bytes"] == sent["packets"] * 1000
    assert recv["expected"] == sent["packets"]
    assert recv["lost"] == recv["expected"] - recv["packets"] + recv["out_of_order"]
    assert 0 <= recv["lost_percent"] <= 100
    assert recv["jitter_ms"] >= 0


@pytest.mark.parametrize("gso", [True, False])
def test_udp_reverse_unlimited_parallel(server: BenchServer, gso: bool) -> None:
    result = run_client(
        server.url,
        protocol="udp",
        duration=SHORT,
        interval=0.1,
        bitrate=0,
        streams=2,
        reverse=True,
        gso=gso,
    )
    check_schema(result.data)
    end = result.data["end"]
    for stream in end["streams"]:
        assert stream["receiver"]["expected"] == stream["sender"]["packets"] > 0
        received = stream["receiver"]["packets"]
        lost, ooo = stream["receiver"]["lost"], stream["receiver"]["out_of_order"]
        assert lost == stream["sender"]["packets"] - received + ooo


def test_rtt_mode(server: BenchServer) -> None:
    result = run_client(server.url, mode="rtt", duration=SHORT, interval=0.1, streams=2)
    check_schema(result.data)
    reliable(result)
    end = result.data["end"]
    latency = end["latency"]
    assert latency["count"] == end["sender"]["packets"] == len(result.latencies_ms)
    assert 0 < latency["min_ms"] <= latency["p50_ms"] <= latency["p90_ms"]
    assert latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert end["messages_per_second"] > 0


@pytest.mark.parametrize("reverse", [False, True])
def test_rate_mode(server: BenchServer, reverse: bool) -> None:
    result = run_client(
        server.url, mode="rate", duration=SHORT, interval=0.1, length=32, reverse=reverse
    )
    check_schema(result.data)
    reliable(result)
    end = result.data["end"]
    assert end["receiver"]["packets"] == end["sender"]["packets"]
    assert end["receiver"]["bytes"] == 32 * end["receiver"]["packets"]
    assert end["messages_per_second"] > 0


def test_cli_json_and_plot(server: BenchServer, tmp_path: Path, capsys: Any) -> None:
    png = tmp_path / "rtt.png"
    code = main(
        [
            "bench",
            server.url,
            "--mode",
            "rtt",
            "-P",
            "2",
            "-t",
            str(SHORT),
            "-i",
            "0.1",
            "--json",
            "--plot",
            str(png),
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    check_schema(doc)
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5000


def test_cli_text_output(server: BenchServer, capsys: Any) -> None:
    assert main(["bench", server.url, "-u", "-b", "5M", "-t", str(SHORT), "-i", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "sender" in out
    assert "jitter" in out
    assert "lost" in out


def test_no_server_is_exit_1(free_port: int, capsys: Any) -> None:
    assert main(["bench", f"tcp://127.0.0.1:{free_port}", "-t", "0.2"]) == 1
    assert "is the server running?" in capsys.readouterr().err
    with pytest.raises(ConnectionRefused):
        run_client(f"tcp://127.0.0.1:{free_port}", duration=0.2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-P", "0"], "streams"),
        (["-l", "lots"], "-l/--length"),
        (["--mode", "rtt", "-R"], "-R does not apply"),
        (["-u", "-l", "8"], "UDP datagram length"),
        (["-t", "0"], "-t/--time"),
        (["--tls-ca", "ca.pem"], "tls:// URLs only"),
    ],
)
def test_bad_options_are_exit_2(
    server: BenchServer, args: list[str], message: str, capsys: Any
) -> None:
    assert main(["bench", server.url, *args]) == 2
    assert message in capsys.readouterr().err


def start_test(server: BenchServer, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A raw control connection with an accepted test, retried while the server is busy."""
    for _ in range(500):
        control = sync.connect(server.url, codec="json")
        control.send({"type": "start", "version": 1, "params": params})
        reply = control.recv(timeout=5)
        if reply["type"] == "accept":
            return control, reply
        assert "busy" in reply["message"]
        control.close()
    raise AssertionError("the server stayed busy")


def test_server_survives_bad_clients(server: BenchServer) -> None:
    # junk on the control port
    with socket.create_connection(("127.0.0.1", server.addresses[0].port)) as junk:
        junk.sendall(b"GET / HTTP/1.0\r\n\r\n")
    # a client that leaves mid-setup, holding the test slot
    control = sync.connect(server.url, codec="json")
    control.send({"type": "start", "version": 1, "params": {"streams": 1}})
    assert control.recv(timeout=5)["type"] == "error"  # incomplete params are refused
    control.close()
    control = sync.connect(server.url, codec="json")
    params = {
        "protocol": "tcp",
        "mode": "throughput",
        "streams": 1,
        "duration": 0.2,
        "interval": 1,
        "length": 1024,
        "bitrate": 0,
        "reverse": False,
        "gso": True,
    }
    control.send({"type": "start", "version": 1, "params": params})
    assert control.recv(timeout=5)["type"] == "accept"
    with pytest.raises(BenchFailed, match="busy"):
        run_client(server.url, duration=SHORT)
    control.close()
    # a client that leaves in the middle of a test (once the server has freed the slot)
    control, accept = start_test(server, params)
    port = accept["data_ports"][0]
    with socket.create_connection(("127.0.0.1", port)) as stranger:  # no cookie: dropped
        stranger.sendall(b"\0" * 20)
        assert stranger.recv(1) == b""
    data = socket.create_connection(("127.0.0.1", port))
    data.sendall(bytes.fromhex(accept["cookie"]) + b"\0\0\0\0")
    assert control.recv(timeout=5)["type"] == "ready"
    data.sendall(b"x" * 100_000)
    control.close()
    data.close()
    # the next client gets the server (the slot is freed once the server sees them gone)
    result = None
    for _ in range(50):
        try:
            result = run_client(server.url, duration=SHORT, interval=0.1)
        except BenchFailed as exc:
            busy = "busy" in str(exc)
        else:
            break
        assert busy
    assert result is not None
    reliable(result)


def test_server_refuses_bad_addresses() -> None:
    with pytest.raises(ConfigError):
        BenchServer(["tcp://127.0.0.1:0"], max_tests=0)
    with pytest.raises(Exception, match="tcp:// or tls://"):
        BenchServer(["udp://127.0.0.1:0"])


def test_serve_cli_subprocess_one_off() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opensocket",
            "bench",
            "serve",
            "--listen",
            "tcp://127.0.0.1:0",
            "-1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("bench server listening on tcp://127.0.0.1:")
        url = line.split()[-1]
        result = run_client(url, duration=SHORT, interval=0.1)
        reliable(result)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "test from 127.0.0.1" in out
        assert "receiver" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ipv6_wildcard_server_and_no_fd_leak() -> None:
    assert has_ipv6(), "this test needs ::1"
    before = fd_count()
    with BenchServer(["tcp://*:0"]) as dual:
        port = dual.addresses[0].port
        for url in (f"tcp://[::1]:{port}", f"tcp://127.0.0.1:{port}"):
            for protocol in ("tcp", "udp"):
                result = run_client(url, protocol=protocol, duration=0.2, bitrate=0)
                assert result.data["end"]["receiver"]["bytes"] > 0
    assert fd_count() == before


def test_serve_cli_in_process_json(free_port: int, capsys: Any) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(main(["bench", "serve", "--listen", url, "-1", "--json"]))
    )
    thread.start()
    try:
        result = None
        for _ in range(500):  # until the server listens (bounded)
            try:
                result = run_client(url, mode="rate", duration=SHORT, interval=0.1)
            except ConnectionRefused:
                continue
            break
        assert result is not None
    finally:
        thread.join(10)
    assert codes == [0]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"listening": [url]}
    assert lines[1]["peer"].startswith("127.0.0.1:")
    assert lines[1]["end"]["receiver"]["packets"] == result.data["end"]["receiver"]["packets"]
