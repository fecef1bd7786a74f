"""One address syntax for every transport: ``scheme://host:port`` or ``unix:///path``."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Final

from .errors import AddressError

__all__ = [
    "SCHEMES",
    "Address",
    "format_sockaddr",
    "from_sockaddr",
    "parse_address",
    "peer_text",
]

STREAM_SCHEMES: Final = frozenset({"tcp", "tls", "unix"})
DATAGRAM_SCHEMES: Final = frozenset({"udp"})
RUDP_SCHEMES: Final = frozenset({"rudp"})  # reliable UDP: connect/serve over UDP sockets
SCHEMES: Final = STREAM_SCHEMES | DATAGRAM_SCHEMES | RUDP_SCHEMES
WILDCARD: Final = "*"

_EXAMPLES: Final = (
    "tcp://127.0.0.1:9000, tls://example.com:9443, udp://[::1]:9000, "
    "rudp://127.0.0.1:9000, unix:///run/app.sock or unix://@abstract-name"
)


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed endpoint address; ``str(addr)`` gives the canonical URL back."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        """True for Unix-domain sockets (file path or abstract name)."""
        return self.scheme == "unix"

    @property
    def is_abstract(self) -> bool:
        """True for a Linux abstract-namespace Unix socket (``unix://@name``)."""
        return self.is_unix and self.path.startswith("@")

    @property
    def is_wildcard(self) -> bool:
        """True when the host is ``*``: bind every interface, IPv4 and IPv6."""
        return self.host == WILDCARD

    @property
    def is_tls(self) -> bool:
        """True when the scheme asks for TLS."""
        return self.scheme == "tls"

    @property
    def is_datagram(self) -> bool:
        """True for datagram schemes (UDP)."""
        return self.scheme in DATAGRAM_SCHEMES

    @property
    def is_rudp(self) -> bool:
        """True for reliable UDP (``rudp://``): messages over UDP, opened with connect/serve."""
        return self.scheme in RUDP_SCHEMES

    @property
    def unix_target(self) -> str | bytes:
        """The sockaddr for a Unix socket: a path, or bytes with a NUL for abstract names."""
        if self.is_abstract:
            return b"\0" + self.path[1:].encode()
        return self.path

    def with_port(self, port: int) -> Address:
        """Return a copy with another port (used to report ephemeral ports)."""
        return Address(self.scheme, self.host, port, self.path)

    def with_scheme(self, scheme: str) -> Address:
        """Return a copy with another scheme."""
        return Address(scheme, self.host, self.port, self.path)

    @property
    def hostport(self) -> str:
        """``host:port`` with IPv6 literals in brackets, or the Unix path."""
        if self.is_unix:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        if self.is_unix:
            return f"unix://{self.path}"
        return f"{self.scheme}://{self.hostport}"


def _fail(url: str, problem: str) -> AddressError:
    return AddressError(f"invalid address {url!r}: {problem}; examples: {_EXAMPLES}")


def _parse_port(url: str, text: str) -> int:
    if not text.isdigit():
        raise _fail(url, f"port {text!r} is not a number")
    port = int(text)
    if port > 65535:
        raise _fail(url, f"port {port} is out of range (0-65535)")
    return port


def _split_hostport(url: str, rest: str) -> tuple[str, int]:
    if not rest:
        raise _fail(url, "host and port are missing")
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise _fail(url, "an IPv6 address opened with '[' has no closing ']'")
        host, tail = rest[1:close], rest[close + 1 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise _fail(url, f"{host!r} is not an IPv6 address") from None
        if not tail.startswith(":"):
            raise _fail(url, "a port is required after the ']' (for example [::1]:9000)")
        return host, _parse_port(url, tail[1:])
    if rest.count(":") > 1:
        raise _fail(url, "IPv6 addresses must be written in brackets, like [::1]:9000")
    host, sep, port = rest.rpartition(":")
    if not sep:
        raise _fail(url, "a port is required (host:port)")
    if not host:
        raise _fail(url, "the host is missing (use * to listen on every interface)")
    if any(c in host for c in "/?#@ "):
        raise _fail(url, f"{host!r} is not a valid host name")
    return host, _parse_port(url, port)


def _parse_unix(url: str, rest: str) -> Address:
    if rest.startswith("@"):
        if len(rest) < 2:
            raise _fail(url, "an abstract Unix socket needs a name after '@'")
        return Address("unix", path=rest)
    if not rest.startswith("/"):
        raise _fail(url, "a Unix socket path must be absolute (three slashes: unix:///path)")
    if "\0" in rest:
        raise _fail(url, "a Unix socket path cannot contain a NUL byte")
    if len(rest.encode()) >= 108:
        raise _fail(url, "the path is longer than the 107 bytes a Unix socket address holds")
    return Address("unix", path=rest)


def parse_address(
    url: str | Address, *, default_scheme: str | None = None, schemes: frozenset[str] = SCHEMES
) -> Address:
    """Parse ``tcp://host:port``, ``tls://``, ``udp://``, ``rudp://``, ``unix:///path`` or
    ``unix://@name``.

    ``default_scheme`` lets callers accept a bare ``host:port``. Raises AddressError with an
    explanation and an example of a correct address.
    """
    if isinstance(url, Address):
        addr = url
    else:
        scheme, sep, rest = url.partition("://")
        if not sep:
            if default_scheme is None:
                raise _fail(url, "the scheme is missing")
            scheme, rest = default_scheme, url
        scheme = scheme.lower()
        if scheme not in schemes:
            known = ", ".join(sorted(schemes))
            raise _fail(url, f"unknown scheme {scheme!r} (known: {known})")
        if scheme == "unix":
            addr = _parse_unix(url, rest)
        else:
            rest = rest.rstrip("/")
            host, port = _split_hostport(url, rest)
            addr = Address(scheme, host, port)
    if addr.scheme not in schemes:
        raise _fail(str(addr), f"scheme {addr.scheme!r} is not usable here")
    return addr


def stream_address(url: str | Address) -> Address:
    """Parse an address for ``connect``/``serve``: a stream scheme (tcp, tls, unix)."""
    scheme = (url.scheme if isinstance(url, Address) else url.partition("://")[0]).lower()
    if scheme in DATAGRAM_SCHEMES:
        raise AddressError(
            f"{url} is a datagram address: open it with open_datagram(url); connect and "
            f"serve take stream addresses; examples: {_EXAMPLES}"
        )
    return parse_address(url, schemes=STREAM_SCHEMES)


def is_rudp_url(url: object) -> bool:
    """True when ``url`` names a reliable-UDP endpoint (``connect``/``serve`` dispatch on it)."""
    if isinstance(url, Address):
        return url.is_rudp
    return isinstance(url, str) and url.partition("://")[0].lower() in RUDP_SCHEMES


def rudp_address(url: str | Address) -> Address:
    """Parse a ``rudp://host:port`` address."""
    return parse_address(url, schemes=RUDP_SCHEMES)


def family_of(host: str) -> socket.AddressFamily | None:
    """Return the family of an IP literal, or None for a host name."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def peer_text(sockaddr: Any) -> tuple[str, str | None]:
    """An accepted peer for logs, and its IP for admission (None for Unix sockets)."""
    if isinstance(sockaddr, tuple):
        return format_sockaddr(sockaddr), str(sockaddr[0])
    return "unix-peer", None


def format_sockaddr(sockaddr: object) -> str:
    """``host:port`` (IPv6 in brackets) for an IP socket address, the path for a Unix one."""
    if isinstance(sockaddr, tuple):
        host = str(sockaddr[0])
        return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"
    if isinstance(sockaddr, bytes):
        sockaddr = sockaddr.decode(errors="replace")
    text = str(sockaddr or "")
    if text.startswith("\0"):
        return "@" + text[1:]
    return text or "unix"


def from_sockaddr(scheme: str, sockaddr: object) -> Address:
    """Build an Address from what ``getsockname``/``getpeername`` returned."""
    if isinstance(sockaddr, tuple):
        return Address(scheme, str(sockaddr[0]), int(sockaddr[1]))
    if isinstance(sockaddr, bytes):
        return Address("unix", path="@" + sockaddr.lstrip(b"\0").decode(errors="replace"))
    text = str(sockaddr)
    if text.startswith("\0"):
        return Address("unix", path="@" + text[1:])
    return Address("unix", path=text)
