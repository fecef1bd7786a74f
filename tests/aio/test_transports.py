"""Framed echo over every stream transport: IPv4, IPv6, names, dual stack, Unix sockets."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import pytest

import opensocket
from opensocket.aio._connect import _happy_eyeballs
from opensocket.options import SocketOptions
from tests.conftest import has_ipv6

from .conftest import echo_server, no_leaks, port_of


def test_ipv6_is_available() -> None:
    # The IPv6 tests below must not silently turn into no-ops on a host without ::1.
    assert has_ipv6(), "::1 cannot be bound: these tests need IPv6 on loopback"


@pytest.mark.uvloop
@pytest.mark.parametrize("url", ["tcp://127.0.0.1:0", "tcp://[::1]:0", "tcp://localhost:0"])
async def test_echo_over_tcp(url: str) -> None:
    async with no_leaks(), echo_server(url) as server:
        addr = server.addresses[0]
        assert addr.port != 0
        assert addr.scheme == "tcp"
        async with await opensocket.connect(str(addr)) as conn:
            await conn.send(b"hello")
            assert await conn.recv(timeout=5) == b"hello"
            assert conn.remote_address == str(addr)


async def test_localhost_client_reaches_an_ip_server() -> None:
    async with echo_server("tcp://127.0.0.1:0") as server:
        url = f"tcp://localhost:{port_of(server)}"
        async with await opensocket.connect(url) as conn:
            await conn.send(b"by name")
            assert await conn.recv(timeout=5) == b"by name"


async def test_dual_stack_wildcard_serves_both_families() -> None:
    async with no_leaks(), echo_server("tcp://*:0") as server:
        port = port_of(server)
        assert port != 0
        seen: list[str] = []
        for host in ("127.0.0.1", "[::1]"):
            async with await opensocket.connect(f"tcp://{host}:{port}") as conn:
                await conn.send(host.encode())
                assert await conn.recv(timeout=5) == host.encode()
                seen.append(conn.local_address)
        assert seen[0].startswith("127.0.0.1:")
        assert seen[1].startswith("[::1]:")


@pytest.fixture
def dual_name(monkeypatch: pytest.MonkeyPatch) -> str:
    """A host name resolving to ::1 then 127.0.0.1, like localhost on many systems.

    Here localhost has only 127.0.0.1, so this is the one thing faked: the resolver's answer.
    """
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, family: int = 0, *args: Any, **kw: Any) -> Any:
        if host != "dual.test":
            return real(host, port, family, *args, **kw)
        out = []
        for fam, ip in ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")):
            if family in (0, fam):
                out += real(ip, port, fam, *args, **kw)
        return out

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return "dual.test"


async def test_a_name_with_both_families(dual_name: str) -> None:
    # Server on 127.0.0.1 only: the ::1 attempt is refused and IPv4 wins.
    async with echo_server("tcp://127.0.0.1:0") as server:
        url = f"tcp://{dual_name}:{port_of(server)}"
        async with await opensocket.connect(url) as conn:
            await conn.send(b"eyeballs")
            assert await conn.recv(timeout=5) == b"eyeballs"
            assert conn.local_address.startswith("127.0.0.1:")
    # Server on the name: one socket per family, same port.
    async with echo_server(f"tcp://{dual_name}:0") as server:
        hosts = sorted(a.host for a in server.addresses)
        assert hosts == ["127.0.0.1", "::1"]
        assert len({a.port for a in server.addresses}) == 1
        for addr in server.addresses:
            async with await opensocket.connect(str(addr)) as conn:
                await conn.send(b"both")
                assert await conn.recv(timeout=5) == b"both"


async def test_udp_endpoint_on_a_name_with_both_families(
    dual_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "opensocket.udp")
    async with await opensocket.open_datagram(f"udp://{dual_name}:0", bind=True) as server:
        assert server.local_address.host == "::1"
        assert "listens on [::1]" in caplog.text
        url = f"udp://{dual_name}:{server.local_address.port}"
        async with await opensocket.open_datagram(url) as client:
            await client.send(b"same first address")
            assert await server.recv(timeout=5) == b"same first address"
            back = f"udp://{dual_name}:{client.local_address.port}"
            await server.send_to(b"reply by name", back)
            assert await client.recv(timeout=5) == b"reply by name"


async def test_happy_eyeballs_falls_back_to_the_next_family() -> None:
    # Nothing listens on ::1 at this port, so the IPv6 attempt is refused and IPv4 wins.
    async with echo_server("tcp://127.0.0.1:0") as server:
        port = port_of(server)
        infos = [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]
        sock = await _happy_eyeballs(infos, SocketOptions())  # type: ignore[arg-type]
        try:
            assert sock.family == socket.AF_INET
            assert sock.getpeername() == ("127.0.0.1", port)
        finally:
            sock.close()


@pytest.mark.uvloop
async def test_echo_over_unix_path(sock_path: str) -> None:
    async with no_leaks(), echo_server(f"unix://{sock_path}") as server:
        assert str(server.addresses[0]) == f"unix://{sock_path}"
        async with await opensocket.connect(f"unix://{sock_path}") as conn:
            await conn.send(b"over a file")
            assert await conn.recv(timeout=5) == b"over a file"
    assert not os.path.exists(sock_path), "the server must remove its socket file"


async def test_unix_server_replaces_a_stale_socket_file(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()  # leaves the file behind with nobody listening
    async with (
        echo_server(f"unix://{sock_path}") as server,
        await opensocket.connect(server.url) as conn,
    ):
        await conn.send(b"fresh")
        assert await conn.recv(timeout=5) == b"fresh"


async def test_echo_over_unix_abstract() -> None:
    name = f"opensocket-test-{os.getpid()}-abstract"
    async with no_leaks(), echo_server(f"unix://@{name}") as server:
        assert str(server.addresses[0]) == f"unix://@{name}"
        async with await opensocket.connect(f"unix://@{name}") as conn:
            await conn.send(b"abstract")
            assert await conn.recv(timeout=5) == b"abstract"


async def test_several_urls_in_one_server(sock_path: str) -> None:
    async with echo_server(["tcp://127.0.0.1:0", f"unix://{sock_path}"]) as server:
        assert len(server.addresses) == 2
        for addr in server.addresses:
            async with await opensocket.connect(str(addr)) as conn:
                await conn.send(b"x")
                assert await conn.recv(timeout=5) == b"x"
