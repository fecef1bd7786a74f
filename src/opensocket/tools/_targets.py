"""Scan targets and port specs, parsed as pure functions (no sockets, no name resolution).

Targets: a host name, an IPv4 or IPv6 address (IPv6 optionally in brackets), a range
(``10.0.0.1-5`` on the last IPv4 part, or ``10.0.0.1-10.0.0.9`` / ``fd00::1-fd00::9`` between
two addresses) or a CIDR block (``10.0.0.0/24``, ``fd00::/120``; like nmap, every address of
the block is scanned, network and broadcast included). Port specs: ``22,80,8000-8100``,
``-`` for every port, open ends (``-1024``, ``60000-``) and service names (``ssh,http``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from ..errors import AddressError, ConfigError
from .services import port_by_name

__all__ = [
    "MAX_ADDRESSES",
    "Target",
    "format_ports",
    "parse_ports",
    "parse_target",
    "parse_targets",
]

MAX_ADDRESSES: Final = 65536  # per target; a /8 by mistake would be 16 million hosts
MAX_PORT: Final = 65535

_HOSTNAME: Final = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_TARGET_EXAMPLES: Final = (
    "examples: localhost, 127.0.0.1, ::1, 127.0.0.1-5, 127.0.0.1-127.0.0.9, 127.0.0.0/30"
)
_PORT_EXAMPLES: Final = "examples: 22, 22,80,443, 8000-8100, -1024, 60000-, - (all), ssh,http"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Target:
    """One target as given: a host name to resolve, or the IP addresses it stands for."""

    text: str
    hostname: str | None = None
    addresses: tuple[str, ...] = ()


def _bad_target(text: str, problem: str) -> AddressError:
    return AddressError(f"bad scan target {text!r}: {problem}; {_TARGET_EXAMPLES}")


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _count_check(text: str, count: int) -> None:
    if count > MAX_ADDRESSES:
        raise _bad_target(
            text,
            f"{count:,} addresses is more than {MAX_ADDRESSES:,}: split it into smaller blocks",
        )


def _cidr(text: str) -> Target:
    try:
        net = ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError as exc:
        raise _bad_target(text, str(exc))
    _count_check(text, net.num_addresses)
    first = int(net.network_address)
    cls = type(net.network_address)
    return Target(text, None, tuple(str(cls(first + i)) for i in range(net.num_addresses)))


def _range_end(text: str, start: IPAddress, end_text: str) -> IPAddress:
    end = _ip(end_text.strip("[]"))
    if end is not None:
        if end.version != start.version:
            raise _bad_target(text, "the two ends of the range are different IP versions")
        return end
    if start.version == 4 and end_text.isdigit():
        last = int(end_text)
        if last > 255:
            raise _bad_target(text, f"{last} is not an IPv4 address part (0-255)")
        return ipaddress.IPv4Address((int(start) & ~0xFF) | last)
    raise _bad_target(text, f"{end_text!r} is neither an address nor a last IPv4 part (0-255)")


def _range(text: str, start_text: str, end_text: str) -> Target:
    start = _ip(start_text.strip("[]"))
    if start is None:
        raise _bad_target(text, f"{start_text!r} is not an IP address")
    end = _range_end(text, start, end_text)
    if int(end) < int(start):
        raise _bad_target(text, "the range ends before it starts")
    _count_check(text, int(end) - int(start) + 1)
    cls = type(start)
    return Target(text, None, tuple(str(cls(n)) for n in range(int(start), int(end) + 1)))


def _split_range(text: str) -> tuple[str, str] | None:
    """``a-b`` split at the dash between two addresses (IPv6 has no dashes; names may)."""
    if text.count("-") != 1:
        return None
    start, _, end = text.partition("-")
    return (start, end) if _ip(start.strip("[]")) is not None else None


def parse_target(text: str) -> Target:
    """Parse one target; raise AddressError saying what is wrong."""
    text = text.strip()
    if not text:
        raise _bad_target(text, "it is empty")
    if "/" in text:
        return _cidr(text)
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    ip = _ip(bare)
    if ip is not None:
        return Target(text, None, (str(ip),))
    if "%" in bare and _ip(bare.split("%", 1)[0]) is not None:
        return Target(text, None, (bare,))  # a scoped IPv6 address: fe80::1%eth0
    pair = _split_range(text)
    if pair is not None:
        return _range(text, *pair)
    host, _, port = text.rpartition(":")
    if port.isdigit() and (_ip(host.strip("[]")) is not None or _HOSTNAME.match(host)):
        bare_host = host.strip("[]")
        raise _bad_target(text, f"ports go in -p, not in the target: {bare_host} -p {port}")
    if ":" in bare:
        raise _bad_target(text, "it is not a valid IPv6 address")
    if not _HOSTNAME.match(text) or text.replace(".", "").isdigit():
        raise _bad_target(text, "it is not a host name, an IP address, a range or a CIDR block")
    return Target(text, text, ())


def parse_targets(texts: Iterable[str]) -> list[Target]:
    """Parse every target (comma- or space-separated lists are split too)."""
    out = [parse_target(part) for text in texts for part in re.split(r"[,\s]+", text) if part]
    if not out:
        raise _bad_target("", "no target given")
    return out


def _bad_ports(spec: str, problem: str) -> ConfigError:
    return ConfigError(f"bad port spec {spec!r}: {problem}; {_PORT_EXAMPLES}")


def _port(spec: str, text: str, protocol: str) -> int:
    if text.isdigit():
        port = int(text)
        if not 1 <= port <= MAX_PORT:
            raise _bad_ports(spec, f"port {port} is out of range 1-65535")
        return port
    by_name = port_by_name(text, protocol)
    if by_name is None:
        raise _bad_ports(spec, f"{text!r} is neither a port number nor a known service name")
    return by_name


def _part(spec: str, part: str, protocol: str) -> Sequence[int]:
    if part == "-":
        return range(1, MAX_PORT + 1)
    named = port_by_name(part, protocol)
    if named is not None:  # names may hold dashes: http-proxy is a port, not a range
        return (named,)
    if "-" not in part:
        return (_port(spec, part, protocol),)
    return _range_part(spec, part, protocol)


def _range_part(spec: str, part: str, protocol: str) -> Sequence[int]:
    """``low-high``, split at the dash whose two sides are ports (``http-proxy-9000``)."""
    dashes = [i for i, ch in enumerate(part) if ch == "-"]
    first_error: ConfigError | None = None
    for at in dashes:
        low_text, high_text = part[:at], part[at + 1 :]
        try:
            low = _port(spec, low_text, protocol) if low_text else 1
            high = _port(spec, high_text, protocol) if high_text else MAX_PORT
        except ConfigError as exc:
            first_error = first_error or exc
            continue
        if high < low:
            raise _bad_ports(spec, f"the range {part} ends before it starts")
        return range(low, high + 1)
    if any(ch.isalpha() for ch in part):
        raise _bad_ports(spec, f"{part!r} is neither a port range nor a known service name")
    assert first_error is not None
    raise first_error


def parse_ports(spec: str, protocol: str = "tcp") -> tuple[int, ...]:
    """Parse a port spec into sorted, unique ports; raise ConfigError saying what is wrong."""
    parts = [p.strip() for p in spec.split(",")]
    if not spec.strip() or any(not p for p in parts):
        raise _bad_ports(spec, "an empty entry")
    chosen: set[int] = set()
    for part in parts:
        chosen.update(_part(spec, part, protocol))
    return tuple(sorted(chosen))


def format_ports(ports: Iterable[int]) -> str:
    """The compact spec of sorted ports, ``parse_ports``'s inverse: ``1-1024,8080``."""
    runs: list[list[int]] = []
    for port in sorted(set(ports)):
        if runs and port == runs[-1][1] + 1:
            runs[-1][1] = port
        else:
            runs.append([port, port])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
