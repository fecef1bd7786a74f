"""`opensocket.tools.scan` against real listeners on loopback (and in network namespaces the
tests create, where nothing but our own sockets listens)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from opensocket.errors import AddressError, ConfigError
from opensocket.tools.scan import PortState, ScanReport, scan, scan_blocking

from ..conftest import fd_count, has_ipv6

LISTENERS = 20


def _listeners(host: str, count: int, backlog: int = 128) -> list[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((host, 0))
        sock.listen(backlog)
        socks.append(sock)
    return socks


def _free_ports(host: str, count: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> list[int]:
    """Ports that nothing holds a moment ago (bound, then closed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family, kind) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def listening() -> Iterator[list[int]]:
    """20 listeners on random 127.0.0.1 ports, their ports sorted."""
    socks = _listeners("127.0.0.1", LISTENERS)
    yield sorted(s.getsockname()[1] for s in socks)
    for sock in socks:
        sock.close()


def _only_host(report: ScanReport) -> tuple[str, list[int], list[PortState]]:
    (host,) = report.hosts
    return host.address, list(host.open_ports), [r.state for r in host.ports]


async def test_exact_open_set_in_port_order(listening: list[int]) -> None:
    closed = _free_ports("127.0.0.1", 10)
    report = await scan("127.0.0.1", [*closed, *reversed(listening)], timeout=2.0)
    address, open_ports, _ = _only_host(report)
    assert address == "127.0.0.1"
    assert open_ports == listening  # sorted: port order whatever order they were given in
    host = report.hosts[0]
    assert host.closed == len(set(closed) - set(listening))
    assert [r.port for r in host.results()] == sorted({*closed, *listening})
    assert all(host.state(p) is PortState.CLOSED for p in closed if p not in listening)
    assert host.state(listening[0]) is PortState.OPEN
    assert host.state(1) is None  # not scanned
    assert report.ports == tuple(sorted({*closed, *listening}))
    first = host.ports[0]
    assert (first.protocol, first.reason, first.banner) == ("tcp", "syn-ack", None)


def _full_backlog() -> tuple[socket.socket, socket.socket]:
    """A listener whose one-connection backlog is taken: the kernel drops SYNs to it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(("127.0.0.1", listener.getsockname()[1]))
    return listener, filler


def _nmap_open(ports: list[int], host: str = "127.0.0.1") -> list[int]:
    spec = ",".join(map(str, ports))
    cmd = ["nmap", "-sT", "-p", spec, "-n", "-Pn", "-oX", "-", host]
    if ":" in host:
        cmd.insert(1, "-6")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    root = ET.fromstring(out)
    return sorted(
        int(port.get("portid", "0"))
        for port in root.iter("port")
        if port.find("state") is not None and port.find("state").get("state") == "open"  # type: ignore[union-attr]
    )


def test_same_open_set_as_nmap(listening: list[int]) -> None:
    assert shutil.which("nmap"), "nmap is required (apt-get install nmap)"
    ports = sorted({*listening, *_free_ports("127.0.0.1", 20)})
    ours = list(scan_blocking("127.0.0.1", ports).hosts[0].open_ports)
    theirs = _nmap_open(ports)
    assert ours == theirs == listening


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 on this host")
@pytest.mark.parametrize("target", ["::1", "[::1]", "::1/128"])
async def test_ipv6(target: str) -> None:
    socks = _listeners("::1", 5)
    try:
        want = sorted(s.getsockname()[1] for s in socks)
        closed = _free_ports("::1", 5)
        report = await scan(target, want + closed)
        address, open_ports, _ = _only_host(report)
        assert (address, open_ports) == ("::1", want)
        assert _nmap_open(want + closed, "::1") == want
    finally:
        for sock in socks:
            sock.close()


async def test_filtered_is_a_timeout_after_retries() -> None:
    """A listener whose backlog is full drops SYNs: the port only ever times out."""
    listener, filler = _full_backlog()
    port = listener.getsockname()[1]
    other = _listeners("127.0.0.1", 1)[0]
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        report = await scan("127.0.0.1", [port, other.getsockname()[1]], timeout=0.1, retries=2)
        elapsed = loop.time() - start
        host = report.hosts[0]
        assert host.state(port) is PortState.FILTERED
        assert {r.port: r.reason for r in host.ports}[port] == "no-response"
        assert host.state(other.getsockname()[1]) is PortState.OPEN
        assert elapsed >= 0.3  # three probes, each waited out: a retry is not skipped
    finally:
        for sock in (filler, listener, other):
            sock.close()


async def test_timeout_retry_finds_a_port_freed_meanwhile() -> None:
    """A SYN dropped once is not "filtered": the retry after the backlog drains connects."""
    listener, filler = _full_backlog()
    port = listener.getsockname()[1]
    loop = asyncio.get_running_loop()

    def drain() -> None:
        conn, _ = listener.accept()  # the queued connection leaves the backlog
        conn.close()

    loop.call_later(0.15, drain)
    try:
        report = await scan("127.0.0.1", [port], timeout=0.1, retries=10)
        assert report.hosts[0].open_ports == (port,)
    finally:
        filler.close()
        listener.close()


async def test_connect_answered_later_through_the_loop() -> None:
    """The SYN is dropped, the backlog drains, the kernel's SYN retransmission (after 1 s)
    connects: the probe completes through add_writer, not at once."""
    listener, filler = _full_backlog()
    port = listener.getsockname()[1]

    def drain() -> None:
        conn, _ = listener.accept()
        conn.close()

    asyncio.get_running_loop().call_later(0.1, drain)
    try:
        report = await scan("127.0.0.1", [port], timeout=5.0, retries=0)
        assert report.hosts[0].open_ports == (port,)
    finally:
        filler.close()
        listener.close()


async def test_out_of_descriptors_is_not_an_answer() -> None:
    """With 3 free descriptors and 10 SYN-dropping ports in the way, sockets run out
    (EMFILE): the scan waits for free ones and still gets every port right."""
    pairs = [_full_backlog() for _ in range(10)]
    opened = _listeners("127.0.0.1", 5)
    filtered = [listener.getsockname()[1] for listener, _ in pairs]
    open_ports = sorted(s.getsockname()[1] for s in opened)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (fd_count() + 3, hard))
    try:
        report = await scan("127.0.0.1", filtered + open_ports, timeout=0.1, retries=0)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for sock in [*opened, *(s for pair in pairs for s in pair)]:
            sock.close()
    host = report.hosts[0]
    assert host.open_ports == tuple(open_ports)
    assert all(host.state(p) is PortState.FILTERED for p in filtered)


async def _banner_server(banner: bytes) -> asyncio.Server:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if banner:
            writer.write(banner)
        try:
            await reader.read()  # until the scanner's RST
        except ConnectionError:
            pass
        writer.close()

    return await asyncio.start_server(greet, "127.0.0.1", 0)


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def test_banner_grab() -> None:
    talker = await _banner_server(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n")
    silent = await _banner_server(b"")
    try:
        ports = [_port(talker), _port(silent)]
        report = await scan("127.0.0.1", ports, banner=True, banner_timeout=0.3)
        by_port = {r.port: r for r in report.hosts[0].ports}
        assert by_port[ports[0]].banner == b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n"
        assert by_port[ports[0]].service == "ssh"  # from the banner, not the port number
        assert by_port[ports[0]].to_dict()["banner"] == "SSH-2.0-OpenSSH_9.2p1 Debian\r\n"
        assert by_port[ports[1]].state is PortState.OPEN
        assert by_port[ports[1]].banner is None
        plain = await scan("127.0.0.1", ports)  # without --banner nothing is read
        assert all(r.banner is None for r in plain.hosts[0].ports)
    finally:
        for server in (talker, silent):
            server.close()


async def test_udp_open_filtered_open_and_closed() -> None:
    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(b"pong", addr)  # type: ignore[attr-defined]

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    closed = _free_ports("127.0.0.1", 3, socket.SOCK_DGRAM)
    try:
        silent_port = silent.getsockname()[1]
        echo_port = echo.get_extra_info("sockname")[1]
        report = await scan(
            "127.0.0.1", [silent_port, echo_port, *closed], udp=True, timeout=0.2, retries=1
        )
        host = report.hosts[0]
        assert host.protocol == "udp"
        assert host.state(silent_port) is PortState.OPEN_FILTERED
        assert host.state(echo_port) is PortState.OPEN
        assert {r.port: r.banner for r in host.ports}[echo_port] == b"pong"
        for port in closed:  # the ICMP port unreachable, seen as ECONNREFUSED
            assert host.state(port) is PortState.CLOSED
        assert host.closed == 3
    finally:
        silent.close()
        echo.close()


async def test_rate_limit_spaces_probes() -> None:
    closed = _free_ports("127.0.0.1", 20)
    loop = asyncio.get_running_loop()
    start = loop.time()
    report = await scan("127.0.0.1", closed, rate=100)
    assert loop.time() - start >= 0.18  # 20 probes at 100/s: the last one 0.19 s in
    assert report.hosts[0].closed == 20


async def test_progress_reports_reach_the_total() -> None:
    seen: list[tuple[int, int]] = []
    await scan("127.0.0.1", "1-1000", progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (1000, 1000)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


async def test_no_descriptor_leak() -> None:
    before = fd_count()
    await scan("127.0.0.1", "1-3000", concurrency=5000)
    assert fd_count() <= before  # another test's late close may end meanwhile


async def test_several_targets_and_ranges(listening: list[int]) -> None:
    report = await scan(["127.0.0.1-3", "localhost", "127.0.0.2"], listening[:3])
    # 127.0.0.2 twice and localhost = 127.0.0.1: each address is scanned once
    assert [h.address for h in report.hosts] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert report.hosts[0].open_ports == tuple(listening[:3])
    assert report.hosts[1].open_ports == ()  # the listeners are bound to 127.0.0.1 only


async def test_bad_input_is_a_precise_error() -> None:
    with pytest.raises(AddressError, match="bad scan target"):
        await scan("127.0.0.300", "80")
    with pytest.raises(ConfigError, match="bad port spec"):
        await scan("127.0.0.1", "0")
    with pytest.raises(ConfigError, match="port"):
        await scan("127.0.0.1", [0])
    with pytest.raises(ConfigError, match="timeout"):
        await scan("127.0.0.1", "80", timeout=0)
    with pytest.raises(ConfigError, match="concurrency"):
        await scan("127.0.0.1", "80", concurrency=0)
    with pytest.raises(ConfigError, match="rate"):
        await scan("127.0.0.1", "80", rate=-1)
    with pytest.raises(ConfigError, match="retries"):
        await scan("127.0.0.1", "80", retries=-1)


# ---- in a network namespace of our own: nothing else listens there -----------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with only lo up (deleted afterwards)."""
    assert shutil.which("ip"), "iproute2 is required"
    name = f"osscan-{os.getpid()}-{os.urandom(3).hex()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True, timeout=10)


def _in_netns(name: str, script: str, timeout: float = 40) -> dict[str, object]:
    """Run a Python script in the namespace; it prints one JSON object."""
    out = subprocess.run(
        ["ip", "netns", "exec", name, sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_full_range_at_high_concurrency_matches_nmap(netns: str) -> None:
    """Every port, 5,000 probes in flight: exactly our listeners, exactly nmap's set."""
    result = _in_netns(
        netns,
        """
        import json, socket, subprocess
        import xml.etree.ElementTree as ET
        from opensocket.tools.scan import scan_blocking
        socks = []
        for _ in range(20):
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4096); socks.append(s)
        want = sorted(s.getsockname()[1] for s in socks)
        report = scan_blocking("127.0.0.1", "-", concurrency=5000)
        xml = subprocess.run(["nmap", "-sT", "-p-", "-T4", "-n", "-Pn", "-oX", "-", "127.0.0.1"],
                             capture_output=True, text=True, check=True).stdout
        nmap = sorted(int(p.get("portid")) for p in ET.fromstring(xml).iter("port")
                      if p.find("state").get("state") == "open")
        host = report.hosts[0]
        print(json.dumps({"want": want, "ours": list(host.open_ports), "nmap": nmap,
                          "closed": host.closed, "states": [str(r.state) for r in host.ports]}))
        """,
    )
    assert result["ours"] == result["want"]
    assert result["nmap"] == result["want"]
    assert result["closed"] == 65535 - LISTENERS
    assert result["states"] == ["open"] * LISTENERS


def test_self_connect_is_not_open(netns: str) -> None:
    """With one ephemeral port, connecting to it connects the socket to itself (TCP
    simultaneous open, and a UDP socket receiving its own datagram): closed, not open."""
    result = _in_netns(
        netns,
        """
        import json
        from opensocket.tools.scan import scan_blocking
        with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
            f.write("40000 40000")
        out = {}
        for udp in (False, True):
            host = scan_blocking("127.0.0.1", "39999-40001", udp=udp, timeout=0.2).hosts[0]
            out["udp" if udp else "tcp"] = [host.open_ports, host.closed, host.self_connects,
                                            str(host.state(40000))]
        print(json.dumps(out))
        """,
    )
    assert result["tcp"] == [[], 3, 1, "closed"]
    assert result["udp"] == [[], 3, 1, "closed"]


def test_nothing_resolvable_is_a_failure(netns: str) -> None:
    """In a namespace with only lo, no DNS server is reachable (and no packet leaves)."""
    result = _in_netns(
        netns,
        """
        import json
        from opensocket.errors import NameResolutionError
        from opensocket.tools.scan import scan_blocking
        try:
            scan_blocking("nosuch.invalid", "80")
        except NameResolutionError as exc:
            print(json.dumps({"error": str(exc)}))
        """,
    )
    assert "no target could be resolved" in str(result["error"])
    assert "nosuch.invalid" in str(result["error"])


def test_cli_exit_code_1_when_nothing_resolves(netns: str) -> None:
    cli = [sys.executable, "-m", "opensocket", "scan", "nosuch.invalid", "-p", "80", "--json"]
    done = subprocess.run(
        ["ip", "netns", "exec", netns, *cli], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert json.loads(done.stdout) == {
        "error": "no target could be resolved: cannot resolve 'nosuch.invalid': "
        + done.stderr.split("cannot resolve 'nosuch.invalid': ", 1)[1].strip(),
        "exit": 1,
    }
    assert done.stderr.startswith("opensocket scan: error: no target could be resolved")
