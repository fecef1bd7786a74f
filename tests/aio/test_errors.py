"""Connect and bind failures become clear opensocket errors."""

from __future__ import annotations

import errno
import os
import socket

import pytest

import opensocket
from opensocket import SocketOptions
from opensocket._sockets import connect_error
from opensocket.address import parse_address
from opensocket.errors import (
    AddressError,
    AddressInUse,
    ConnectionRefused,
    ConnectTimeout,
    HandshakeError,
    NameResolutionError,
    ProtocolError,
)

from .conftest import echo, echo_server, no_leaks, socat


@pytest.mark.parametrize("raw", [False, True])
async def test_nothing_listening(free_port: int, raw: bool) -> None:
    async with no_leaks():
        with pytest.raises(ConnectionRefused) as info:
            await opensocket.connect(f"tcp://127.0.0.1:{free_port}", raw=raw)
    assert isinstance(info.value, ConnectionRefusedError)
    assert f"nothing is listening on 127.0.0.1:{free_port}" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


async def test_nothing_listening_on_ipv6(free_port: int) -> None:
    with pytest.raises(ConnectionRefused, match=rf"nothing is listening on \[::1\]:{free_port}"):
        await opensocket.connect(f"tcp://[::1]:{free_port}")


async def test_nothing_listening_on_a_unix_path(sock_path: str) -> None:
    with pytest.raises(ConnectionRefused, match=f"nothing is listening on {sock_path}"):
        await opensocket.connect(f"unix://{sock_path}")


async def test_port_in_use_names_this_process() -> None:
    async with echo_server() as server:
        port = server.addresses[0].port
        with pytest.raises(AddressInUse) as info:
            await opensocket.serve(f"tcp://127.0.0.1:{port}", echo)
    message = str(info.value)
    assert f"127.0.0.1:{port} is already in use by pid {os.getpid()}" in message
    assert "port 0 picks a free one" in message
    assert info.value.errno == errno.EADDRINUSE
    assert isinstance(info.value, OSError)


async def test_udp_port_in_use() -> None:
    async with await opensocket.open_datagram("udp://127.0.0.1:0", bind=True) as first:
        port = first.local_address.port
        with pytest.raises(AddressInUse, match=f"in use by pid {os.getpid()}"):
            await opensocket.open_datagram(f"udp://127.0.0.1:{port}", bind=True)


async def test_unix_path_in_use(sock_path: str) -> None:
    async with echo_server(f"unix://{sock_path}"):
        with pytest.raises(AddressInUse, match="already in use by a listening server"):
            await opensocket.serve(f"unix://{sock_path}", echo)


async def test_unix_path_that_is_not_a_socket() -> None:
    path = f"/tmp/opensocket-test-{os.getpid()}-file"
    with open(path, "w") as f:
        f.write("precious")
    try:
        with pytest.raises(AddressError, match="is not a socket: refusing to replace it"):
            await opensocket.serve(f"unix://{path}", echo)
        with open(path) as f:
            assert f.read() == "precious"
    finally:
        os.unlink(path)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("127.0.0.1:9000", "the scheme is missing"),
        ("tcp://127.0.0.1", "a port is required"),
        ("tcp://::1:9000", "IPv6 addresses must be written in brackets"),
        ("tcp://[::1:9000", "no closing ']'"),
        ("tcp://127.0.0.1:99999", "out of range"),
        ("tcp://127.0.0.1:http", "is not a number"),
        ("ftp://example.com:21", "unknown scheme 'ftp'"),
        ("unix://relative/path", "must be absolute"),
        ("udp://127.0.0.1:9000", "open_datagram"),
    ],
)
async def test_malformed_addresses(url: str, problem: str) -> None:
    with pytest.raises(AddressError) as info:
        await opensocket.connect(url)
    message = str(info.value)
    assert problem in message
    assert "examples: tcp://127.0.0.1:9000" in message
    assert isinstance(info.value, ValueError)


async def test_malformed_server_address() -> None:
    with pytest.raises(AddressError, match="examples:"):
        await opensocket.serve("tcp://*", echo)
    with pytest.raises(AddressError, match="examples:"):
        await opensocket.open_datagram("tcp://127.0.0.1:0", bind=True)


async def test_unresolvable_name() -> None:
    with pytest.raises(NameResolutionError, match=r"cannot resolve host name 'nowhere\.invalid'"):
        await opensocket.connect("tcp://nowhere.invalid:9000")
    with pytest.raises(NameResolutionError):
        await opensocket.open_datagram("udp://nowhere.invalid:9000")
    with pytest.raises(NameResolutionError):
        await opensocket.serve("tcp://nowhere.invalid:0", echo)


async def test_connect_timeout_against_a_full_backlog() -> None:
    # backlog 0 holds one connection; the kernel drops further SYNs, so connecting hangs.
    listener = socket.socket()
    filler = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        with pytest.raises(ConnectTimeout) as info:
            await opensocket.connect(
                f"tcp://127.0.0.1:{port}", options=SocketOptions(connect_timeout=0.3)
            )
        assert f"connecting to 127.0.0.1:{port} timed out after 0.3s" in str(info.value)
        assert isinstance(info.value, TimeoutError)
    finally:
        filler.close()
        listener.close()


def test_connect_error_translation() -> None:
    addr = parse_address("tcp://192.0.2.1:80")
    timeout = connect_error(TimeoutError(), addr, 2.5)
    assert isinstance(timeout, ConnectTimeout)
    assert "timed out after 2.5s" in str(timeout)
    unreachable = connect_error(OSError(errno.EHOSTUNREACH, "no route"), addr, 1)
    assert "192.0.2.1:80 is unreachable" in str(unreachable)


async def test_a_plain_tcp_peer_is_not_an_opensocket_server() -> None:
    # socat answers the HELLO by echoing it: the client must fail the handshake clearly.
    async with socat("TCP-LISTEN:0,bind=127.0.0.1,reuseaddr", "PIPE") as port:
        with pytest.raises(ProtocolError, match="sent our HELLO back: it is an echo server"):
            await opensocket.connect(f"tcp://127.0.0.1:{port}")


async def test_a_silent_peer_times_out_the_handshake() -> None:
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts (in the kernel) but never answers
        port = listener.getsockname()[1]
        opts = opensocket.ProtocolOptions(handshake_timeout=0.2)
        with pytest.raises(HandshakeError, match=r"did not complete within 0\.2s"):
            await opensocket.connect(f"tcp://127.0.0.1:{port}", protocol=opts)
    finally:
        listener.close()
