"""Fixes from the new-user review of `opensocket http serve`, over real loopback sockets: the
response cache and methods or a missing Host, HSTS and local hosts, a slash after a file, the
TLS alert for a missing client certificate, plain HTTP on an HTTPS port, random boundaries."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop

from opensocket.errors import ConfigError
from opensocket.http import HttpServer, serve_http

from ..tlsutil import Pki, make_pki
from .conftest import LIMITS, run
from .test_fast import Client, Reply, request

HSTS = "Strict-Transport-Security"


async def connect(server: HttpServer, pki: Pki | None = None) -> Client:
    """A raw keep-alive connection to the server's first address (TLS with ``pki``)."""
    context = None if pki is None else ssl.create_default_context(cafile=pki.ca_cert)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        server.addresses[0].port,
        ssl=context,
        server_hostname=None if pki is None else "localhost",
    )
    return Client(reader, writer)


async def done(client: Client) -> None:
    client.writer.close()
    await asyncio.gather(client.writer.wait_closed(), return_exceptions=True)


@pytest.fixture
async def client(server: HttpServer) -> AsyncIterator[Client]:
    conn = await connect(server)
    try:
        yield conn
    finally:
        await done(conn)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


# ---- 1. the whole-response cache answers GET and HEAD only, and never a Host-less request ----


@pytest.mark.parametrize("method", ["DELETE", "POST", "PUT", "OPTIONS"])
async def test_cached_file_still_refuses_other_methods(
    server: HttpServer, client: Client, method: str
) -> None:
    assert (await client.ask(request("/hello.txt", method))).status == 405
    assert (await client.ask(request("/hello.txt"))).status == 200  # now cached
    assert "/hello.txt" in server.response_cache._by_target
    refused = await client.ask(request("/hello.txt", method))
    assert (refused.status, refused.headers["Allow"]) == (405, "GET, HEAD")
    head = await client.ask(request("/hello.txt", "HEAD"), head_only=True)
    assert (head.status, head.headers["Content-Length"]) == (200, "13")
    assert (await client.ask(request("/hello.txt"))).body == b"hello, world\n"  # in step


async def test_cached_file_needs_host_on_http11(server: HttpServer, client: Client) -> None:
    assert (await client.ask(request("/hello.txt"))).status == 200  # now cached
    other = await connect(server)
    try:
        reply = await other.ask(b"GET /hello.txt HTTP/1.1\r\n\r\n")
        assert (reply.status, reply.headers["Connection"]) == (400, "close")
        assert b"Host" in reply.body
    finally:
        await done(other)
    old = await connect(server)
    try:  # HTTP/1.0 has no Host header to require
        assert (await old.ask(b"GET /hello.txt HTTP/1.0\r\n\r\n")).body == b"hello, world\n"
    finally:
        await done(old)


# ---- 2. HSTS: configurable, never for localhost or IP literals, cached per variant ---------


def named(target: str, host: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "", ""]
    return "\r\n".join(lines).encode()


async def test_hsts_only_for_names_that_are_not_local(site: Path, pki: Pki) -> None:
    server = await serve_http("https://127.0.0.1:0", site, tls=pki.server_tls(), limits=LIMITS)
    client = await connect(server, pki)
    try:
        hosts = {
            "www.example.test": True,
            "localhost": False,
            "localhost:8443": False,
            "LocalHost.": False,
            "app.localhost:8443": False,
            "127.0.0.1:8443": False,
            "[::1]:8443": False,
            "10.1.2.3": False,
            "notlocalhost.test": True,
        }
        # twice round: planned first, then from the whole-response cache, interleaved so a
        # variant with HSTS would be served to a local name if the cache mixed them up
        for _ in range(2):
            for host, expected in hosts.items():
                reply = await client.ask(named("/hello.txt", host))
                assert reply.body == b"hello, world\n"
                assert (HSTS in reply.headers) is expected, host
                head = await client.ask(named("/hello.txt", host, "HEAD"), head_only=True)
                assert (HSTS in head.headers) is expected, host
        assert "/hello.txt" in server.response_cache._by_target
        big = await client.ask(named("/big.bin", "localhost"))  # the stream session
        assert HSTS not in big.headers and len(big.body) > 0
        assert server._sessions  # handed over
        assert (await client.ask(named("/hello.txt", "www.example.test"))).headers[HSTS] == (
            "max-age=31536000"
        )
        assert HSTS not in (await client.ask(named("/nope", "localhost"))).headers
    finally:
        await done(client)
        await server.close(1.0)


@pytest.mark.parametrize(("max_age", "expected"), [(0, None), (None, None), (600, "max-age=600")])
async def test_hsts_max_age_is_configurable(
    site: Path, pki: Pki, max_age: int | None, expected: str | None
) -> None:
    server = await serve_http(
        "https://127.0.0.1:0", site, tls=pki.server_tls(), limits=LIMITS, hsts_max_age=max_age
    )
    client = await connect(server, pki)
    try:
        for _ in range(2):  # planned, then cached
            reply = await client.ask(named("/hello.txt", "www.example.test"))
            assert reply.headers.get(HSTS) == expected
    finally:
        await done(client)
        await server.close(1.0)


async def test_negative_hsts_max_age_is_refused(site: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="hsts_max_age"):
        await serve_http("https://127.0.0.1:0", site, tls=pki.server_tls(), hsts_max_age=-1)


# ---- 3. a slash after a file's name: 404, as nginx and Apache answer ----------------------


async def test_slash_after_a_file_is_not_found(server: HttpServer, client: Client) -> None:
    for target in ("/hello.txt/", "/hello.txt/?x=1", "/docs/a%26b.txt/", "/hello.txt//"):
        assert (await client.ask(request(target))).status == 404, target
    assert (await client.ask(request("/hello.txt"))).status == 200  # cached now
    assert (await client.ask(request("/hello.txt/"))).status == 404
    assert (await client.ask(request("/docs/"))).status == 200  # folders keep their slash
    big = await client.ask(request("/big.bin"))  # hands the connection to a stream session
    assert big.status == 200 and server._sessions
    for target in ("/hello.txt/", "/big.bin/"):
        assert (await client.ask(request(target))).status == 404, target


async def test_slash_after_a_file_with_curl(server: HttpServer) -> None:
    url = server.url + "big.bin/"
    code, out, err = await run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url)
    assert (code, out) == (0, b"404"), err


# ---- 4. a missing client certificate gets its TLS alert -----------------------------------


@pytest.fixture
async def mtls_server(site: Path, pki: Pki) -> AsyncIterator[HttpServer]:
    tls = pki.server_tls(client_auth="required")
    server = await serve_http("https://127.0.0.1:0", site, tls=tls, limits=LIMITS)
    try:
        yield server
    finally:
        await server.close(1.0)


async def test_curl_without_a_client_certificate_hears_why(
    mtls_server: HttpServer, pki: Pki
) -> None:
    url = f"https://localhost:{mtls_server.addresses[0].port}/hello.txt"
    code, _, err = await run("curl", "-sS", "--cacert", pki.ca_cert, url)
    assert code != 0
    assert b"certificate required" in err, err  # not "empty reply" nor "unexpected eof"
    assert mtls_server.stats.handshakes_failed == 1
    cert = ("--cert", pki.client_cert, "--key", pki.client_key)
    code, out, err = await run("curl", "-sS", "--cacert", pki.ca_cert, *cert, url)
    assert (code, out) == (0, b"hello, world\n"), err


async def test_openssl_without_a_client_certificate_gets_alert_116(
    mtls_server: HttpServer, pki: Pki
) -> None:
    port = mtls_server.addresses[0].port
    proc = await asyncio.create_subprocess_exec(
        *("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", pki.ca_cert),
        *("-servername", "localhost", "-ign_eof"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(10):
            out, err = await proc.communicate(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = (out + err).decode(errors="replace")
    assert "alert certificate required" in text and "alert number 116" in text, text
    assert "unexpected eof" not in text


# ---- 5. plain HTTP on an HTTPS port: a clear-text 400 -------------------------------------


async def test_plain_http_on_the_https_port_gets_a_400(site: Path, pki: Pki) -> None:
    server = await serve_http("https://127.0.0.1:0", site, tls=pki.server_tls(), limits=LIMITS)
    try:
        plain = f"http://127.0.0.1:{server.addresses[0].port}/hello.txt"
        code, out, err = await run("curl", "-sS", "-i", plain)
        assert code == 0, err
        assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"Connection: close\r\n" in out
        assert out.endswith(b"plain HTTP request sent to an HTTPS port: use https://\n")
        assert server.stats.handshakes_failed == 1
        secure = server.url + "hello.txt"
        code, out, err = await run("curl", "-sS", "--cacert", pki.ca_cert, secure)
        assert (code, out) == (0, b"hello, world\n"), err
    finally:
        await server.close(1.0)


def test_alert_and_plain_400_on_uvloop(site: Path, pki: Pki) -> None:
    """The CLI serves on uvloop, whose TLS layer is its own: the same two answers there."""

    async def scenario() -> None:
        tls = pki.server_tls(client_auth="required")
        server = await serve_http("https://127.0.0.1:0", site, tls=tls, limits=LIMITS)
        try:
            port = server.addresses[0].port
            url = f"https://localhost:{port}/hello.txt"
            code, _, err = await run("curl", "-sS", "--cacert", pki.ca_cert, url)
            assert code != 0 and b"certificate required" in err, err
            code, out, err = await run("curl", "-sS", f"http://127.0.0.1:{port}/hello.txt")
            assert (code, out.splitlines()[0]) == (0, b"400 Bad Request"), err
        finally:
            await server.close(1.0)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# ---- 6. multipart/byteranges boundaries are random per response ---------------------------


def boundary_of(reply: Reply) -> bytes:
    ctype = reply.headers["Content-Type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    return ctype.split("boundary=", 1)[1].encode()


async def test_byteranges_boundary_is_random(server: HttpServer, client: Client) -> None:
    ask = request("/hello.txt", "GET", "Range: bytes=0-4, 7-11")
    first, second = await client.ask(ask), await client.ask(ask)
    one, two = boundary_of(first), boundary_of(second)
    assert one != two and len(one) >= 32
    for reply, mark in ((first, one), (second, two)):
        assert reply.status == 206
        assert reply.body.count(b"--" + mark) == 3
        assert b"\r\n\r\nhello\r\n" in reply.body and b"\r\n\r\nworld\r\n" in reply.body
        assert reply.body.endswith(b"--" + mark + b"--\r\n")
    heads = len(server._responses)
    for _ in range(3):
        await client.ask(ask)
    assert len(server._responses) == heads  # unique heads are not cached: they evict the rest


class _ClosedTwiceTransport(asyncio.Transport):
    """What Python 3.11's SSL transport does: a second close() drops its protocol, and any
    later buffer query raises (a stand-in: the real race needs a peer stuck mid-shutdown)."""

    def __init__(self) -> None:
        super().__init__()
        self.closes = 0

    def is_closing(self) -> bool:
        return self.closes > 0

    def close(self) -> None:
        self.closes += 1

    def get_write_buffer_size(self) -> int:
        if self.closes > 1:
            raise AttributeError("'NoneType' object has no attribute '_get_write_buffer_size'")
        return 0


async def test_closing_an_already_closing_connection_leaves_its_transport_alone(
    server: HttpServer,
) -> None:
    from opensocket.http._fast import FastProtocol
    from opensocket.http._parser import RequestParser

    limits = server.limits
    parser = RequestParser(limits.max_target, limits.max_head_size, limits.max_headers)
    protocol = FastProtocol(server, "127.0.0.1", parser)
    transport = _ClosedTwiceTransport()
    protocol.transport = transport
    transport.close()  # the TLS layer closed it after the peer's EOF
    protocol.shutdown()  # the server closing: must not close it again
    assert transport.closes == 1
