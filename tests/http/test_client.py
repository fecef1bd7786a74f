"""The HTTP client library against our server and scripted servers, over real loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import unquote

import h11
import pytest

from opensocket.errors import (
    AddressError,
    ConfigError,
    ConnectionRefused,
    ReadTimeout,
    TLSError,
    UnknownCA,
)
from opensocket.http import (
    BodyTooLarge,
    HttpServer,
    MalformedResponse,
    RedirectRefused,
    TooManyRedirects,
    fetch,
    open_response,
    parse_url,
    serve_http,
)
from opensocket.http.client import _redirect, _Request
from opensocket.tls import server_context

from ..tlsutil import make_pki
from .conftest import BIG_SIZE, LIMITS

Handler = Callable[[h11.Request, bytes, str], Awaitable[bytes]]


# ---- URLs and redirects (no sockets) -------------------------------------------------------


def test_parse_url() -> None:
    url = parse_url("HTTPS://Example.ORG/a b?q=1#frag")
    assert (url.scheme, url.host, url.port, url.target) == (
        "https",
        "example.org",
        443,
        "/a%20b?q=1",
    )
    assert str(url.address) == "tls://example.org:443"
    assert url.authority == "example.org"
    v6 = parse_url("http://[::1]:8080")
    assert (v6.host, v6.port, v6.target, v6.authority) == ("::1", 8080, "/", "[::1]:8080")
    assert str(v6.address) == "tcp://[::1]:8080"
    assert parse_url("http://u:p%40ss@h/").userinfo == "u:p%40ss"
    assert parse_url("http://bücher.example/").host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://h/", "http:// or https://"),
        ("127.0.0.1:80", "http:// or https://"),
        ("http:///path", "host is missing"),
        ("http://h:99999/", "invalid URL"),
        ("http://[::1/", "invalid URL"),
    ],
)
def test_parse_url_errors(url: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        parse_url(url)


def _req(method: str, url: str, content: bytes | None = None) -> _Request:
    headers = [("Host", "a"), ("Authorization", "x"), ("Content-Type", "t"), ("X-Keep", "1")]
    return _Request(method, parse_url(url), headers, content)


def test_redirect_methods_and_headers() -> None:
    see_other = _redirect(_req("POST", "http://a/x", b"body"), 303, "/y")
    assert (see_other.method, see_other.content, str(see_other.url)) == ("GET", None, "http://a/y")
    assert ("Content-Type", "t") not in see_other.headers
    assert ("Authorization", "x") in see_other.headers  # same origin keeps credentials
    kept = _redirect(_req("POST", "http://a/x", b"body"), 307, "/y")
    assert (kept.method, kept.content) == ("POST", b"body")
    assert ("Content-Type", "t") in kept.headers
    assert _redirect(_req("POST", "http://a/x", b"b"), 301, "/y").method == "GET"
    assert _redirect(_req("PUT", "http://a/x", b"b"), 308, "/y").method == "PUT"
    assert _redirect(_req("HEAD", "http://a/x"), 303, "/y").method == "HEAD"
    other = _redirect(_req("GET", "http://a/x"), 302, "https://b:8443/z")
    assert str(other.url) == "https://b:8443/z"
    assert other.headers[0] == ("Host", "b:8443")
    assert ("Authorization", "x") not in other.headers  # never to another host
    assert ("X-Keep", "1") in other.headers
    with pytest.raises(RedirectRefused, match="downgrade"):
        _redirect(_req("GET", "https://a/x"), 302, "http://a/x")
    with pytest.raises(RedirectRefused, match="'ftp://a/x', which cannot be followed"):
        _redirect(_req("GET", "http://a/x"), 302, "ftp://a/x")


# ---- against our own server ----------------------------------------------------------------


async def test_get_head_range_and_conditional(server: HttpServer, site: Path) -> None:
    response = await fetch(server.url + "hello.txt")
    assert (response.status, response.reason, response.body) == (200, "OK", b"hello, world\n")
    assert response.ok and response.header("Content-Type") == "text/plain; charset=utf-8"
    assert response.url == server.url + "hello.txt" and response.redirects == ()
    head = await fetch(server.url + "hello.txt", method="HEAD")
    assert (head.status, head.body, head.header("content-length")) == (200, b"", "13")
    etag = response.header("etag")
    assert etag is not None
    cached = await fetch(server.url + "hello.txt", headers={"If-None-Match": etag})
    assert (cached.status, cached.body) == (304, b"")
    part = await fetch(server.url + "hello.txt", headers=[("Range", "bytes=7-")])
    assert (part.status, part.body, part.header("content-range")) == (
        206,
        b"world\n",
        "bytes 7-12/13",
    )
    missing = await fetch(server.url + "nope")
    assert missing.status == 404 and not missing.ok


async def test_redirects_from_our_server(server: HttpServer) -> None:
    response = await fetch(server.url + "docs")
    assert response.status == 200 and response.url == server.url + "docs/"
    assert response.redirects == (server.url + "docs",)
    assert b"a&amp;b.txt" in response.body
    unfollowed = await fetch(server.url + "docs", max_redirects=0)
    assert unfollowed.status == 301 and unfollowed.header("location") == "/docs/"


async def test_streaming_big_file_and_body_limit(server: HttpServer, site: Path) -> None:
    async with open_response(server.url + "big.bin") as response:
        assert response.content_length == BIG_SIZE
        sizes = [len(chunk) async for chunk in response.chunks()]
    assert sum(sizes) == BIG_SIZE == response.bytes_read and len(sizes) > 1
    with pytest.raises(BodyTooLarge, match="larger than 1000 bytes"):
        await fetch(server.url + "big.bin", max_body=1000)


async def test_https_verification(tmp_path: Path, site: Path) -> None:
    pki = make_pki(tmp_path)
    srv = await serve_http(
        ["https://127.0.0.1:0", "https://[::1]:0"], site, tls=pki.server_tls(), limits=LIMITS
    )
    try:
        for url in srv.urls:
            response = await fetch(url + "hello.txt", tls=pki.client_tls())
            assert response.body == b"hello, world\n"
        with pytest.raises(UnknownCA, match="not signed by a trusted CA"):
            await fetch(srv.url + "hello.txt")
    finally:
        await srv.close(1.0)


async def test_connection_refused(free_port: int) -> None:
    with pytest.raises(ConnectionRefused, match="nothing is listening"):
        await fetch(f"http://127.0.0.1:{free_port}/")


# ---- scripted servers: redirects, broken and slow servers -----------------------------------


@asynccontextmanager
async def scripted(handler: Handler, ctx: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """A one-request-per-connection server: ``handler(request, body, base)`` returns raw bytes."""
    base = ""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        request, body = None, b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return  # the client gave up before sending a whole request
            assert request is not None
            writer.write(await handler(request, body, base))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    base = f"{'https' if ctx else 'http'}://127.0.0.1:{port}"
    try:
        yield base
    finally:
        server.close()
        await server.wait_closed()


def reply(status: int, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo_or_redirect(request: h11.Request, body: bytes, base: str) -> bytes:
    path = request.target.decode()
    if path.startswith("/to/"):  # /to/STATUS/LOCATION
        _, _, status, location = path.split("/", 3)
        where = unquote(location)
        return reply(int(status), b"", f"Location: {where}")
    if path == "/loop":
        return reply(302, b"", "Location: /loop")
    seen = dict(request.headers)
    auth = seen.get(b"authorization", b"-")
    return reply(200, request.method + b" " + body + b" " + auth)


async def test_redirect_chain_methods_and_limits() -> None:
    async with scripted(echo_or_redirect) as base:
        posted = await fetch(f"{base}/to/303/%2Fecho", method="POST", content=b"data")
        assert posted.body == b"GET  -" and posted.url == f"{base}/echo"
        kept = await fetch(f"{base}/to/307/%2Fecho", method="POST", content=b"data")
        assert kept.body == b"POST data -"
        # another host (localhost vs 127.0.0.1): followed, credentials left behind
        other = base.replace("127.0.0.1", "localhost")
        auth = await fetch(f"{base}/to/302/{other}/echo", headers={"Authorization": "Basic x"})
        assert auth.body == b"GET  -" and auth.url == f"{other}/echo"
        same = await fetch(f"{base}/to/302/%2Fecho", headers={"Authorization": "Basic x"})
        assert same.body == b"GET  Basic x"
        with pytest.raises(TooManyRedirects, match="more than 3 times"):
            await fetch(f"{base}/loop", max_redirects=3)


async def test_chunked_body_and_bad_request_headers() -> None:
    async def chunked(request: h11.Request, body: bytes, base: str) -> bytes:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        return head + b"5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\n\r\n"

    async with scripted(chunked) as base:
        response = await fetch(base + "/")
        assert response.body == b"hello, world" and response.header("content-length") is None
        with pytest.raises(ConfigError, match="cannot send this request"):
            await fetch(base + "/", headers={"X-Bad": "a\x00b"})


async def test_https_to_http_redirect_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    async with scripted(echo_or_redirect) as plain:
        ctx = server_context(pki.server_tls())
        async with scripted(echo_or_redirect, ctx) as secure:
            with pytest.raises(RedirectRefused, match="downgrade https to plain http"):
                await fetch(f"{secure}/to/301/{plain}/echo", tls=pki.client_tls())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"HELLO THERE\r\n\r\n", "malformed response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "closed the connection"),
        (b"", "closed the connection without a response"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 70000 + b"\r\n\r\n", "larger than 65536"),
    ],
    ids=["garbage", "short-body", "no-response", "huge-head"],
)
async def test_malformed_responses(raw: bytes, message: str) -> None:
    async def handler(request: h11.Request, body: bytes, base: str) -> bytes:
        return raw

    async with scripted(handler) as base:
        with pytest.raises(MalformedResponse, match=message):
            await fetch(base + "/")


async def test_silent_server_times_out() -> None:
    release = asyncio.Event()

    async def handler(request: h11.Request, body: bytes, base: str) -> bytes:
        await release.wait()
        return b""

    async with scripted(handler) as base:
        try:
            with pytest.raises(ReadTimeout, match=r"within 0\.2s"):
                await fetch(base + "/", timeout=0.2)
        finally:
            release.set()


async def test_https_server_closing_without_answer_gets_the_tls_hint(tmp_path: Path) -> None:
    async def hang_up(request: h11.Request, body: bytes, base: str) -> bytes:
        return b""

    pki = make_pki(tmp_path)
    async with scripted(hang_up, server_context(pki.server_tls())) as base:
        with pytest.raises(MalformedResponse) as caught:
            await fetch(base + "/", tls=pki.client_tls())
    message = str(caught.value)
    assert "closed the TLS connection without answering" in message
    assert "--tls-cert and --tls-key" in message and "http:// URL" not in message
    async with scripted(hang_up) as base:  # plain http keeps the wrong-scheme hint
        with pytest.raises(MalformedResponse, match="reached with an http:// URL"):
            await fetch(base + "/")


async def test_server_requiring_a_client_certificate(tmp_path: Path, site: Path) -> None:
    pki = make_pki(tmp_path)
    tls = pki.server_tls(client_auth="required")
    srv = await serve_http("https://127.0.0.1:0", site, tls=tls, limits=LIMITS)
    try:
        with pytest.raises(TLSError, match="requires a client certificate") as caught:
            await fetch(srv.url + "hello.txt", tls=pki.client_tls())
        assert "--tls-cert" in str(caught.value) and "http:// URL" not in str(caught.value)
        response = await fetch(srv.url + "hello.txt", tls=pki.client_tls(with_cert=True))
        assert response.body == b"hello, world\n"
    finally:
        await srv.close(1.0)


async def test_raw_header_names_are_kept(server: HttpServer) -> None:
    async with open_response(server.url + "hello.txt") as response:
        assert ("Content-Length", "13") in response.raw_headers
        assert ("content-length", "13") in response.headers
        assert [k.lower() for k, _ in response.raw_headers] == [k for k, _ in response.headers]
