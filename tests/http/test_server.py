"""The web server over loopback with curl, httpx and raw sockets."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from pathlib import Path

import httpx
import pytest

from opensocket.http import HttpServer, serve_http
from opensocket.options import ServerLimits

from ..tlsutil import make_pki
from .conftest import BIG_SIZE, LIMITS, raw_exchange, run, status_of


def port_of(server: HttpServer) -> int:
    return server.addresses[0].port


async def test_curl_get_head_and_keepalive(server: HttpServer) -> None:
    url = server.url + "hello.txt"
    code, out, _ = await run("curl", "-sS", "--http1.1", url, url)
    assert code == 0
    assert out == b"hello, world\n" * 2
    code, out, _ = await run("curl", "-sS", "--http1.1", "-I", url)
    assert code == 0
    assert b"HTTP/1.1 200 OK" in out
    assert b"Content-Length: 13" in out
    assert b"Strict-Transport-Security" not in out


async def test_curl_ranges_and_conditional(server: HttpServer, site: Path) -> None:
    url = server.url + "hello.txt"
    code, out, _ = await run("curl", "-sS", "--http1.1", "-r", "0-4", url)
    assert (code, out) == (0, b"hello")
    code, out, _ = await run("curl", "-sS", "-i", "--http1.1", "-r", "0-1,7-8", url)
    assert b"206 Partial Content" in out
    assert b"multipart/byteranges" in out
    assert b"Content-Range: bytes 7-8/13\r\n\r\nwo\r\n" in out
    code, out, _ = await run("curl", "-sS", "-i", "-r", "100-200", url)
    assert b"416" in out.split(b"\r\n")[0]
    assert b"Content-Range: bytes */13" in out
    async with httpx.AsyncClient() as client:
        etag = (await client.get(url)).headers["etag"]
    code, out, _ = await run(
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"If-None-Match: {etag}", url
    )
    assert out == b"304"


async def test_big_file_is_streamed_whole(server: HttpServer, site: Path) -> None:
    code, out, _ = await run("curl", "-sS", "--http1.1", server.url + "big.bin")
    assert code == 0
    assert len(out) == BIG_SIZE
    assert hashlib.sha256(out).digest() == hashlib.sha256((site / "big.bin").read_bytes()).digest()


async def test_httpx_listing_and_jail(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        listing = await client.get("/docs/")
        assert listing.status_code == 200
        assert 'href="a%26b.txt"' in listing.text
        assert "a&amp;b.txt" in listing.text
        assert (await client.get("/docs")).status_code == 301
        assert (await client.get("/link-out")).status_code == 404
        assert (await client.get("/.env")).status_code == 404
        assert (await client.post("/hello.txt", content=b"x")).status_code == 405
    for target, status in (
        (b"/../outside.txt", 403),
        (b"/%2e%2e/outside.txt", 403),
        (b"/docs%2f..%2f..%2foutside.txt", 403),
        (b"/hello.txt%00", 400),
    ):
        response = await raw_exchange(
            port_of(server), b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status_of(response) == status, target
        assert b"OUTSIDE" not in response


MALFORMED = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n", 413),
    (b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n", 405),
]


async def test_malformed_requests_while_a_client_is_served(server: HttpServer) -> None:
    served = 0

    async def good_client() -> None:
        nonlocal served
        async with httpx.AsyncClient() as client:
            for _ in range(20):
                response = await client.get(server.url + "hello.txt")
                assert response.content == b"hello, world\n"
                served += 1

    async def bad(data: bytes, status: int) -> None:
        response = await raw_exchange(port_of(server), data)
        assert status_of(response) == status, data[:60]
        assert b"Traceback" not in response

    await asyncio.gather(good_client(), *(bad(d, s) for d, s in MALFORMED))
    assert served == 20


async def test_keepalive_pipelined_then_idle_close(server: HttpServer) -> None:
    request = b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    received = bytearray()

    async def until(count: int) -> None:
        while received.count(b"hello, world\n") < count:
            chunk = await reader.read(65536)
            assert chunk, "the server closed a keep-alive connection too early"
            received.extend(chunk)

    try:
        async with asyncio.timeout(5):
            writer.write(request * 3)
            await until(3)
            writer.write(request)  # the same connection still serves
            await until(4)
            rest = await reader.read(-1)  # then the idle timeout closes it, silently
    finally:
        writer.close()
        await writer.wait_closed()
    assert received.count(b"HTTP/1.1 200 OK") == 4
    assert rest == b""
    assert not server._sessions


async def test_slowloris_is_cut_off(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    writer.write(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n")
    received = bytearray()

    async def trickle() -> None:
        for _ in range(100):  # 10 s at most; the server gives up after head_timeout
            await asyncio.sleep(0.05)
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()

    dripping = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(5):
            while chunk := await reader.read(4096):
                received += chunk
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)
    assert status_of(bytes(received)) == 408
    for _ in range(100):
        if not server._sessions:
            break
        await asyncio.sleep(0.01)
    assert not server._sessions


async def test_access_log(server: HttpServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="opensocket.http.access"):
        async with httpx.AsyncClient() as client:
            await client.get(server.url + "hello.txt")
            await client.get(server.url + "nothing")
    lines = [r.getMessage() for r in caplog.records if r.name == "opensocket.http.access"]
    assert len(lines) == 2
    assert lines[0].startswith("127.0.0.1 - - [")
    assert lines[0].endswith('"GET /hello.txt HTTP/1.1" 200 13')
    assert '"GET /nothing HTTP/1.1" 404' in lines[1]


async def test_graceful_close_finishes_response(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    writer.write(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"200 OK" in head
    closing = asyncio.create_task(server.close(5.0))
    size = 0
    async with asyncio.timeout(10):
        while chunk := await reader.read(256 * 1024):
            size += len(chunk)
        writer.close()
        await writer.wait_closed()
        await closing
    assert size == BIG_SIZE
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port_of(server))


async def test_https_with_curl_and_hsts(site: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = await serve_http("https://127.0.0.1:0", site, tls=pki.server_tls(), limits=LIMITS)
    try:
        assert server.url.startswith("https://127.0.0.1:")
        url = server.url + "hello.txt"
        named = ("-H", "Host: www.example.test")  # HSTS is never sent to an IP literal
        code, out, err = await run(
            "curl", "-sS", "-i", "--http1.1", "--cacert", pki.ca_cert, *named, url
        )
        assert code == 0, err
        assert b"Strict-Transport-Security: max-age=31536000" in out
        assert out.endswith(b"hello, world\n")
        code, out, _ = await run("curl", "-sS", "--cacert", pki.ca_cert, server.url + "big.bin")
        assert len(out) == BIG_SIZE
        code, _, _ = await run("curl", "-sS", url)  # not trusted without the CA
        assert code != 0
        context = ssl.create_default_context(cafile=pki.ca_cert)
        async with httpx.AsyncClient(verify=context) as client:
            response = await client.get(url, headers={"Range": "bytes=7-11"})
        assert response.status_code == 206
        assert response.content == b"world"
    finally:
        await server.close(1.0)


async def test_redirect_to_https_and_hsts_only_on_tls(site: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = await serve_http(
        ["http://127.0.0.1:0", "https://127.0.0.1:0"],
        site,
        tls=pki.server_tls(),
        limits=LIMITS,
        redirect_https=True,
    )
    try:
        plain, secure = server.urls
        code, out, _ = await run("curl", "-sS", "-i", plain + "hello.txt?x=1")
        assert b"308 Permanent Redirect" in out
        assert f"Location: {secure}hello.txt?x=1".encode() in out
        assert b"Strict-Transport-Security" not in out
        code, out, err = await run(
            "curl", "-sS", "-L", "--cacert", pki.ca_cert, plain + "hello.txt"
        )
        assert (code, out) == (0, b"hello, world\n"), err
    finally:
        await server.close(1.0)


async def test_changed_small_file_is_not_served_stale(server: HttpServer, site: Path) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        first = await client.get("/hello.txt")
        (site / "hello.txt").write_bytes(b"changed, and longer\n")
        second = await client.get("/hello.txt")
    assert first.content == b"hello, world\n"
    assert second.content == b"changed, and longer\n"
    assert first.headers["etag"] != second.headers["etag"]


async def test_connection_cap_gets_503(site: Path) -> None:
    server = await serve_http(
        "127.0.0.1:0", site, limits=LIMITS, server_limits=ServerLimits(max_connections=1)
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        try:
            writer.write(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in await reader.readuntil(b"\r\n\r\n")  # the first one is in
            refused = await raw_exchange(port_of(server), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(refused) == 503
            assert server.stats.dropped["connection limit"] == 1
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        await server.close(1.0)


async def test_internal_error_is_a_500_not_a_traceback(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("planner bug")

    monkeypatch.setattr(server.files, "plan", broken)  # no real input reaches this path
    with caplog.at_level(logging.ERROR, logger="opensocket.http"):
        response = await raw_exchange(
            port_of(server), b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
        )
    assert status_of(response) == 500
    assert b"planner bug" not in response
    assert b"Traceback" not in response
    assert any("planner bug" in (r.exc_text or "") for r in caplog.records)


async def test_sendfile_bodies_match_the_file(site: Path) -> None:
    import dataclasses

    from .conftest import LIMITS

    limits = dataclasses.replace(LIMITS, sendfile=True)
    srv = await serve_http("127.0.0.1:0", site, limits=limits)
    try:
        data = (site / "big.bin").read_bytes()
        code, out, _ = await run("curl", "-sS", "--http1.1", srv.url + "big.bin")
        assert code == 0
        assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
        async with httpx.AsyncClient() as client:
            one = await client.get(srv.url + "big.bin", headers={"Range": "bytes=1000-1999"})
            assert one.status_code == 206
            assert one.content == data[1000:2000]
            many = await client.get(srv.url + "big.bin", headers={"Range": "bytes=0-9,-10"})
            assert many.status_code == 206
            assert data[:10] in many.content
            assert data[-10:] in many.content
            again = await client.get(srv.url + "hello.txt")  # the same keep-alive connection
            assert again.content == b"hello, world\n"
    finally:
        await srv.close(1.0)


def client_hello() -> bytes:
    """A real TLS ClientHello, as the first flight of any HTTPS client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"  # a handshake record
    return hello


async def tls_reply_to_hello(port: int) -> bytes:
    """Send a ClientHello and read until the server closes: b"" when it never answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(client_hello())
        async with asyncio.timeout(5):
            return await reader.read(-1)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


async def https_get(port: int, cafile: str) -> bytes:
    """One request over TLS on a fresh connection; the response head and body."""
    context = ssl.create_default_context(cafile=cafile)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        writer.write(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            return await reader.read(-1)
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


async def wait_idle(server: HttpServer) -> None:
    for _ in range(200):  # 2 s at most
        if server.stats.active == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server still holds a connection")


async def test_https_denied_client_is_closed_before_tls(
    site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path)
    server = await serve_http(
        "https://127.0.0.1:0",
        site,
        tls=pki.server_tls(),
        limits=LIMITS,
        server_limits=ServerLimits(deny=("127.0.0.0/8",)),
    )
    try:
        with caplog.at_level(logging.WARNING, logger="opensocket.http"):
            assert await tls_reply_to_hello(port_of(server)) == b""  # not even a ServerHello
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await https_get(port_of(server), pki.ca_cert)
        stats = server.stats
        assert stats.dropped["access denied"] == 2
        assert stats.handshakes_failed == 0
        assert stats.active == 0
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 2
        assert "127.0.0.1 is denied by the access list" in refusals[0]
    finally:
        await server.close(1.0)


async def test_https_over_the_cap_is_closed_before_tls_and_others_served(
    site: Path, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    server = await serve_http(
        "https://127.0.0.1:0",
        site,
        tls=pki.server_tls(),
        limits=LIMITS,
        server_limits=ServerLimits(max_connections=1),
    )
    context = ssl.create_default_context(cafile=pki.ca_cert)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port_of(server), ssl=context, server_hostname="localhost"
        )
        try:
            writer.write(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in await reader.readuntil(b"\r\n\r\n")  # holds the only place
            assert await tls_reply_to_hello(port_of(server)) == b""
            assert server.stats.dropped["connection limit"] == 1
        finally:
            writer.close()
            await asyncio.gather(writer.wait_closed(), return_exceptions=True)
        await wait_idle(server)
        response = await https_get(port_of(server), pki.ca_cert)  # the place is free again
        assert b"200 OK" in response
        assert response.endswith(b"hello, world\n")
        assert server.stats.handshakes_failed == 0
    finally:
        await server.close(1.0)


async def test_https_failed_handshake_is_counted_and_frees_its_place(
    site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path)
    server = await serve_http(
        "https://127.0.0.1:0",
        site,
        tls=pki.server_tls(),
        limits=LIMITS,
        server_limits=ServerLimits(max_connections=1),
    )
    try:
        with caplog.at_level(logging.WARNING, logger="opensocket.http"):
            plain = await raw_exchange(port_of(server), b"SSH-2.0-OpenSSH_9.2\r\n")
        assert plain == b""  # neither TLS nor HTTP: nothing to answer
        assert server.stats.handshakes_failed == 1
        assert server.stats.dropped["handshake failed"] == 1
        assert any("handshake failed" in r.getMessage() for r in caplog.records)
        await wait_idle(server)
        response = await https_get(port_of(server), pki.ca_cert)
        assert response.endswith(b"hello, world\n")
    finally:
        await server.close(1.0)


async def test_https_silent_client_times_out_in_the_handshake(
    site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path)
    server = await serve_http(
        "https://127.0.0.1:0",
        site,
        tls=pki.server_tls(),
        limits=LIMITS,
        server_limits=ServerLimits(handshake_timeout=0.2),
    )
    try:
        with caplog.at_level(logging.WARNING, logger="opensocket.http"):
            silent = await raw_exchange(port_of(server), b"")  # connects, never says hello
        assert silent == b""
        assert server.stats.handshakes_failed == 1
        assert any("TLS handshake in 0.2s" in r.getMessage() for r in caplog.records)
        assert (await https_get(port_of(server), pki.ca_cert)).endswith(b"hello, world\n")
    finally:
        await server.close(1.0)


async def test_close_drops_a_pending_tls_handshake(site: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = await serve_http("https://127.0.0.1:0", site, tls=pki.server_tls(), limits=LIMITS)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    try:
        for _ in range(100):  # the handshake starts once the loop runs the accept
            if server._handshakes:
                break
            await asyncio.sleep(0.01)
        assert server._handshakes
        async with asyncio.timeout(2):
            await server.close(1.0)
            assert await reader.read(-1) == b""
        assert not server._handshakes
        assert server._admission.total == 0
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)
