"""ping over real loopback sockets: ICMP (raw and unprivileged), TCP connect, UDP echo."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from opensocket.cli import main
from opensocket.cli.echo import EchoService
from opensocket.errors import AddressError, ConfigError, NameResolutionError
from opensocket.tools._icmp import PingError, PingReply, PingStats, PingTimeout
from opensocket.tools.ping import Pinger, aping, ping

from ..conftest import has_ipv6

CLI = [sys.executable, "-m", "opensocket"]
HOSTS = ["127.0.0.1", "::1"]
FAST = {"count": 3, "interval": 0.01, "timeout": 2.0}
REPLY = re.compile(r"time=(\d+)\.(\d{3}) ms")


def test_loopback_has_ipv6() -> None:
    assert has_ipv6(), "the ::1 tests need IPv6 on loopback"


def closed_port(
    family: socket.AddressFamily = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> int:
    """A port that was just free (bound, then released)."""
    with socket.socket(family, kind) as sock:
        sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def listener(host: str) -> Iterator[int]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def udp_echo(host: str) -> AsyncIterator[int]:
    """opensocket's UDP echo server (the one 'opensocket echo serve udp://' runs)."""
    service = EchoService()
    url = f"udp://[{host}]:0" if ":" in host else f"udp://{host}:0"
    await service.start([url])
    try:
        yield service.addresses[0].port
    finally:
        await service.stop()


def assert_consistent(report_stats: PingStats, replies: list[PingReply]) -> None:
    """The summary is what the replies add up to."""
    check = PingStats(transmitted=report_stats.transmitted)
    for reply in replies:
        check.add(reply)
    assert check.rtt_us() == report_stats.rtt_us()
    assert check.received == report_stats.received


@pytest.mark.parametrize("host", HOSTS)
def test_icmp_echo_on_loopback(host: str) -> None:
    with Pinger(host, **FAST) as pinger:
        events = list(pinger)
        assert pinger.socket_kind == "raw"
    report = pinger.report
    assert [type(e) for e in events] == [PingReply] * 3
    replies = [e for e in events if isinstance(e, PingReply)]
    assert [r.seq for r in replies] == [1, 2, 3]
    assert {(r.size, r.ttl, r.address) for r in replies} == {(64, 64, host)}
    assert all(0 <= r.rtt_us < 1_000_000 for r in replies)
    assert (report.stats.transmitted, report.stats.received, report.stats.errors) == (3, 3, 0)
    assert report.ok
    assert_consistent(report.stats, replies)


@pytest.mark.parametrize("size", [0, 8, 15, 16, 1400, 9000])
def test_icmp_payload_sizes(size: int) -> None:
    report = ping("127.0.0.1", count=1, interval=0, size=size)
    (reply,) = report.events
    assert isinstance(reply, PingReply)
    assert reply.size == size + 8


def test_other_processes_pings_are_not_counted() -> None:
    """iputils ping runs beside us on the same host: each sees only its own replies."""
    other = subprocess.Popen(
        ["ping", "-c", "40", "-i", "0.005", "127.0.0.1"], stdout=subprocess.DEVNULL
    )
    try:
        report = ping("127.0.0.1", count=10, interval=0.01)
    finally:
        other.kill()
        other.wait(10)
    assert [e.seq for e in report.events] == list(range(1, 11))
    assert report.stats.duplicates == 0
    assert report.stats.received == 10


@pytest.mark.parametrize("host", HOSTS)
def test_tcp_connect_to_a_listener(host: str) -> None:
    with listener(host) as port:
        report = ping(host, mode="tcp", port=port, **FAST)
    replies = [e for e in report.events if isinstance(e, PingReply)]
    assert [r.seq for r in replies] == [1, 2, 3]
    assert {r.address for r in replies} == {host}
    assert report.stats.received == 3
    assert_consistent(report.stats, replies)


@pytest.mark.parametrize("host", HOSTS)
def test_tcp_closed_port_is_an_error_not_a_reply(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    report = ping(host, mode="tcp", port=closed_port(family), **FAST)
    assert all(isinstance(e, PingError) for e in report.events)
    assert [e.seq for e in report.events] == [1, 2, 3]
    assert "closed (RST)" in str(report.events[0])
    assert (report.stats.received, report.stats.errors) == (0, 3)
    assert not report.ok


@pytest.mark.parametrize("host", HOSTS)
async def test_udp_echo_server(host: str) -> None:
    async with udp_echo(host) as port:
        events = [e async for e in aping(host, mode="udp", port=port, **FAST)]
    replies = [e for e in events if isinstance(e, PingReply)]
    assert [r.seq for r in replies] == [1, 2, 3]
    assert {(r.size, r.address) for r in replies} == {(8 + 56, host)}


async def test_async_icmp_and_tcp() -> None:
    events = [e async for e in aping("::1", **FAST)]
    assert [(type(e), e.seq) for e in events] == [(PingReply, 1), (PingReply, 2), (PingReply, 3)]
    with listener("127.0.0.1") as port:
        events = [e async for e in aping("127.0.0.1", mode="tcp", port=port, **FAST)]
    assert len([e for e in events if isinstance(e, PingReply)]) == 3


def test_udp_closed_port_reports_port_unreachable() -> None:
    port = closed_port(kind=socket.SOCK_DGRAM)
    report = ping("127.0.0.1", mode="udp", port=port, **FAST)
    assert report.stats.received == 0
    assert report.stats.errors >= 1
    assert "Port Unreachable" in str(report.events[0])


def test_silence_times_out() -> None:
    """A UDP socket that never answers: each probe expires after the timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        report = ping("127.0.0.1", mode="udp", port=port, count=2, interval=0.01, timeout=0.05)
    assert report.events == [PingTimeout(1), PingTimeout(2)]
    assert report.stats.loss_percent == 100.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "count must be at least 1"),
        ({"interval": -1}, "interval must be >= 0"),
        ({"interval": 0.001, "count": None}, "an interval below 0.002 s needs a count"),
        ({"mode": "tcp", "port": 80, "icmp_socket": "raw"}, "icmp_socket applies to icmp"),
        ({"timeout": 0}, "timeout must be a positive"),
        ({"size": 70000}, "size must be between 0 and 65507"),
        ({"mode": "tcp"}, "tcp pings need a port"),
        ({"port": 80}, "a port applies to tcp and udp pings only"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ping("127.0.0.1", **kwargs)


def test_unknown_host() -> None:
    with pytest.raises(NameResolutionError, match="cannot resolve"):
        ping("no-such-host.invalid", count=1)


@pytest.mark.parametrize(
    ("host", "family", "message"),
    [
        ("::1", socket.AF_INET, "::1 is an IPv6 address and IPv4 was asked for"),
        ("127.0.0.1", socket.AF_INET6, "127.0.0.1 is an IPv4 address and IPv6 was asked for"),
    ],
)
def test_literal_of_the_other_family_is_an_address_error(
    host: str, family: int, message: str
) -> None:
    with pytest.raises(AddressError) as info:
        ping(host, count=1, family=family)
    assert str(info.value) == message


def test_icmp_socket_kind_reaches_the_pinger() -> None:
    report = ping("127.0.0.1", icmp_socket="raw", **FAST)
    assert report.stats.received == 3
    # the datagram kind works exactly when ping_group_range holds our group: proves it is used
    with open("/proc/sys/net/ipv4/ping_group_range") as handle:
        low, high = map(int, handle.read().split())
    if low <= os.getgid() <= high:
        assert ping("127.0.0.1", icmp_socket="dgram", **FAST).stats.received == 3
    else:
        with pytest.raises(ConfigError, match="unprivileged ICMP sockets are disabled"):
            ping("127.0.0.1", icmp_socket="dgram", **FAST)


async def test_aping_takes_the_icmp_socket_kind() -> None:
    events = [e async for e in aping("::1", icmp_socket="raw", **FAST)]
    assert [e.seq for e in events if isinstance(e, PingReply)] == [1, 2, 3]


# ---- the command line ------------------------------------------------------------------------


def iputils_summary(times_us: list[int]) -> str:
    stats = PingStats(transmitted=len(times_us))
    for seq, us in enumerate(times_us, 1):
        stats.add(PingReply(seq, us))
    return stats.summary_lines(0)[1]


def test_cli_output_is_what_ping_users_know(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "127.0.0.1", "-c", "4", "-i", "0.01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data."
    for seq, line in enumerate(lines[1:5], 1):
        assert re.fullmatch(
            rf"64 bytes from 127\.0\.0\.1: icmp_seq={seq} ttl=64 time=\d+\.\d+ ms", line
        )
    assert lines[5:7] == ["", "--- 127.0.0.1 ping statistics ---"]
    assert re.fullmatch(r"4 packets transmitted, 4 received, 0% packet loss, time \d+ms", lines[7])
    # the summary follows from the per-reply lines (sub-ms times are printed to the microsecond)
    times = [int(m[1]) * 1000 + int(m[2]) for m in map(REPLY.search, lines[1:5]) if m]
    assert len(times) == 4
    assert lines[8] == iputils_summary(times)


def test_cli_ipv6_banner_and_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "-6", "::1", "-c", "1", "-s", "100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "PING ::1(::1) 100 data bytes"
    assert lines[1].startswith("108 bytes from ::1: icmp_seq=1 ttl=64 time=")


def test_cli_tcp_and_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    with listener("127.0.0.1") as port:
        assert main(["ping", "127.0.0.1", "--tcp", str(port), "-c", "2", "-i", "0.01"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == f"PING 127.0.0.1 (127.0.0.1) port {port}: TCP connect"
        assert re.fullmatch(rf"connected to 127\.0\.0\.1 port {port}: tcp_seq=1 time=.* ms", out[1])
        assert main(["ping", "127.0.0.1", "--tcp", str(port), "-c", "2", "-i", "0", "-q"]) == 0
    quiet = capsys.readouterr().out.splitlines()
    assert len(quiet) == 5  # banner, blank, title, totals, rtt
    assert quiet[3].startswith("2 packets transmitted, 2 received, 0% packet loss")


@pytest.mark.parametrize("mode", ["--tcp", "--udp"])
def test_cli_exits_1_when_nothing_comes_back(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    kind = socket.SOCK_STREAM if mode == "--tcp" else socket.SOCK_DGRAM
    port = str(closed_port(kind=kind))
    assert main(["ping", "127.0.0.1", mode, port, "-c", "2", "-i", "0.01"]) == 1
    out = capsys.readouterr().out
    assert "2 packets transmitted, 0 received, +2 errors, 100% packet loss" in out
    assert "rtt min" not in out


async def test_cli_udp_json(capsys: pytest.CaptureFixture[str]) -> None:
    async with udp_echo("::1") as port:
        argv = ["ping", "::1", "--udp", str(port), "-c", "3", "-i", "0.01", "--json"]
        code = await asyncio.to_thread(main, argv)
    assert code == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["event"] for d in docs] == ["reply", "reply", "reply", "summary"]
    assert [d["seq"] for d in docs[:3]] == [1, 2, 3]
    assert set(docs[0]) == {"event", "seq", "from", "bytes", "ttl", "time_ms"}
    summary = docs[-1]
    assert summary["transmitted"] == summary["received"] == 3
    assert summary["mode"] == "udp"
    assert summary["port"] == port
    assert summary["exit"] == 0
    assert summary["rtt_ms"]["min"] <= summary["rtt_ms"]["avg"] <= summary["rtt_ms"]["max"]
    assert summary["rtt_ms"]["min"] == min(d["time_ms"] for d in docs[:3])


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "0"],
        ["-s", "-1"],
        ["--tcp", "0"],
        ["--tcp", "1", "--udp", "2"],
        ["-4", "-6"],
    ],
)
def test_cli_usage_errors_exit_2(argv: list[str]) -> None:
    assert main(["ping", "127.0.0.1", *argv]) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-c", "0"], "-c/--count must be at least 1 (got 0)"),
        (["-W", "0"], "-W/--timeout must be a positive number (got 0)"),
        (["-i", "-1"], "-i/--interval must be >= 0 seconds (got -1)"),
        (["-i", "0.001"], "-i/--interval below 0.002 s needs -c COUNT"),
        (["-s", "-1"], "-s/--size must be between 0 and 65507 bytes (got -1)"),
        (["-s", "70000"], "-s/--size must be between 0 and 65507 bytes (got 70000)"),
        (["--udp", "9", "-s", "65500"], "-s/--size must be between 0 and 65499 bytes"),
        (["--tcp", "80", "-s", "1000"], "-s/--size does not apply to --tcp"),
        (["--tcp", "80", "--icmp-socket", "raw"], "--icmp-socket does not apply to --tcp"),
        (["--udp", "80", "--icmp-socket", "raw"], "--icmp-socket applies to ICMP pings only"),
    ],
)
def test_cli_option_errors_name_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ping", "127.0.0.1", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["no-such-host.invalid"], "cannot resolve 'no-such-host.invalid'"),
        (["-4", "::1"], "::1 is an IPv6 address and IPv4 was asked for"),
        (["-6", "127.0.0.1"], "127.0.0.1 is an IPv4 address and IPv6 was asked for"),
    ],
)
def test_cli_unusable_host_exits_2_like_iputils(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ping", *argv, "-c", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err
    if "-4" in argv or "-6" in argv:
        assert "DNS" not in err  # a literal address was never looked up


def test_cli_fast_interval_with_a_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "127.0.0.1", "-i", "0.001", "-c", "3", "-q"]) == 0
    assert "3 packets transmitted, 3 received" in capsys.readouterr().out


def test_cli_quiet_json_is_the_summary_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "127.0.0.1", "-c", "3", "-i", "0", "-q", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    summary = json.loads(line)
    assert (summary["event"], summary["transmitted"], summary["received"]) == ("summary", 3, 3)


@pytest.mark.parametrize("size", [56, 9000])
async def test_cli_udp_banner_and_replies_count_the_same_bytes(
    size: int, capsys: pytest.CaptureFixture[str]
) -> None:
    async with udp_echo("127.0.0.1") as port:
        argv = ["ping", "127.0.0.1", "--udp", str(port), "-c", "2", "-i", "0", "-s", str(size)]
        assert await asyncio.to_thread(main, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"UDP echo, {size + 8} bytes")
    assert lines[1].startswith(f"{size + 8} bytes from 127.0.0.1 port {port}: udp_seq=1 ")


def test_ctrl_c_prints_the_summary() -> None:
    proc = subprocess.Popen(
        [*CLI, "ping", "127.0.0.1", "-i", "0.05"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("PING 127.0.0.1")
        assert "icmp_seq=1" in proc.stdout.readline()
        assert "icmp_seq=2" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == 0
    assert "--- 127.0.0.1 ping statistics ---" in out
    assert re.search(r"(\d+) packets transmitted, \d+ received", out)


# ---- unprivileged ICMP sockets, in a network namespace of our own ----------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with loopback up; deleted afterwards."""
    name = f"ostest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def in_netns(name: str, groups: str, *argv: str) -> subprocess.CompletedProcess[str]:
    sysctl = ["ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv4.ping_group_range={groups}"]
    subprocess.run(sysctl, check=True)
    return subprocess.run(
        ["ip", "netns", "exec", name, *CLI, *argv], capture_output=True, text=True, timeout=20
    )


@pytest.mark.parametrize("host", HOSTS)
def test_unprivileged_icmp_socket(netns: str, host: str) -> None:
    done = in_netns(
        netns, "0 2147483647", "ping", host, "--icmp-socket", "dgram", "-c", "2",
        "-i", "0.01", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    docs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(d["event"], d.get("ttl")) for d in docs[:2]] == [("reply", 64), ("reply", 64)]
    assert docs[-1]["received"] == 2


def test_no_icmp_socket_says_what_to_do(netns: str) -> None:
    done = in_netns(netns, "1 0", "ping", "127.0.0.1", "--icmp-socket", "dgram", "-c", "1")
    assert done.returncode == 2
    assert "ping_group_range is '1 0'" in done.stderr
    assert "sysctl -w net.ipv4.ping_group_range='0 2147483647'" in done.stderr
    assert "--tcp PORT" in done.stderr


def test_cli_json_timeouts_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = str(silent.getsockname()[1])
        argv = ["ping", "127.0.0.1", "--udp", port, "-c", "2", "-i", "0", "-W", "0.05", "--json"]
        assert main(argv) == 1
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert docs[:2] == [{"event": "timeout", "seq": 1}, {"event": "timeout", "seq": 2}]
    assert (docs[2]["event"], docs[2]["received"], docs[2]["exit"]) == ("summary", 0, 1)
    assert docs[2]["rtt_ms"] is None  # present, null: nothing came back
    closed = str(closed_port())
    assert main(["ping", "127.0.0.1", "--tcp", closed, "-c", "1", "--json"]) == 1
    error = json.loads(capsys.readouterr().out.splitlines()[0])
    assert error["event"] == "error"
    assert error["message"] == f"port {closed} closed (RST)"
    assert error["time_ms"] >= 0


def test_cli_udp_and_timeout_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        assert main(["ping", "127.0.0.1", "--udp", str(port), "-c", "1", "-W", "0.05"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"PING 127.0.0.1 (127.0.0.1) port {port}: UDP echo, 64 bytes"
    assert lines[1] == "no answer yet for udp_seq=1"
    assert (
        lines[4]
        == "1 packets transmitted, 0 received, 100% packet loss, time "
        + (lines[4].rsplit(" ", 1)[1])
    )


@pytest.mark.parametrize(
    ("host", "hint"),
    [
        ("127.0.0.1:80", "opensocket ping 127.0.0.1 --tcp 80"),
        ("[::1]:22", "opensocket ping ::1 --tcp 22"),
    ],
)
def test_a_port_in_the_host_points_to_tcp(host: str, hint: str) -> None:
    from opensocket.errors import AddressError
    from opensocket.tools.ping import resolve

    with pytest.raises(AddressError, match="has a port") as info:
        resolve(host)
    assert hint in str(info.value)
    assert resolve("::1").address == "::1"  # an IPv6 address is not host:port
