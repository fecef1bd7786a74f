"""The one address syntax: every accepted form, and a clear error for every bad one."""

from __future__ import annotations

import pytest

from opensocket.address import Address, from_sockaddr, parse_address
from opensocket.errors import AddressError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("tcp://127.0.0.1:9000", Address("tcp", "127.0.0.1", 9000)),
        ("TCP://example.com:80", Address("tcp", "example.com", 80)),
        ("tls://example.com:443/", Address("tls", "example.com", 443)),
        ("udp://[::1]:53", Address("udp", "::1", 53)),
        ("tcp://[fe80::1%lo]:7", Address("tcp", "fe80::1%lo", 7)),
        ("tcp://*:0", Address("tcp", "*", 0)),
        ("unix:///run/app.sock", Address("unix", path="/run/app.sock")),
        ("unix://@hub", Address("unix", path="@hub")),
    ],
)
def test_valid_addresses(url: str, expected: Address) -> None:
    addr = parse_address(url)
    assert addr == expected
    assert parse_address(str(addr)) == addr


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("127.0.0.1:9000", "scheme is missing"),
        ("ftp://host:21", "unknown scheme 'ftp'"),
        ("tcp://host", "port is required"),
        ("tcp://host:http", "not a number"),
        ("tcp://host:70000", "out of range"),
        ("tcp://:80", "host is missing"),
        ("tcp://::1:80", "must be written in brackets"),
        ("tcp://[::1:80", "no closing"),
        ("tcp://[::1]", "port is required"),
        ("tcp://[nothex]:1", "not an IPv6 address"),
        ("tcp://", "host and port are missing"),
        ("tcp://a b:1", "not a valid host name"),
        ("unix://relative.sock", "must be absolute"),
        ("unix://@", "needs a name"),
        ("unix:///" + "x" * 120, "longer than the 107 bytes"),
    ],
)
def test_invalid_addresses_name_the_problem_and_show_an_example(url: str, problem: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(url)
    message = str(info.value)
    assert problem in message
    assert "tcp://127.0.0.1:9000" in message
    assert isinstance(info.value, ValueError)


def test_default_scheme_and_restricted_schemes() -> None:
    assert parse_address("localhost:80", default_scheme="tcp") == Address("tcp", "localhost", 80)
    with pytest.raises(AddressError, match="unknown scheme 'udp'"):
        parse_address("udp://h:1", schemes=frozenset({"tcp"}))
    with pytest.raises(AddressError, match="not usable here"):
        parse_address(Address("udp", "h", 1), schemes=frozenset({"tcp"}))


def test_properties() -> None:
    addr = parse_address("unix://@name")
    assert addr.is_unix and addr.is_abstract and addr.unix_target == b"\0name"
    assert parse_address("unix:///p").unix_target == "/p"
    six = parse_address("tls://[::1]:5")
    assert six.is_tls and six.hostport == "[::1]:5" and str(six) == "tls://[::1]:5"
    assert parse_address("udp://*:5").is_wildcard and parse_address("udp://h:5").is_datagram
    assert six.with_port(9).port == 9 and six.with_scheme("tcp").scheme == "tcp"


def test_from_sockaddr() -> None:
    assert from_sockaddr("tcp", ("::1", 5, 0, 0)) == Address("tcp", "::1", 5)
    assert from_sockaddr("unix", "/tmp/s") == Address("unix", path="/tmp/s")
    assert from_sockaddr("unix", "\0abs") == Address("unix", path="@abs")
    assert from_sockaddr("unix", b"\0abs") == Address("unix", path="@abs")


def test_stream_address_points_datagram_users_to_open_datagram() -> None:
    from opensocket.address import stream_address

    assert stream_address("tcp://h:1") == Address("tcp", "h", 1)
    with pytest.raises(AddressError, match=r"open_datagram\(url\)"):
        stream_address("udp://127.0.0.1:9")
    with pytest.raises(AddressError, match="unknown scheme 'http'"):
        stream_address("http://h:1")
