"""stat against ``ss`` with sockets we open; filters, JSON schema, the live view."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from opensocket.cli import main
from opensocket.cli.stat import format_table
from opensocket.errors import ConfigError
from opensocket.tools.stat import (
    SocketRow,
    count_states,
    list_sockets,
    normalize_state,
)

CLI = [sys.executable, "-m", "opensocket"]
SS_STATES = {"ESTAB": "ESTABLISHED", "UNCONN": "UNCONN"}
USER = re.compile(r'\("([^"]*)",pid=(\d+),fd=(\d+)\)')
Row = tuple[str, str, str, tuple[tuple[int, str], ...], tuple[int, int]]


def ss_tool() -> str:
    path = shutil.which("ss")
    assert path is not None, "the stat tests compare with ss (apt-get install iproute2)"
    return path


@dataclass
class Sockets:
    """Sockets this test opened: their ports, and the child process holding one."""

    ports: set[int] = field(default_factory=set)
    # (local port, remote port) of each of our sockets (0: no peer): rows of other processes
    # that happen to use our ports (a port scan running beside us) are not ours to compare
    pairs: set[tuple[int, int]] = field(default_factory=set)
    socks: list[socket.socket] = field(default_factory=list)
    child: subprocess.Popen[bytes] | None = None
    child_port: int = 0

    def listen(self, host: str, *, kind: int = socket.SOCK_STREAM) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, kind)
        self.socks.append(sock)
        sock.bind((host, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(8)
        self.ports.add(sock.getsockname()[1])
        self.pairs.add((sock.getsockname()[1], 0))
        return sock

    def pair(self, host: str) -> tuple[socket.socket, socket.socket]:
        server = self.listen(host)
        client = socket.create_connection(server.getsockname()[:2])
        accepted, _ = server.accept()
        self.socks += [client, accepted]
        ends = (client.getsockname()[1], server.getsockname()[1])
        self.pairs |= {ends, ends[::-1]}
        return client, accepted

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        if self.child is not None:
            self.child.kill()
            self.child.wait(10)
            if self.child.stderr is not None:
                self.child.stderr.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    """Listeners and connected pairs on 127.0.0.1 and ::1, a TIME_WAIT, a socat listener."""
    s = Sockets()
    try:
        s.listen("127.0.0.1")
        s.listen("::1")
        s.pair("127.0.0.1")
        s.pair("::1")
        client, accepted = s.pair("127.0.0.1")
        port = client.getsockname()[1]
        client.close()  # the active closer keeps TIME_WAIT, owned by nobody
        accepted.close()
        for _ in range(1000):  # the FIN exchange on loopback completes within moments
            if [r.state for r in list_sockets(("tcp",), port=port, processes=False)] == [
                "TIME_WAIT"
            ]:
                break
        s.listen("127.0.0.1", kind=socket.SOCK_DGRAM)
        s.child_port = free_port()
        socat = shutil.which("socat")
        assert socat is not None, "apt-get install socat"
        s.child = subprocess.Popen(
            [socat, "-d", "-d", f"TCP-LISTEN:{s.child_port},bind=127.0.0.1,reuseaddr,fork", "-"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert s.child.stderr is not None
        for _ in range(20):
            if b"listening on" in s.child.stderr.readline():
                break
        s.ports.add(s.child_port)
        s.pairs.add((s.child_port, 0))
        yield s
    finally:
        s.close()


def _address(text: str) -> str:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if host in ("*", "0.0.0.0", "::"):
        host = "*"
    return f"{host}:{port}"


def ss_rows(pairs: set[tuple[int, int]], flags: str = "-tanpH") -> set[Row]:
    """``ss -tanpH`` rows whose (local port, remote port) is one of ``pairs``."""
    out = subprocess.run([ss_tool(), flags], capture_output=True, text=True, check=True)
    rows = set()
    for line in out.stdout.splitlines():
        parts = line.split()
        local, remote = _address(parts[3]), _address(parts[4])
        if (_port(local), _port(remote)) not in pairs:
            continue
        state = SS_STATES.get(parts[0], normalize_state(parts[0]))
        users = tuple(sorted({(int(pid), name) for name, pid, _ in USER.findall(line)}))
        rows.add((state, local, remote, users, (int(parts[1]), int(parts[2]))))
    return rows


def _port(text: str) -> int:
    port = text.rsplit(":", 1)[1]
    return 0 if port == "*" else int(port)


def our_rows(
    rows: list[SocketRow], pairs: set[tuple[int, int]], *, queues: bool = True
) -> set[Row]:
    """Rows as ``ss_rows`` gives them (Recv-Q and Send-Q as 0, 0 unless ``queues``)."""
    return {
        (
            r.state,
            _address(r.local),
            _address(r.remote).replace(":*", ":0") if r.remote_port == 0 else _address(r.remote),
            tuple(sorted({(o.pid, o.name) for o in r.owners})),
            (r.recv_q, r.send_q) if queues else (0, 0),
        )
        for r in rows
        if (r.local_port, r.remote_port) in pairs
    }


def normalize_remote(rows: set[Row]) -> set[Row]:
    """ss prints an unset peer as ``*:*`` or ``0.0.0.0:*``: compare both as ``*:0``."""
    return {
        (s, lo, "*:0" if re.fullmatch(r"\*:(\*|0)", re_) else re_, u, q)
        for s, lo, re_, u, q in rows
    }


def snapshot(
    pairs: set[tuple[int, int]],
    flags: str = "-tanpH",
    protocols: tuple[str, ...] = ("tcp", "tcp6"),
) -> tuple[set[Row], set[Row]]:
    """ss and us at the same moment: retried while ss sees a change around our listing."""
    for _ in range(20):
        before = normalize_remote(ss_rows(pairs, flags))
        ours = normalize_remote(our_rows(list_sockets(protocols), pairs))
        if normalize_remote(ss_rows(pairs, flags)) == before:
            break
    return ours, before


def test_lists_what_ss_tanp_lists(sockets: Sockets) -> None:
    ours, theirs = snapshot(sockets.pairs)
    assert ours == theirs, f"only ours: {ours - theirs}; only ss: {theirs - ours}"
    states = sorted(r[0] for r in ours)
    assert states.count("LISTEN") == 6  # 2 listeners, 3 pairs' listeners, socat
    assert states.count("ESTABLISHED") == 4
    assert states.count("TIME_WAIT") == 1
    with open(f"/proc/{os.getpid()}/comm") as comm:
        me = (os.getpid(), comm.read().strip())
    assert sum(1 for r in ours if r[3] == (me,)) == 9
    # Send-Q of a listener is its backlog: ours 8, socat's 5
    assert {r[4][1] for r in ours if r[0] == "LISTEN"} == {8, 5}
    assert sockets.child is not None
    assert any(r[3] == ((sockets.child.pid, "socat"),) for r in ours)


def test_lists_what_ss_uanp_lists(sockets: Sockets) -> None:
    ours, theirs = snapshot(sockets.pairs, "-uanpH", ("udp", "udp6"))
    assert ours == theirs, f"only ours: {ours - theirs}; only ss: {theirs - ours}"
    assert [r[0] for r in ours] == ["UNCONN"]


@pytest.mark.parametrize("source", ["proc", "psutil"])
def test_every_source_gives_the_same_rows(sockets: Sockets, source: str) -> None:
    protocols = ("tcp", "tcp6", "udp", "udp6")
    # /proc and psutil do not report a listener's backlog (ss's Send-Q): queues left out
    netlink = our_rows(list_sockets(protocols, source="netlink"), sockets.pairs, queues=False)
    other = our_rows(list_sockets(protocols, source=source), sockets.pairs, queues=False)
    assert other == netlink
    from_netlink = netlink
    assert len(from_netlink) == 12  # 11 TCP sockets and the UDP one


def test_rows_are_sorted(sockets: Sockets) -> None:
    rows = list_sockets(("tcp", "tcp6", "udp", "udp6", "unix"))
    assert rows == sorted(rows, key=SocketRow.sort_key)
    assert [r.proto for r in rows] == sorted(
        (r.proto for r in rows), key=("tcp", "tcp6", "udp", "udp6", "unix").index
    )


def test_filters(sockets: Sockets) -> None:
    port = min(sockets.ports)
    by_port = list_sockets(port=port)
    assert by_port
    assert all(port in (r.local_port, r.remote_port) for r in by_port)
    listening = list_sockets(listening=True)
    assert {r.state for r in listening} <= {"LISTEN", "UNCONN"}
    assert sockets.child is not None
    (socat_row,) = list_sockets(pid=sockets.child.pid)
    assert (socat_row.local_port, socat_row.state) == (sockets.child_port, "LISTEN")
    established = list_sockets(states=["estab"], pid=os.getpid())
    assert len(established) == 4
    assert {r.proto for r in established} == {"tcp", "tcp6"}
    assert {r.proto for r in list_sockets(("tcp6",), pid=os.getpid())} == {"tcp6"}
    udp = list_sockets(("udp",), pid=os.getpid())
    assert [(r.proto, r.state) for r in udp] == [("udp", "UNCONN")]


def test_unix_sockets(sock_path: str) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(sock_path)
        server.listen(1)
        rows = list_sockets(("unix",), listening=True, pid=os.getpid())
        (row,) = [r for r in rows if r.local_host == sock_path]
        assert (row.state, row.kind, row.local) == ("LISTEN", "stream", sock_path)
        assert row.as_dict()["local"] == {"path": sock_path}


def test_states_parse_ss_and_netstat_spellings() -> None:
    assert normalize_state("estab") == "ESTABLISHED"
    assert normalize_state("time-wait") == "TIME_WAIT"
    assert normalize_state("FIN-WAIT-1") == "FIN_WAIT1"
    assert normalize_state(" listen ") == "LISTEN"
    with pytest.raises(ConfigError, match="unknown protocol"):
        list_sockets(("sctp",))


def test_count_states_and_table() -> None:
    rows = [
        SocketRow("tcp", "127.0.0.1", 80, "0.0.0.0", 0, "LISTEN"),
        SocketRow("tcp6", "::1", 22, "::1", 5000, "ESTABLISHED"),
        SocketRow("tcp6", "::1", 5000, "::1", 22, "ESTABLISHED"),
    ]
    assert count_states(rows) == {"ESTABLISHED": 2, "LISTEN": 1}
    lines = format_table(rows).splitlines()
    assert lines[0].split() == [
        "Proto", "State", "Recv-Q", "Send-Q", "Local", "Address", "Peer", "Address", "PID/Program"
    ]  # fmt: skip
    assert lines[1].split() == ["tcp", "LISTEN", "0", "0", "127.0.0.1:80", "0.0.0.0:*"]
    assert lines[2].split() == ["tcp6", "ESTABLISHED", "0", "0", "[::1]:22", "[::1]:5000"]


# ---- the command line ------------------------------------------------------------------------


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    assert main(["stat", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_cli_json_schema(sockets: Sockets, capsys: pytest.CaptureFixture[str]) -> None:
    (doc,) = run_json(capsys, "--json", "--tcp", "--pid", str(os.getpid()))
    assert set(doc) == {"time", "counts", "total", "sockets"}
    assert doc["total"] == len(doc["sockets"]) == 9
    assert doc["counts"] == {"LISTEN": 5, "ESTABLISHED": 4}
    for item in doc["sockets"]:
        assert set(item) == {
            "proto", "local", "remote", "state", "recv_q", "send_q", "inode", "processes"
        }  # fmt: skip
        assert item["proto"] in ("tcp", "tcp6")
        assert set(item["local"]) == set(item["remote"]) == {"host", "port"}
        assert isinstance(item["local"]["port"], int)
        assert isinstance(item["inode"], int)
        assert item["processes"][0]["pid"] == os.getpid()
        assert set(item["processes"][0]) == {"pid", "name", "fd"}


def test_cli_table_and_filters(sockets: Sockets, capsys: pytest.CaptureFixture[str]) -> None:
    assert sockets.child is not None
    assert main(["stat", "-t", "-4", "--listening", "--port", str(sockets.child_port)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    # a listener's Send-Q is its backlog (socat's is 5), as ss shows it
    assert lines[1].split() == [
        "tcp", "LISTEN", "0", "5", f"127.0.0.1:{sockets.child_port}", "0.0.0.0:*",
        f"{sockets.child.pid}/socat",
    ]  # fmt: skip
    docs = run_json(
        capsys, "--json", "--state", "time-wait,estab", "--port", str(min(sockets.ports))
    )
    assert {s["state"] for s in docs[0]["sockets"]} <= {"TIME_WAIT", "ESTABLISHED"}


@pytest.mark.parametrize(
    "argv",
    [
        ["--state", "bogus"],
        ["--port", "70000"],
        ["--count", "2"],
        ["--watch", "--interval", "0"],
        ["--unix", "-4"],
        ["--pid", "1", "--no-processes"],
    ],
)
def test_cli_usage_errors_exit_2(argv: list[str]) -> None:
    assert main(["stat", *argv]) == 2


def test_cli_watch_json_is_bounded(sockets: Sockets, capsys: pytest.CaptureFixture[str]) -> None:
    docs = run_json(
        capsys, "--watch", "--json", "--count", "3", "--interval", "0.01", "--pid", str(os.getpid())
    )
    assert [d["refresh"] for d in docs] == [1, 2, 3]
    assert all(d["counts"]["ESTABLISHED"] == 4 for d in docs)


def test_cli_watch_live_view() -> None:
    """On a terminal --watch is rich's live view (run under a pseudo-terminal here)."""
    import pty
    import select

    controller, terminal = pty.openpty()
    child = subprocess.Popen(
        [*CLI, "stat", "--watch", "--count", "2", "--interval", "0.01", "--tcp"],
        stdout=terminal,
        stderr=subprocess.DEVNULL,
    )
    os.close(terminal)
    out = b""
    try:
        for _ in range(2000):  # bounded: read until the child is done and the pty drained
            ready, _, _ = select.select([controller], [], [], 10)
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed its side
                break
            out += chunk
    finally:
        os.close(controller)
        code = child.wait(timeout=20)
    assert code == 0
    text = out.decode(errors="replace")
    assert re.search(r"\d+ sockets \(refresh 2, \d\d:\d\d:\d\d\)", text)
    assert "State" in text


def test_cli_watch_piped_is_a_full_width_table_per_refresh() -> None:
    path = f"/tmp/os-stat-{os.getpid()}-a-path-longer-than-a-terminal-line-" + "x" * 40
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        try:
            server.listen(1)
            done = subprocess.run(
                [*CLI, "stat", "--watch", "--count", "2", "--interval", "0.01", "--unix", "-l"],
                capture_output=True,
                text=True,
                timeout=20,
            )
        finally:
            os.unlink(path)
    assert done.returncode == 0, done.stderr
    titles = [line for line in done.stdout.splitlines() if line.startswith("--- refresh ")]
    assert [t.split(",")[0] for t in titles] == ["--- refresh 1", "--- refresh 2"]
    mine = [line for line in done.stdout.splitlines() if path in line]
    assert len(mine) == 2  # the whole path, once per refresh: not cut to 80 columns
    assert mine[0].split()[:4] == ["u_str", "LISTEN", "0", "1"]


def test_cli_process_lists_a_listener(sockets: Sockets) -> None:
    done = subprocess.run(
        [*CLI, "stat", "--tcp", "--listening", "--json"], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    ports = {s["local"]["port"] for s in json.loads(done.stdout)["sockets"]}
    assert sockets.child_port in ports


def test_cli_watch_in_process(sockets: Sockets, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["stat", "--watch", "--count", "2", "--interval", "0.01", "--pid", str(os.getpid())]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"--- refresh 2, \d\d:\d\d:\d\d: 10 sockets", out)  # 9 TCP and 1 UDP
    assert "ESTABLISHED" in out


def test_unix_listener_queues_are_what_ss_shows(sock_path: str) -> None:
    # /proc/net/unix has no queues; ss (unix_diag) shows a listener's pending connections
    # as Recv-Q and its backlog as Send-Q
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(sock_path)
        server.listen(5)
        clients = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        try:
            for client in clients:
                client.connect(sock_path)
            (row,) = [r for r in list_sockets(("unix",), listening=True) if r.local == sock_path]
            ss = subprocess.run(
                [ss_tool(), "-xlH", "src", sock_path], capture_output=True, text=True, timeout=10
            )
        finally:
            for client in clients:
                client.close()
    assert (row.recv_q, row.send_q) == (2, 5)
    assert ss.stdout.split()[2:4] == ["2", "5"]


def test_cli_no_processes_drops_the_column(
    sockets: Sockets, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["stat", "-t", "-4", "-l", "--port", str(sockets.child_port), "--no-processes"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "Address"  # Peer Address: no PID/Program
    assert lines[1].split() == [
        "tcp",
        "LISTEN",
        "0",
        "5",
        f"127.0.0.1:{sockets.child_port}",
        "0.0.0.0:*",
    ]


def test_cli_state_error_quotes_what_was_typed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stat", "--state", "listen,bogus"]) == 2
    err = capsys.readouterr().err
    assert "--state 'bogus' is not a socket state" in err
    assert "BOGUS" not in err


def test_cli_pid_of_no_process_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with open("/proc/sys/kernel/pid_max") as handle:
        missing = int(handle.read()) + 1  # above pid_max: no process can have it
    assert main(["stat", "--pid", str(missing)]) == 2
    assert f"--pid {missing}: no such process" in capsys.readouterr().err
