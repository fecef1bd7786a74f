"""Socket listing like ``ss -tuxanp``: protocol, addresses, state, owning processes.

On Linux TCP and UDP rows come from the kernel's sock_diag netlink dump, as ss reads them
(``tools/_stat_netlink.py``; reading ``/proc/net/tcp`` instead walks the kernel's whole hash
table, 20 ms here), Unix sockets from ``/proc/net/unix``, and the owners from ``/proc/PID/fd``
(the way ``ss -p`` finds them). Each row has the socket's inode, so one socket shared by
several processes (after fork) is one row with several owners, as in ss. ``/proc/net/*`` is
the fallback when netlink is refused. Elsewhere ``psutil.net_connections``
provides the rows (one per process and descriptor, no inode). Rows are named tuples rather
than dataclasses: cheaper to define at import time, which every run pays.

This module is imported by ``opensocket stat`` on every run: it imports nothing heavy.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

__all__ = [
    "PROTOCOLS",
    "STATES",
    "Owner",
    "SocketRow",
    "count_states",
    "filter_rows",
    "list_sockets",
    "normalize_state",
]

PROTOCOLS = ("tcp", "tcp6", "udp", "udp6", "unix")
_TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "SYN_RECV",  # NEW_SYN_RECV: a request socket, shown by ss as SYN-RECV
}
_UDP_STATES = {1: "ESTABLISHED", 7: "UNCONN"}
_UNIX_STATES = {1: "UNCONN", 2: "CONNECTING", 3: "ESTABLISHED", 4: "DISCONNECTING"}
_UNIX_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}
STATES = (*sorted(set(_TCP_STATES.values())), "UNCONN", "CONNECTING", "DISCONNECTING")
_ALIASES = {
    "ESTAB": "ESTABLISHED",
    "FIN_WAIT_1": "FIN_WAIT1",
    "FIN_WAIT_2": "FIN_WAIT2",
    "SYN_RECEIVED": "SYN_RECV",
    "LISTENING": "LISTEN",
    "UNCONNECTED": "UNCONN",
}
_SO_ACCEPTCON = 0x10000


class Owner(NamedTuple):
    """A process holding the socket: PID, name (as in /proc/PID/comm) and descriptor."""

    pid: int
    name: str
    fd: int


class SocketRow(NamedTuple):
    """One socket. Unix sockets have ``path`` instead of addresses and ports."""

    proto: str
    local_host: str
    local_port: int
    remote_host: str
    remote_port: int
    state: str
    inode: int = 0
    recv_q: int = 0
    send_q: int = 0
    kind: str = ""  # unix: stream, dgram or seqpacket
    owners: tuple[Owner, ...] = ()

    @property
    def local(self) -> str:
        """``host:port`` (``[v6]:port``), or a Unix socket's path (``@name`` if abstract)."""
        return _hostport(self.proto, self.local_host, self.local_port)

    @property
    def remote(self) -> str:
        """The peer as ``host:port``; ``*`` parts when there is none."""
        return _hostport(self.proto, self.remote_host, self.remote_port)

    @property
    def pids(self) -> tuple[int, ...]:
        """PIDs of the owning processes."""
        return tuple(sorted({o.pid for o in self.owners}))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        out: dict[str, Any] = {
            "proto": self.proto,
            "local": {"host": self.local_host, "port": self.local_port},
            "remote": {"host": self.remote_host, "port": self.remote_port},
            "state": self.state,
            "recv_q": self.recv_q,
            "send_q": self.send_q,
            "inode": self.inode,
            "processes": [{"pid": o.pid, "name": o.name, "fd": o.fd} for o in self.owners],
        }
        if self.proto == "unix":
            out["local"] = {"path": self.local_host}
            out["remote"] = None
            out["type"] = self.kind
        return out

    def sort_key(self) -> tuple[Any, ...]:
        """Protocol, local address, local port, remote address, remote port, PIDs."""
        return (
            PROTOCOLS.index(self.proto),
            _address_key(self.local_host),
            self.local_port,
            _address_key(self.remote_host),
            self.remote_port,
            self.state,
            self.pids,
            self.inode,
        )


def _hostport(proto: str, host: str, port: int) -> str:
    if proto == "unix":
        return host or "*"
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port or '*'}"


def _address_key(host: str) -> bytes:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return bytes([family]) + socket.inet_pton(family, host)
        except OSError:
            continue
    return b"\xff" + host.encode()


def normalize_state(text: str) -> str:
    """A state as listed here (``ESTABLISHED``) from ss or netstat spellings (``estab``)."""
    name = text.strip().upper().replace("-", "_")
    return _ALIASES.get(name, name)


# ---- reading /proc ---------------------------------------------------------------------------


def _ipv4(hexa: str) -> str:
    return socket.inet_ntop(socket.AF_INET, bytes.fromhex(hexa)[::-1])


def _ipv6(hexa: str) -> str:
    raw = bytes.fromhex(hexa)
    # four 32-bit words, each in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def _inet_rows(proto: str, text: str) -> Iterator[SocketRow]:
    v6 = proto.endswith("6")
    decode = _ipv6 if v6 else _ipv4
    states = _TCP_STATES if proto.startswith("tcp") else _UDP_STATES
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        lhost, lport = parts[1].split(":")
        rhost, rport = parts[2].split(":")
        tx, rx = parts[4].split(":")
        st = int(parts[3], 16)
        yield SocketRow(
            proto,
            decode(lhost),
            int(lport, 16),
            decode(rhost),
            int(rport, 16),
            states.get(st, f"UNKNOWN({st})"),
            int(parts[9]),
            int(rx, 16),
            int(tx, 16),
        )


def _unix_rows(text: str) -> Iterator[SocketRow]:
    for line in text.splitlines()[1:]:
        parts = line.split(None, 7)
        if len(parts) < 7:
            continue
        flags, kind, st = int(parts[3], 16), int(parts[4], 16), int(parts[5], 16)
        path = parts[7].strip() if len(parts) > 7 else ""
        state = "LISTEN" if flags & _SO_ACCEPTCON else _UNIX_STATES.get(st, f"UNKNOWN({st})")
        yield SocketRow(
            "unix", path, 0, "", 0, state, int(parts[6]), kind=_UNIX_TYPES.get(kind, str(kind))
        )


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _diag_rows(proto: str) -> list[SocketRow] | None:
    """Rows from the sock_diag dump; None when the kernel refuses it (then /proc is read)."""
    from ._stat_netlink import dump

    family = socket.AF_INET6 if proto.endswith("6") else socket.AF_INET
    tcp = proto.startswith("tcp")
    states = _TCP_STATES if tcp else _UDP_STATES
    try:
        found = list(dump(family, socket.IPPROTO_TCP if tcp else socket.IPPROTO_UDP))
    except OSError:
        return None
    return [
        SocketRow(proto, lh, lp, rh, rp, states.get(st, f"UNKNOWN({st})"), inode, rq, wq)
        for _, st, lh, lp, rh, rp, rq, wq, inode in found
    ]


def _proc_rows(protocols: Iterable[str], *, netlink: bool = True) -> list[SocketRow] | None:
    rows: list[SocketRow] = []
    for proto in protocols:
        if netlink and proto != "unix":
            diag = _diag_rows(proto)
            if diag is not None:
                rows += diag
                continue
        text = _read(f"/proc/net/{proto}")
        if text is None:
            if proto in ("tcp", "unix"):
                return None  # no /proc/net at all
            continue  # IPv6 disabled: no tcp6/udp6
        if proto == "unix":
            rows += _with_unix_queues(list(_unix_rows(text))) if netlink else _unix_rows(text)
        else:
            rows += _inet_rows(proto, text)
    return rows


def _with_unix_queues(rows: list[SocketRow]) -> list[SocketRow]:
    """/proc/net/unix has no queue lengths: take them from unix_diag, as ss does (a listener's
    Send-Q is its backlog)."""
    from ._stat_netlink import dump_unix_queues

    try:
        queues = dump_unix_queues()
    except OSError:
        return rows
    out = []
    for row in rows:
        found = queues.get(row.inode)
        out.append(row if found is None else row._replace(recv_q=found[0], send_q=found[1]))
    return out


def _socket_owners(inodes: set[int]) -> dict[int, list[tuple[int, int]]]:
    """inode -> [(pid, fd)] for the wanted inodes, by reading every /proc/PID/fd link."""
    found: dict[int, list[tuple[int, int]]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        base = f"/proc/{pid}/fd/"
        try:
            fds = os.listdir(base)
        except OSError:  # gone, or not ours to see
            continue
        for fd in fds:
            try:
                link = os.readlink(base + fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inode = int(link[8:-1])
                if inode in inodes:
                    found.setdefault(inode, []).append((int(pid), int(fd)))
    return found


def _comm(pid: int) -> str:
    text = _read(f"/proc/{pid}/comm")
    return text.rstrip("\n") if text is not None else "?"


def _with_owners(rows: list[SocketRow]) -> list[SocketRow]:
    owners = _socket_owners({r.inode for r in rows if r.inode})
    names: dict[int, str] = {}
    out = []
    for row in rows:
        held = owners.get(row.inode)
        if held:
            procs = []
            for pid, fd in sorted(held):
                if pid not in names:
                    names[pid] = _comm(pid)
                procs.append(Owner(pid, names[pid], fd))
            out.append(row._replace(owners=tuple(procs)))
        else:
            out.append(row)
    return out


# ---- psutil (other systems) ------------------------------------------------------------------

_PSUTIL_KINDS = {"tcp": "tcp4", "tcp6": "tcp6", "udp": "udp4", "udp6": "udp6", "unix": "unix"}


def _psutil_rows(protocols: Sequence[str], processes: bool) -> list[SocketRow]:
    """Rows from psutil: one per (socket, process), grouped by everything but the owner."""
    import psutil

    rows: dict[tuple[Any, ...], list[Owner]] = {}
    names: dict[int, str] = {}
    for proto in protocols:
        for conn in psutil.net_connections(kind=_PSUTIL_KINDS[proto]):
            key = _psutil_key(proto, conn)
            owners = rows.setdefault(key, [])
            if processes and conn.pid:
                if conn.pid not in names:
                    try:
                        names[conn.pid] = psutil.Process(conn.pid).name()
                    except psutil.Error:
                        names[conn.pid] = "?"
                owners.append(Owner(conn.pid, names[conn.pid], conn.fd))
    return [
        SocketRow(*key)._replace(owners=tuple(sorted(o, key=_owner_key))) for key, o in rows.items()
    ]


def _owner_key(owner: Owner) -> tuple[int, int]:
    return owner.pid, owner.fd


def _psutil_key(proto: str, conn: Any) -> tuple[Any, ...]:
    if proto == "unix":
        state = "LISTEN" if conn.status == "LISTEN" else "UNCONN" if not conn.raddr else "ESTAB"
        return ("unix", conn.laddr or "", 0, conn.raddr or "", 0, state)
    laddr, raddr = conn.laddr, conn.raddr
    status = conn.status if conn.status != "NONE" else ("ESTABLISHED" if raddr else "UNCONN")
    if not raddr:
        raddr = ("::" if proto.endswith("6") else "0.0.0.0", 0)
    return (proto, laddr[0], laddr[1], raddr[0], raddr[1], status)


# ---- the public API --------------------------------------------------------------------------


def filter_rows(
    rows: Iterable[SocketRow],
    *,
    listening: bool = False,
    port: int | None = None,
    pid: int | None = None,
    states: Sequence[str] = (),
) -> list[SocketRow]:
    """The rows that pass every filter given."""
    wanted = {normalize_state(s) for s in states}
    out = []
    for row in rows:
        if listening and row.state not in ("LISTEN", "UNCONN"):
            continue
        if port is not None and port not in (row.local_port, row.remote_port):
            continue
        if pid is not None and pid not in row.pids:
            continue
        if wanted and row.state not in wanted:
            continue
        out.append(row)
    return out


def list_sockets(
    protocols: Sequence[str] = ("tcp", "tcp6", "udp", "udp6"),
    *,
    processes: bool = True,
    listening: bool = False,
    port: int | None = None,
    pid: int | None = None,
    states: Sequence[str] = (),
    source: str = "auto",
) -> list[SocketRow]:
    """Sockets of these protocols, filtered and sorted; with owning processes if asked.

    ``source`` is ``netlink`` (Linux sock_diag, /proc/net for Unix sockets and as fallback),
    ``proc`` (/proc/net only), ``psutil`` or ``auto`` (netlink on Linux, else psutil).
    """
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(f"unknown protocol {unknown[0]!r}: choose from {', '.join(PROTOCOLS)}")
    if source not in ("auto", "netlink", "proc", "psutil"):
        from ..errors import ConfigError

        raise ConfigError(f"unknown source {source!r}: auto, netlink, proc or psutil")
    rows = None
    if source != "psutil":
        rows = _proc_rows(protocols, netlink=source != "proc")
    if rows is None:
        rows = _psutil_rows(protocols, processes or pid is not None)
    else:
        rows = filter_rows(rows, listening=listening, port=port, states=states)
        if processes or pid is not None:
            rows = _with_owners(rows)
    rows = filter_rows(rows, listening=listening, port=port, pid=pid, states=states)
    return sorted(rows, key=SocketRow.sort_key)


def count_states(rows: Iterable[SocketRow]) -> dict[str, int]:
    """How many rows are in each state, most common first."""
    return dict(Counter(r.state for r in rows).most_common())
