"""TCP and UDP sockets from the kernel's sock_diag netlink dump, the way ``ss`` reads them.

Reading ``/proc/net/tcp`` walks the whole connection hash table in the kernel (tens of
milliseconds on a large table, even when few sockets exist); an ``inet_diag`` dump returns
the sockets alone. ``dump`` does the I/O; ``request`` and ``parse`` are pure.

Wire format (native byte order except ports and addresses, which are big-endian)::

    nlmsghdr        u32 length, u16 type (20 = SOCK_DIAG_BY_FAMILY), u16 flags, u32 seq, u32 pid
    inet_diag_req_v2  u8 family, u8 protocol, u8 ext, u8 pad, u32 states, sockid (48 bytes)
    inet_diag_msg     u8 family, u8 state, u8 timer, u8 retrans, sockid,
                      u32 expires, u32 rqueue, u32 wqueue, u32 uid, u32 inode
    sockid            be16 sport, be16 dport, 16 bytes src, 16 bytes dst, u32 if, u32 cookie[2]

Unix sockets (``unix_diag``, asked only for their queue lengths, the RQLEN attribute)::

    unix_diag_req   u8 family (1), u8 protocol (0), u16 pad, u32 states, u32 ino,
                    u32 show (0x10 = UDIAG_SHOW_RQLEN), u32 cookie[2]
    unix_diag_msg   u8 family, u8 type, u8 state, u8 pad, u32 ino, u32 cookie[2],
                    then attributes: u16 length, u16 type, value (4-byte aligned)
    RQLEN (type 4)  u32 rqueue, u32 wqueue; for a listener: pending connections and the
                    backlog (what ss shows as Recv-Q and Send-Q)
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

__all__ = [
    "DiagSocket",
    "dump",
    "dump_unix_queues",
    "parse",
    "parse_unix",
    "request",
    "unix_request",
]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
ALL_STATES = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")
_REQUEST = struct.Struct("=BBBBI48s")
_MESSAGE = struct.Struct("=BBBB2s2s16s16s4s8sIIIII")
_UNIX_REQUEST = struct.Struct("=BBHIII8s")
_UNIX_MESSAGE = struct.Struct("=BBBBI8s")
_ATTR = struct.Struct("=HH")
_RQLEN = struct.Struct("=II")
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_RQLEN = 4

# family, state, local address, local port, remote address, remote port, rqueue, wqueue, inode
DiagSocket = tuple[int, int, str, int, str, int, int, int, int]


def request(family: int, protocol: int, seq: int = 1) -> bytes:
    """A dump request for every socket of ``family`` and ``protocol``, in every state."""
    body = _REQUEST.pack(family, protocol, 0, 0, ALL_STATES, bytes(48))
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def parse(data: bytes) -> tuple[list[DiagSocket], bool]:
    """The sockets in one buffer of the dump, and whether it ended (NLMSG_DONE).

    Raises OSError for an NLMSG_ERROR reply (the kernel has no diag module for it).
    """
    out: list[DiagSocket] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            break
        body = offset + _HEADER.size
        if kind == NLMSG_DONE:
            return out, True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, body)
            raise OSError(-code, "sock_diag dump refused")
        if kind == SOCK_DIAG_BY_FAMILY and length - _HEADER.size >= _MESSAGE.size:
            out.append(_socket(data, body))
        offset += (length + 3) & ~3
    return out, False


def _socket(data: bytes, at: int) -> DiagSocket:
    fields = _MESSAGE.unpack_from(data, at)
    family, state = fields[0], fields[1]
    sport, dport, src, dst = fields[4:8]
    rqueue, wqueue, inode = fields[11], fields[12], fields[14]
    return (
        family,
        state,
        _address(family, src),
        int.from_bytes(sport, "big"),
        _address(family, dst),
        int.from_bytes(dport, "big"),
        rqueue,
        wqueue,
        inode,
    )


def unix_request(seq: int = 1) -> bytes:
    """A dump request for every Unix socket's queue lengths, in every state."""
    body = _UNIX_REQUEST.pack(socket.AF_UNIX, 0, 0, ALL_STATES, 0, UDIAG_SHOW_RQLEN, bytes(8))
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


def _rqlen(data: bytes, start: int, end: int) -> tuple[int, int] | None:
    """The RQLEN attribute among the attributes in ``data[start:end]``."""
    while start + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < _ATTR.size or start + length > end:
            return None
        if kind == UNIX_DIAG_RQLEN and length >= _ATTR.size + _RQLEN.size:
            rqueue, wqueue = _RQLEN.unpack_from(data, start + _ATTR.size)
            return rqueue, wqueue
        start += (length + 3) & ~3
    return None


def parse_unix(data: bytes) -> tuple[dict[int, tuple[int, int]], bool]:
    """Unix queue lengths by inode in one buffer of the dump, and whether it ended.

    Raises OSError for an NLMSG_ERROR reply (no unix_diag in the kernel).
    """
    out: dict[int, tuple[int, int]] = {}
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            break
        body = offset + _HEADER.size
        if kind == NLMSG_DONE:
            return out, True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, body)
            raise OSError(-code, "unix_diag dump refused")
        if kind == SOCK_DIAG_BY_FAMILY and length - _HEADER.size >= _UNIX_MESSAGE.size:
            inode = _UNIX_MESSAGE.unpack_from(data, body)[4]
            queues = _rqlen(data, body + _UNIX_MESSAGE.size, offset + length)
            if queues is not None:
                out[inode] = queues
        offset += (length + 3) & ~3
    return out, False


def dump_unix_queues() -> dict[int, tuple[int, int]]:
    """(Recv-Q, Send-Q) of every Unix socket by inode (OSError without unix_diag)."""
    queues: dict[int, tuple[int, int]] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
        sock.send(unix_request())
        for _ in range(1_000_000):  # bounded: one buffer holds many sockets
            found, done = parse_unix(sock.recv(1 << 20))
            queues.update(found)
            if done:
                return queues
    return queues


def dump(family: int, protocol: int) -> Iterator[DiagSocket]:
    """Every socket of ``family``/``protocol`` (OSError when sock_diag is unavailable)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
        sock.send(request(family, protocol))
        for _ in range(1_000_000):  # bounded: one buffer holds many sockets
            rows, done = parse(sock.recv(1 << 20))
            yield from rows
            if done:
                return
