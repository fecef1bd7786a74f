"""Socket options reach the kernel, and binding follows the documented rules."""

from __future__ import annotations

import socket

import pytest

import opensocket
from opensocket import sync
from opensocket._sockets import apply_options, bind_sockets, interleave, set_stream_options
from opensocket.address import parse_address
from opensocket.errors import AddressInUse
from opensocket.options import KeepAlive, SocketOptions


def test_stream_options_are_applied() -> None:
    opts = SocketOptions(
        nodelay=True,
        keepalive=KeepAlive(idle=30, interval=5, count=4),
        send_buffer=65536,
        recv_buffer=131072,
    )
    with socket.socket() as sock:
        apply_options(sock, opts)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        # Linux doubles the requested sizes for its own bookkeeping.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 65536
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 131072


def test_nodelay_off_and_no_keepalive_by_default() -> None:
    with socket.socket() as sock:
        set_stream_options(sock, SocketOptions(nodelay=False))
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def test_listeners_reuse_address_and_optionally_the_port() -> None:
    addr = parse_address("tcp://127.0.0.1:0")
    (first,) = bind_sockets(addr, SocketOptions(reuse_port=True))
    try:
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        port = first.getsockname()[1]
        (second,) = bind_sockets(addr.with_port(port), SocketOptions(reuse_port=True))
        second.close()
        with pytest.raises(AddressInUse, match=f"127.0.0.1:{port} is already in use"):
            bind_sockets(addr.with_port(port), SocketOptions())
    finally:
        first.close()


def test_wildcard_binds_one_dual_stack_socket() -> None:
    (sock,) = bind_sockets(parse_address("tcp://*:0"), SocketOptions())
    with sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def test_interleave_alternates_families() -> None:
    v4 = [(socket.AF_INET, socket.SOCK_STREAM, 0, "", (f"192.0.2.{i}", 1)) for i in range(3)]
    v6 = [
        (socket.AF_INET6, socket.SOCK_STREAM, 0, "", (f"2001:db8::{i}", 1, 0, 0)) for i in range(2)
    ]
    order = [info[4][0] for info in interleave([*v6, *v4])]
    assert order == ["2001:db8::0", "192.0.2.0", "2001:db8::1", "192.0.2.1", "192.0.2.2"]


async def test_two_servers_share_a_port_with_reuse_port() -> None:
    async def echo(conn: opensocket.Connection) -> None:
        async for message in conn:
            await conn.send(message)

    opts = SocketOptions(reuse_port=True)
    first = await opensocket.serve("tcp://127.0.0.1:0", echo, options=opts)
    async with first:
        url = first.url
        second = sync.serve(url, lambda conn: [conn.send(m) for m in conn], options=opts)
        with second:
            for _ in range(8):  # the kernel spreads connections; each one is served
                async with await opensocket.connect(url) as conn:
                    await conn.send(b"hi")
                    assert await conn.recv(timeout=5) == b"hi"
