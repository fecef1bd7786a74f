"""The pytest plugin, run as a user would run it (pytester)."""

from __future__ import annotations

import sys
import threading

import pytest

from ..conftest import fd_count

USER_TESTS = """
import asyncio
import socket
import time

import pytest

from opensocket import aio, sync
from opensocket.errors import ConnectionClosed, ReadTimeout


def test_free_ports_can_be_bound(free_tcp_port, free_udp_port):
    for kind, port in ((socket.SOCK_STREAM, free_tcp_port), (socket.SOCK_DGRAM, free_udp_port)):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", port))


async def shout(conn):
    try:
        while True:
            await conn.send((await conn.recv()).upper())
    except ConnectionClosed:
        pass


def test_async_handler_from_sync_code(background_server, fault_proxy):
    server = background_server(shout)
    proxy = fault_proxy(server.url)
    proxy.add_latency("30ms", direction="down")
    with sync.connect(proxy.url) as conn:
        start = time.monotonic()
        conn.send(b"hi")
        assert conn.recv() == b"HI"
        assert time.monotonic() - start >= 0.03


def test_plain_callable_handler_and_reset(background_server, fault_proxy):
    def echo(stream):
        while data := stream.recv(65536):
            stream.send_all(data)

    server = background_server(echo, raw=True)
    proxy = fault_proxy(server)
    proxy.reset_after(nbytes=5, direction="down")
    with socket.create_connection(proxy.url[len("tcp://"):].rsplit(":", 1), timeout=5) as sock:
        sock.sendall(b"0123456789")
        got = b""
        with pytest.raises(ConnectionResetError):
            while data := sock.recv(100):
                got += data
    assert got == b"01234"


@pytest.mark.asyncio
async def test_async_test_with_echo_server(background_server, fault_proxy):
    server = background_server()  # no handler: a framed echo
    proxy = fault_proxy(server.url, protocol="tcp")
    conn = await aio.connect(proxy.url)
    stall = proxy.stall(direction="up")
    await conn.send(b"ping")
    with pytest.raises(ReadTimeout):
        await conn.recv(timeout=0.1)  # held by the proxy, not lost
    proxy.clear(stall)
    assert await conn.recv() == b"ping"
    await conn.close()


def test_udp_loss(background_server, fault_proxy):
    server = background_server(url="udp://127.0.0.1:0")
    proxy = fault_proxy(server, protocol="udp")
    proxy.loss(1.0, direction="down")
    host, port = proxy.url[len("udp://"):].rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(b"x", (host, int(port)))
        with pytest.raises(TimeoutError):
            sock.recv(10)
    deadline = time.monotonic() + 5  # the echo crosses two background loops: wait for the drop
    while proxy.stats["down"]["dropped"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.stats["down"]["dropped"] == 1


def test_rudp_upstream(fault_proxy):
    async def echo(conn):
        async for message in conn:
            await conn.send(message)

    async def scenario():
        server = await aio.serve("rudp://127.0.0.1:0", echo)
        proxy = fault_proxy(server.url, seed=1)  # a rudp:// proxy, forwarding UDP
        assert proxy.url.startswith("rudp://")
        proxy.loss(0.2)
        async with await aio.connect(proxy.url) as conn:
            for i in range(20):
                await conn.send(b"%d" % i)
            got = [await conn.recv(timeout=10) for _ in range(20)]
        await server.close()
        return got

    assert asyncio.run(scenario()) == [b"%d" % i for i in range(20)]
"""


INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


def _ours() -> list[threading.Thread]:
    names = ("opensocket-proxy", "opensocket-server", "asyncio_")
    return [t for t in threading.enumerate() if t.name.startswith(names)]


def test_user_tests_pass_and_clean_up(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_user=USER_TESTS)
    fds = fd_count()
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=6)
    assert not _ours()
    assert fd_count() <= fds


def test_plugin_loads_nothing_heavy(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_light="""
        import sys

        def test_nothing_loaded():
            loaded = {"opensocket.proxy", "opensocket.sync", "opensocket.testing._server"}
            assert not loaded & set(sys.modules)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    result = pytester.runpytest_inprocess("--fixtures", "-p", "no:cacheprovider")
    for name in ("free_tcp_port", "free_udp_port", "background_server", "fault_proxy"):
        result.stdout.fnmatch_lines([f"{name}*"])


def test_helpers_import_without_pytest(pytester: pytest.Pytester) -> None:
    script = (
        "import sys; sys.modules['pytest'] = None\n"
        "import opensocket.testing as t\n"
        "with t.BackgroundServer(url='udp://127.0.0.1:0') as server:\n"
        "    with t.BackgroundProxy('udp://127.0.0.1:0', server.url) as proxy:\n"
        "        assert proxy.url.startswith('udp://')\n"
        "print(t.free_tcp_port() > 0, t.free_udp_port() > 0)\n"
    )
    result = pytester.run(sys.executable, "-c", script)
    assert result.ret == 0, result.stderr.str()
    assert result.stdout.lines == ["True True"]
