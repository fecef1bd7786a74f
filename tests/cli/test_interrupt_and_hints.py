"""Ctrl-C is reported (stderr, and one JSON object with --json); wildcard binds get addresses
another machine can use."""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

import pytest

from opensocket.address import Address, parse_address
from opensocket.cli._common import reachable_addresses

from .conftest import WAIT


@pytest.mark.parametrize("json_mode", [False, True])
def test_ctrl_c_says_interrupted(spawn: Any, json_mode: bool) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(WAIT)
        port = listener.getsockname()[1]
        extra = ["--json"] if json_mode else []
        # 50 probes/s over thousands of ports: still running when the signal comes
        proc = spawn("scan", "127.0.0.1", "-p", f"{port}-65535", "--rate", "50", *extra)
        conn, _ = listener.accept()  # the first probe: the command runs, not starts up
        conn.close()
        assert proc.stop() == 130
    assert proc.rest("err") == "opensocket scan: interrupted\n"
    out = proc.rest("out")
    if json_mode:
        assert json.loads(out) == {"error": "interrupted", "exit": 130}
    else:
        assert out == ""


def _interfaces_present() -> bool:
    import psutil

    return any(
        entry.family in (socket.AF_INET, socket.AF_INET6)
        for entries in psutil.net_if_addrs().values()
        for entry in entries
    )


@pytest.mark.parametrize(
    ("url", "families"),
    [
        ("tcp://*:9022", {4, 6}),
        ("tcp://0.0.0.0:9009", {4}),
        ("tls://[::]:9443", {6}),
    ],
)
def test_wildcard_gives_this_hosts_addresses_with_the_port(url: str, families: set[int]) -> None:
    assert _interfaces_present()
    given = parse_address(url)
    found = reachable_addresses(given)
    assert found
    for addr in found:
        assert (addr.scheme, addr.port) == (given.scheme, given.port)
        assert addr.host not in ("*", "0.0.0.0", "::", "")
        try:
            ip = ipaddress.ip_address(addr.host)
        except ValueError:  # no usable interface address: the hostname
            assert found == [Address(given.scheme, socket.gethostname(), given.port)]
            continue
        assert ip.version in families and not ip.is_loopback
        assert not (ip.version == 6 and ip.is_link_local)
    versions = [":" in a.host for a in found]
    assert versions == sorted(versions)  # IPv4 first


@pytest.mark.parametrize(
    "url", ["tcp://192.168.1.20:9009", "tcp://[::1]:9", "tcp://files.example.org:9009"]
)
def test_specific_address_comes_back_as_is(url: str) -> None:
    assert reachable_addresses(parse_address(url)) == [parse_address(url)]


def test_unix_address_comes_back_as_is() -> None:
    addr = parse_address("unix:///tmp/x.sock")
    assert reachable_addresses(addr) == [addr]
