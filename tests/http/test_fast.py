"""The fast path (answers from data_received, the whole-response cache) and its hand-over to
the stream session, over real loopback sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from opensocket.http import HttpServer, _fast, serve_http

from ..tlsutil import make_pki
from .conftest import BIG_SIZE, LIMITS

GET = b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
MID_SIZE = 60 * 1024  # under the cache limit, over the kernel's socket buffers when pipelined


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """One raw keep-alive connection that parses the responses it reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self, head_only: bool = False) -> Reply:
        async with asyncio.timeout(5):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            status = int(lines[0].split()[1])
            size = 0 if head_only or status == 304 else int(headers["Content-Length"])
            body = await self.reader.readexactly(size)
        return Reply(status, headers, body)

    async def ask(self, request: bytes, head_only: bool = False) -> Reply:
        self.writer.write(request)
        return await self.reply(head_only)

    async def until_closed(self) -> bytes:
        async with asyncio.timeout(5):
            return await self.reader.read(-1)


@pytest.fixture
async def client(server: HttpServer) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0].port)
    try:
        yield Client(reader, writer)
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


def request(target: str = "/hello.txt", method: str = "GET", *extra: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: x", *extra, "", ""]
    return "\r\n".join(lines).encode()


def cached(server: HttpServer) -> set[str]:
    return set(server.response_cache._by_target)


async def test_cached_response_honours_conditional_range_and_head(
    server: HttpServer, client: Client
) -> None:
    first = await client.ask(GET)
    assert cached(server) == {"/hello.txt"}
    second = await client.ask(GET)  # from the cache
    assert (second.status, second.body) == (200, b"hello, world\n")
    assert {k: v for k, v in second.headers.items() if k != "Date"} == {
        k: v for k, v in first.headers.items() if k != "Date"
    }
    etag = first.headers["ETag"]
    assert (await client.ask(request("/hello.txt", "GET", f"If-None-Match: {etag}"))).status == 304
    modified = first.headers["Last-Modified"]
    since = request("/hello.txt", "GET", f"If-Modified-Since: {modified}")
    assert (await client.ask(since)).status == 304
    ranged = await client.ask(request("/hello.txt", "GET", "Range: bytes=7-11"))
    assert (ranged.status, ranged.body) == (206, b"world")
    stale = request("/hello.txt", "GET", 'If-Range: "old"', "Range: bytes=7-11")
    assert (await client.ask(stale)).body == b"hello, world\n"  # If-Range fails: whole file
    head = await client.ask(request("/hello.txt", "HEAD"), head_only=True)
    assert (head.status, head.headers["Content-Length"]) == (200, "13")
    after = await client.ask(GET)  # the HEAD sent no body: the next response parses
    assert after.body == b"hello, world\n"


async def test_pipelined_head_and_get_from_the_cache(server: HttpServer, client: Client) -> None:
    await client.ask(GET)
    client.writer.write(request("/hello.txt", "HEAD") + GET + request("/hello.txt", "HEAD"))
    head = await client.reply(head_only=True)
    body = await client.reply()
    again = await client.reply(head_only=True)
    assert (head.status, head.body, body.body, again.status) == (200, b"", b"hello, world\n", 200)
    assert "Connection" not in body.headers


@pytest.mark.parametrize(
    "raw",
    [
        request("/hello.txt", "GET", "Connection: close"),
        b"GET /hello.txt HTTP/1.0\r\n\r\n",
        b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ],
)
async def test_close_variants_from_the_cache(
    server: HttpServer, client: Client, raw: bytes
) -> None:
    await client.ask(GET)  # warm the cache on a keep-alive request
    reply = await client.ask(raw)
    assert (reply.body, reply.headers["Connection"]) == (b"hello, world\n", "close")
    assert await client.until_closed() == b""
    assert not server._fast


async def test_date_changes_with_the_second(
    server: HttpServer, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fast, "wall_clock", lambda: 1_000_000_000.25)
    first = await client.ask(GET)
    same = await client.ask(GET)
    monkeypatch.setattr(_fast, "wall_clock", lambda: 1_000_000_001.5)
    later = await client.ask(GET)
    assert first.headers["Date"] == same.headers["Date"] == "Sun, 09 Sep 2001 01:46:40 GMT"
    assert later.headers["Date"] == "Sun, 09 Sep 2001 01:46:41 GMT"
    assert later.body == first.body == b"hello, world\n"


async def test_replaced_or_deleted_file_is_not_served_from_the_cache(
    server: HttpServer, client: Client, site: Path
) -> None:
    await client.ask(GET)
    fresh = site / "hello.new"
    fresh.write_bytes(b"hello, world\n")  # same size, another inode
    fresh.replace(site / "hello.txt")
    first = await client.ask(GET)
    assert first.status == 200
    entry = server.response_cache._by_target["/hello.txt"]
    assert entry.ino == (site / "hello.txt").stat().st_ino  # planned and cached afresh
    (site / "hello.txt").unlink()
    assert (await client.ask(GET)).status == 404
    assert "/hello.txt" not in cached(server)


async def test_pipelined_small_big_small_hands_over_in_order(
    server: HttpServer, client: Client
) -> None:
    client.writer.write(GET + request("/big.bin") + GET)
    small = await client.reply()
    big = await client.reply()
    last = await client.reply()
    assert (small.body, len(big.body), last.body) == (b"hello, world\n", BIG_SIZE, small.body)
    assert len(server._sessions) == 1 and not server._fast  # the stream session took over
    assert (await client.ask(GET)).body == b"hello, world\n"


@pytest.mark.parametrize(
    "parts",
    [
        [b"GET /hello.txt HTTP/1.1\r\nHo", b"st: x\r\n\r\n"],
        [b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel", b"lo"],
        [b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"0\r\n\r\n"],
    ],
)
async def test_split_head_or_body_hands_over(
    server: HttpServer, client: Client, parts: list[bytes]
) -> None:
    client.writer.write(parts[0])
    await client.writer.drain()
    for _ in range(100):  # the server reads the first part and hands the connection over
        if server._sessions:
            break
        await asyncio.sleep(0.01)
    client.writer.write(parts[1])
    assert (await client.reply()).body == b"hello, world\n"
    assert (await client.ask(GET)).body == b"hello, world\n"


async def test_whole_request_with_a_small_body_stays_fast(
    server: HttpServer, client: Client
) -> None:
    body = request("/hello.txt", "GET", "Content-Length: 5") + b"hello"
    client.writer.write(body + GET)
    assert (await client.reply()).body == (await client.reply()).body == b"hello, world\n"
    assert not server._sessions and len(server._fast) == 1


async def test_backpressure_on_pipelined_requests(site: Path) -> None:
    (site / "mid.bin").write_bytes(bytes(range(256)) * (MID_SIZE // 256))
    server = await serve_http("127.0.0.1:0", site, limits=LIMITS)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0].port)
        client = Client(reader, writer)
        count = 200  # 12 MB of answers to requests sent before reading any
        writer.write(request("/mid.bin") * count)
        await writer.drain()
        (proto,) = server._fast
        for _ in range(300):  # the server fills the socket buffers, then pauses
            if proto._paused:
                break
            await asyncio.sleep(0.01)
        assert proto._paused and proto.parser.requests  # answers wait, not piled in memory
        assert proto.transport is not None
        assert proto.transport.get_write_buffer_size() < 2 * 1024 * 1024
        for _ in range(count):
            reply = await client.reply()
            assert (reply.status, len(reply.body)) == (200, MID_SIZE)
        assert (await client.ask(GET)).body == b"hello, world\n"
        writer.close()
        await writer.wait_closed()
    finally:
        await server.close(1.0)


async def test_a_client_that_stops_reading_is_cut_off(site: Path) -> None:
    (site / "mid.bin").write_bytes(bytes(MID_SIZE))
    limits = dataclasses.replace(LIMITS, write_timeout=0.3)
    server = await serve_http("127.0.0.1:0", site, limits=limits)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0].port)
        writer.write(request("/mid.bin") * 200)
        await writer.drain()
        for _ in range(300):  # 3 s at most; the server gives up after write_timeout
            if not server._fast:
                break
            await asyncio.sleep(0.01)
        assert not server._fast
        assert server.stats.active == 0
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)
    finally:
        await server.close(1.0)


async def test_close_ends_idle_fast_connections(server: HttpServer, client: Client) -> None:
    assert (await client.ask(GET)).status == 200
    assert server.stats.active == 1
    await server.close(1.0)
    assert await client.until_closed() == b""
    assert not server._fast


async def test_access_log_from_the_cache(
    server: HttpServer, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="opensocket.http.access"):
        await client.ask(GET)
        await client.ask(GET)
        await client.ask(request("/hello.txt", "HEAD"), head_only=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "opensocket.http.access"]
    assert [line.rsplit('"', 1)[1] for line in lines] == [" 200 13", " 200 13", " 200 -"]


async def test_unix_socket_clients_give_back_their_place(site: Path, sock_path: str) -> None:
    server = await serve_http(f"unix://{sock_path}", site, limits=LIMITS)
    try:
        for target in ("/hello.txt", "/big.bin"):  # answered fast, and handed over
            reader, writer = await asyncio.open_unix_connection(sock_path)
            reply = await Client(reader, writer).ask(request(target))
            assert reply.status == 200
            assert server._admission.total == 1
            writer.close()
            await writer.wait_closed()
            for _ in range(200):  # the server sees the EOF and closes its side
                if not server._admission.total:
                    break
                await asyncio.sleep(0.01)
            assert (server._admission.total, server._admission.per_ip) == (0, {})
    finally:
        await server.close(1.0)


async def test_https_answers_from_the_cache_carry_hsts(site: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = await serve_http("https://127.0.0.1:0", site, tls=pki.server_tls(), limits=LIMITS)
    try:
        context = ssl.create_default_context(cafile=pki.ca_cert)
        async with httpx.AsyncClient(verify=context, base_url=server.url) as web:
            named = {"Host": "www.example.test"}  # HSTS is never sent to an IP literal
            first = await web.get("/hello.txt", headers=named)
            assert cached(server) == {"/hello.txt"}
            second = await web.get("/hello.txt", headers=named)  # same connection, cached
            head = await web.head("/hello.txt", headers=named)
        for reply in (first, second, head):
            assert reply.headers["strict-transport-security"] == "max-age=31536000"
        assert second.content == b"hello, world\n" and head.content == b""
    finally:
        await server.close(1.0)


async def test_close_with_unread_output_aborts_after_write_timeout(site: Path) -> None:
    (site / "mid.bin").write_bytes(bytes(MID_SIZE))
    limits = dataclasses.replace(LIMITS, write_timeout=0.3)
    server = await serve_http("127.0.0.1:0", site, limits=limits)
    _, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0].port)
    try:
        writer.write(request("/mid.bin") * 200)
        await writer.drain()
        (proto,) = server._fast
        for _ in range(300):  # the server fills the socket buffers, then pauses
            if proto._paused:
                break
            await asyncio.sleep(0.01)
        assert proto._paused
        await server.close(0.1)  # the output cannot flush: the client does not read
        for _ in range(300):  # 3 s at most; aborted write_timeout after the close
            if not server._admission.total:
                break
            await asyncio.sleep(0.01)
        assert server._admission.total == 0
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)
