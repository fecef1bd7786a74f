"""The sock_diag request and reply parsing, on exact bytes (no sockets)."""

from __future__ import annotations

import socket
import struct
import sys

import pytest

from opensocket.tools._stat_netlink import (
    SOCK_DIAG_BY_FAMILY,
    parse,
    parse_unix,
    request,
    unix_request,
)

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="vectors are little-endian")


def test_request_bytes() -> None:
    data = request(socket.AF_INET6, socket.IPPROTO_TCP, seq=7)
    assert len(data) == 16 + 56
    assert data[:16] == bytes.fromhex("48000000140001030700000000000000")
    assert data[16:24] == bytes.fromhex("0a060000ffffffff")
    assert data[24:] == bytes(48)


def message(state: int, sport: int, dport: int, inode: int, rq: int = 0, wq: int = 0) -> bytes:
    sockid = (
        struct.pack("!HH", sport, dport)
        + socket.inet_pton(socket.AF_INET, "127.0.0.1") + bytes(12)
        + socket.inet_pton(socket.AF_INET, "10.1.2.3") + bytes(12)
        + bytes(12)
    )  # fmt: skip
    body = (
        bytes([socket.AF_INET, state, 0, 0]) + sockid + struct.pack("=IIIII", 0, rq, wq, 0, inode)
    )
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def test_parse_a_buffer_of_sockets_then_done() -> None:
    done = struct.pack("=IHHII", 20, 3, 2, 1, 0) + bytes(4)
    data = message(1, 8080, 50000, 1234, rq=3, wq=9) + message(10, 22, 0, 99) + done
    rows, finished = parse(data)
    assert finished
    assert rows == [
        (socket.AF_INET, 1, "127.0.0.1", 8080, "10.1.2.3", 50000, 3, 9, 1234),
        (socket.AF_INET, 10, "127.0.0.1", 22, "10.1.2.3", 0, 0, 0, 99),
    ]
    assert parse(data[: len(data) - 20]) == (rows, False)  # more to come
    assert parse(data[:-25])[0] == rows[:1]  # a cut message is not parsed


def test_an_error_reply_raises() -> None:
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -2) + bytes(16)
    with pytest.raises(OSError, match="sock_diag") as info:
        parse(error)
    assert info.value.errno == 2


def test_unix_request_bytes() -> None:
    data = unix_request(seq=3)
    assert len(data) == 16 + 24
    assert data[:16] == bytes.fromhex("28000000140001030300000000000000")
    # family 1 (AF_UNIX), every state, any inode, show RQLEN (0x10)
    assert data[16:] == bytes.fromhex("01000000ffffffff00000000100000000000000000000000")


def unix_message(inode: int, attrs: bytes) -> bytes:
    body = bytes([socket.AF_UNIX, socket.SOCK_STREAM, 10, 0]) + struct.pack("=I", inode)
    body += bytes(8) + attrs
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + bytes(-len(raw) % 4)


def test_parse_unix_queue_lengths() -> None:
    done = struct.pack("=IHHII", 20, 3, 2, 1, 0) + bytes(4)
    rqlen = attr(4, struct.pack("=II", 2, 5))
    data = (
        unix_message(77, attr(0, b"/run/x\0") + rqlen)  # the name attribute comes first
        + unix_message(78, attr(7, struct.pack("=I", 0)))  # no RQLEN: not listed
        + done
    )
    assert parse_unix(data) == ({77: (2, 5)}, True)
    assert parse_unix(data[:-20]) == ({77: (2, 5)}, False)
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -2) + bytes(16)
    with pytest.raises(OSError, match="unix_diag"):
        parse_unix(error)
