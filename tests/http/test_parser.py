"""The request parser (httptools under our limits) and the connection rules it drives."""

from __future__ import annotations

import pytest

from opensocket.http import HttpServer
from opensocket.http._parser import RequestParser

from .conftest import raw_exchange

HELLO = b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n"


def parser() -> RequestParser:
    return RequestParser(max_target=100, max_head=400, max_headers=5)


def test_pipelined_heads_in_pieces_are_queued_in_order() -> None:
    p = parser()
    data = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nx-two: 2\r\n\r\nHEAD /b HTTP/1.0\r\n\r\n"
    for i in range(0, len(data), 7):
        p.feed(data[i : i + 7])
    first, second = p.requests
    assert (first.method, first.target, first.version) == ("GET", "/a", "1.1")
    assert first.headers == {"host": "x", "x-two": "1, 2"}
    assert first.keep_alive and first.complete
    assert (second.method, second.version, second.keep_alive) == ("HEAD", "1.0", False)
    assert p.error is None and not p.in_head


def test_body_is_counted_not_kept() -> None:
    p = parser()
    p.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    (request,) = p.requests
    assert (request.body_size, request.complete) == (5, False)
    p.feed(b"67890")
    assert (request.body_size, request.complete) == (10, True)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /" + b"a" * 500, 414),  # a request line still arriving
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 6 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 500, 431),  # a header still arriving
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 420 + b"\r\n\r\n", 431),
        (b"BREW / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    ],
)
def test_limits_and_malformed_heads(data: bytes, status: int) -> None:
    p = parser()
    p.feed(data)
    assert p.error is not None and p.error.status == status
    assert p.done and not p.requests
    p.feed(HELLO + b"\r\n")  # nothing more is parsed after an error
    assert not p.requests


def test_requests_before_an_error_are_kept() -> None:
    p = parser()
    p.feed(HELLO + b"\r\nGARBAGE\r\n\r\n")
    assert len(p.requests) == 1 and p.requests[0].error is None
    assert p.error is not None and p.error.status == 400


async def test_http10_and_upgrade_requests_are_answered_then_closed(server: HttpServer) -> None:
    port = server.addresses[0].port
    old = await raw_exchange(port, b"GET /hello.txt HTTP/1.0\r\n\r\n")
    assert old.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in old
    assert old.endswith(b"\r\n\r\nhello, world\n")
    upgrade = await raw_exchange(port, HELLO + b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n")
    assert upgrade.count(b"HTTP/1.1 ") == 1 and upgrade.endswith(b"hello, world\n")


async def test_a_body_is_skipped_and_the_next_request_served(server: HttpServer) -> None:
    port = server.addresses[0].port
    data = b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    data += b"HEAD /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response = await raw_exchange(port, data)
    assert response.startswith(b"HTTP/1.1 405 ")
    head = response[response.index(b"HTTP/1.1 200 OK") :]
    assert b"Content-Length: 13\r\n" in head and head.endswith(b"\r\n\r\n")
