"""Target and port-spec parsing for `opensocket scan`: pure functions, no sockets."""

from __future__ import annotations

import pytest

from opensocket.errors import AddressError, ConfigError
from opensocket.tools._targets import (
    MAX_ADDRESSES,
    Target,
    format_ports,
    parse_ports,
    parse_target,
    parse_targets,
)
from opensocket.tools.services import default_ports, port_by_name, service_name

# ---- targets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "addresses"),
    [
        ("127.0.0.1", ("127.0.0.1",)),
        ("::1", ("::1",)),
        ("[::1]", ("::1",)),
        ("0:0:0:0:0:0:0:1", ("::1",)),
        ("127.0.0.1-3", ("127.0.0.1", "127.0.0.2", "127.0.0.3")),
        ("127.0.0.254-255", ("127.0.0.254", "127.0.0.255")),
        ("127.0.0.9-127.0.1.1", (*(f"127.0.0.{n}" for n in range(9, 256)), "127.0.1.0",
                                 "127.0.1.1")),
        ("127.0.0.0/30", ("127.0.0.0", "127.0.0.1", "127.0.0.2", "127.0.0.3")),
        ("127.0.0.5/32", ("127.0.0.5",)),
        ("127.0.0.6/31", ("127.0.0.6", "127.0.0.7")),
        ("127.0.0.5/30", ("127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7")),  # not strict
        ("::1/127", ("::", "::1")),
        ("fd00::1-fd00::3", ("fd00::1", "fd00::2", "fd00::3")),
        ("[::1]-[::2]", ("::1", "::2")),
        ("fe80::1%lo", ("fe80::1%lo",)),
    ],
)  # fmt: skip
def test_address_targets(text: str, addresses: tuple[str, ...]) -> None:
    assert parse_target(text) == Target(text, None, addresses)


@pytest.mark.parametrize("name", ["localhost", "ip6-localhost", "db-1.internal", "a", "x_y.test"])
def test_host_names_stay_names(name: str) -> None:
    assert parse_target(name) == Target(name, name, ())


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "it is empty"),
        ("127.0.0.256", "not a host name"),
        ("127.0.0.5-3", "ends before it starts"),
        ("127.0.0.1-300", "300 is not an IPv4 address part"),
        ("127.0.0.1-::5", "different IP versions"),
        ("::1-abc", "neither an address nor a last IPv4 part"),
        ("127.0.0.0/33", "127.0.0.0/33"),
        ("10.0.0.0/8", "16,777,216 addresses is more than 65,536"),
        ("10.0.0.0-10.2.0.0", "131,073 addresses"),
        ("::1:::", "not a valid IPv6 address"),
        ("bad host!", "not a host name"),
        ("-leading", "not a host name"),
        ("127.0.0.1:80", "ports go in -p, not in the target: 127.0.0.1 -p 80"),
        ("localhost:8080", "ports go in -p, not in the target: localhost -p 8080"),
        ("[::1]:443", "ports go in -p, not in the target: ::1 -p 443"),
    ],
)
def test_bad_targets_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_target(text)
    message = str(info.value)
    assert problem in message
    assert f"bad scan target {text!r}" in message
    assert "examples:" in message


def test_largest_block_allowed() -> None:
    assert len(parse_target("10.0.0.0/16").addresses) == MAX_ADDRESSES


def test_several_targets_split_on_commas_and_spaces() -> None:
    targets = parse_targets(["127.0.0.1,::1", "localhost  127.0.0.2-3"])
    assert [t.text for t in targets] == ["127.0.0.1", "::1", "localhost", "127.0.0.2-3"]
    assert targets[3].addresses == ("127.0.0.2", "127.0.0.3")


def test_no_targets() -> None:
    with pytest.raises(AddressError, match="no target given"):
        parse_targets([" ", ","])


# ---- ports -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "ports"),
    [
        ("22", (22,)),
        ("22,80,443", (22, 80, 443)),
        ("80,22,80", (22, 80)),
        ("8000-8003", (8000, 8001, 8002, 8003)),
        ("1-3,2-4", (1, 2, 3, 4)),
        ("65534-", (65534, 65535)),
        ("-3", (1, 2, 3)),
        (" 22 , 25 ", (22, 25)),
        ("ssh,http", (22, 80)),
        ("ssh-telnet", (22, 23)),
        ("ssh,http-proxy,2222", (22, 2222, 8080)),  # a name with a dash is not a range
        ("http-proxy-8082", (8080, 8081, 8082)),
        ("https-alt", (8443,)),
        ("65535", (65535,)),
    ],
)
def test_port_specs(spec: str, ports: tuple[int, ...]) -> None:
    assert parse_ports(spec) == ports


@pytest.mark.parametrize(
    ("ports", "spec"),
    [((22,), "22"), ((1, 2, 3, 8080), "1-3,8080"), ((5, 1, 2, 9, 10), "1-2,5,9-10"), ((), "")],
)
def test_format_ports_is_compact(ports: tuple[int, ...], spec: str) -> None:
    assert format_ports(ports) == spec
    if ports:
        assert parse_ports(spec) == tuple(sorted(ports))


def test_all_ports() -> None:
    assert parse_ports("-") == tuple(range(1, 65536))
    assert parse_ports("1-65535") == parse_ports("-")


def test_udp_service_names() -> None:
    assert parse_ports("domain,ntp", "udp") == (53, 123)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "an empty entry"),
        ("22,,80", "an empty entry"),
        ("0", "port 0 is out of range"),
        ("65536", "port 65536 is out of range"),
        ("100-10", "the range 100-10 ends before it starts"),
        ("nosuchservice", "'nosuchservice' is neither a port number nor a known service"),
        ("1-2-3", "'2-3' is neither"),
        ("-5-", "is neither"),
        ("http-prxy", "'http-prxy' is neither a port range nor a known service name"),
    ],
)
def test_bad_port_specs_say_what_is_wrong(spec: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_ports(spec)
    assert problem in str(info.value)
    assert f"bad port spec {spec!r}" in str(info.value)


# ---- services --------------------------------------------------------------------------------


def test_default_ports() -> None:
    tcp = default_ports()
    assert tcp[:1024] == tuple(range(1, 1025))
    assert {3306, 5432, 6379, 8080, 27017} <= set(tcp)
    assert list(tcp) == sorted(set(tcp))
    assert 53 in default_ports("udp")
    assert 22 not in default_ports("udp")


def test_service_names() -> None:
    assert service_name(22) == "ssh"
    assert service_name(53, "udp") == "domain"
    assert service_name(40000) is None
    assert service_name(2222, banner=b"SSH-2.0-OpenSSH_9.2\r\n") == "ssh"
    assert service_name(8080, banner=b"HTTP/1.1 400 Bad Request\r\n") == "http"
    assert service_name(2525, banner=b"220 mail.example ESMTP Postfix\r\n") == "smtp"
    assert service_name(80, banner=b"\x00\x01junk") == "http"  # no match: the table
    assert port_by_name("HTTPS") == 443
    assert port_by_name("nope") is None
