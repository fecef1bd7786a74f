"""Socket creation shared by both runtimes: options, binding, address ordering, OS errors.

``OSError`` becomes an opensocket error here and only here (the runtime boundary), with a
message that says what to do and the original kept as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Sequence
from typing import Any

from .address import Address, family_of
from .errors import (
    AddressError,
    AddressInUse,
    ConnectError,
    ConnectionRefused,
    ConnectTimeout,
    HostUnreachable,
    NameResolutionError,
    OpenSocketError,
)
from .options import SocketOptions

__all__ = ["apply_options", "bind_sockets", "connect_error", "interleave", "resolve_infos"]

AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]
HAPPY_EYEBALLS_DELAY = 0.25


def apply_options(sock: socket.socket, opts: SocketOptions, *, listening: bool = False) -> None:
    """Set the socket options ``opts`` asks for on ``sock``."""
    family = sock.family
    inet = family in (socket.AF_INET, socket.AF_INET6)
    is_stream = sock.type == socket.SOCK_STREAM
    if opts.send_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, opts.send_buffer)
    if opts.recv_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, opts.recv_buffer)
    if listening or not is_stream:
        # SO_REUSEADDR lets a TCP server restart over TIME_WAIT; on a UDP socket it would let
        # a second endpoint bind the same port and silently share its datagrams.
        if opts.reuse_address and inet and is_stream:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if opts.reuse_port and inet:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if inet and is_stream and not listening:
        set_stream_options(sock, opts)


def set_stream_options(sock: socket.socket, opts: SocketOptions) -> None:
    """Options of a connected TCP socket (also applied to accepted sockets)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    if opts.nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    keep = opts.keepalive
    if keep is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(keep.idle)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(keep.interval)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, keep.count)


def interleave(infos: Sequence[AddrInfo]) -> list[AddrInfo]:
    """Order addresses for happy eyeballs (RFC 8305): alternate families, first family first."""
    by_family: dict[int, list[AddrInfo]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    queues = list(by_family.values())
    out: list[AddrInfo] = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def resolve_infos(
    addr: Address, kind: socket.SocketKind, *, passive: bool = False
) -> list[AddrInfo]:
    """getaddrinfo for ``addr`` (blocking), translating failures."""
    host: str | None = addr.host
    if addr.is_wildcard:
        host = None
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(host, addr.port, type=kind, flags=flags)
    except socket.gaierror as exc:
        raise resolution_error(addr, exc) from exc
    return list(infos)


def resolution_error(addr: Address, exc: BaseException) -> NameResolutionError:
    """The error for a host name that does not resolve."""
    return NameResolutionError(
        f"cannot resolve host name {addr.host!r} ({exc}): check the spelling and your DNS"
    )


def _owner_of(addr: Address) -> str:
    """Find which process holds a local port, when the OS lets us see it."""
    try:
        import psutil

        kind = "udp" if addr.is_datagram else "tcp"
        for conn in psutil.net_connections(kind=kind):
            if conn.laddr and conn.laddr.port == addr.port and conn.pid:
                if kind == "tcp" and conn.status != psutil.CONN_LISTEN:
                    continue
                name = psutil.Process(conn.pid).name()
                return f" by pid {conn.pid} ({name})"
    except Exception:  # the lookup is a courtesy; never let it mask the real error
        return ""
    return ""


def bind_error(exc: OSError, addr: Address) -> OpenSocketError:
    """Translate a failed bind."""
    where = addr.hostport
    if exc.errno == errno.EADDRINUSE:
        if addr.is_unix:
            return AddressInUse(
                errno.EADDRINUSE, f"{where} is already in use by a listening server"
            )
        owner = _owner_of(addr)
        return AddressInUse(
            errno.EADDRINUSE,
            f"{where} is already in use{owner}: stop that process or choose another port "
            "(port 0 picks a free one)",
        )
    if exc.errno == errno.EACCES:
        return AddressError(
            f"permission denied binding {where}: ports below 1024 need privileges; "
            "use a higher port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return AddressError(f"{where} is not an address of this machine")
    return AddressError(f"cannot bind {where}: {exc.strerror or exc}")


def connect_error(exc: BaseException, addr: Address, timeout: float | None) -> ConnectError:
    """Translate a failed connect into an error that says what to check."""
    where = addr.hostport
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, TimeoutError):
        return ConnectTimeout(
            f"connecting to {where} timed out after {timeout:g}s: the host may be down or a "
            "firewall may drop the packets"
        )
    code = getattr(exc, "errno", None)
    if code in (errno.ECONNREFUSED, errno.ENOENT):
        return ConnectionRefused(
            f"nothing is listening on {where} (connection refused): is the server running?"
        )
    if code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return HostUnreachable(f"{where} is unreachable ({os.strerror(code)}): check the route")
    if code == errno.ETIMEDOUT:
        return ConnectTimeout(f"connecting to {where} timed out: the host may be down")
    if code == errno.EACCES:
        return ConnectError(f"permission denied connecting to {where}")
    return ConnectError(f"cannot connect to {where}: {exc}")


def _unlink_stale_unix(path: str) -> None:
    """Remove a leftover socket file when no server is listening on it any more."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AddressError(f"{path} exists and is not a socket: refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise AddressInUse(errno.EADDRINUSE, f"{path} is already in use by a listening server")
    finally:
        probe.close()


def _bind_unix(addr: Address, kind: socket.SocketKind, opts: SocketOptions) -> socket.socket:
    if not addr.is_abstract:
        _unlink_stale_unix(addr.path)
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        apply_options(sock, opts, listening=kind == socket.SOCK_STREAM)
        sock.bind(addr.unix_target)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, addr) from exc
    return sock


def _wildcard_infos(addr: Address, kind: socket.SocketKind) -> list[AddrInfo]:
    if socket.has_ipv6:
        return [(socket.AF_INET6, kind, 0, "", ("::", addr.port, 0, 0))]
    return [(socket.AF_INET, kind, 0, "", ("0.0.0.0", addr.port))]


def bind_sockets(
    addr: Address, opts: SocketOptions, *, kind: socket.SocketKind = socket.SOCK_STREAM
) -> list[socket.socket]:
    """Create and bind (and listen, for streams) every socket ``addr`` stands for.

    ``*`` gives one dual-stack IPv6 socket that also accepts IPv4. A host name gives one
    socket per address it resolves to, all on the same port (the first one's, when 0).
    """
    if addr.is_unix:
        socks = [_bind_unix(addr, kind, opts)]
    else:
        if addr.is_wildcard:
            infos = _wildcard_infos(addr, kind)
        else:
            infos = resolve_infos(addr, kind, passive=True)
            unique: dict[tuple[int, str], AddrInfo] = {}
            for info in infos:
                unique.setdefault((info[0], info[4][0]), info)
            infos = list(unique.values())
        socks = _bind_inet(addr, infos, kind, opts)
    if kind == socket.SOCK_STREAM:
        for sock in socks:
            sock.listen(opts.backlog)
    for sock in socks:
        sock.setblocking(False)
    return socks


def _bind_inet(
    addr: Address, infos: list[AddrInfo], kind: socket.SocketKind, opts: SocketOptions
) -> list[socket.socket]:
    socks: list[socket.socket] = []
    port = addr.port
    try:
        for family, _, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            apply_options(sock, opts, listening=True)
            if family == socket.AF_INET6:
                v6only = 0 if addr.is_wildcard else 1
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            target = (sockaddr[0], port, *sockaddr[2:])
            try:
                sock.bind(target)
            except OSError as exc:
                raise bind_error(exc, addr.with_port(port)) from exc
            port = port or sock.getsockname()[1]
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def new_connect_socket(info: AddrInfo, opts: SocketOptions) -> socket.socket:
    """A non-blocking socket for one connect attempt, options applied before connecting."""
    family, kind, proto, _, _ = info
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        apply_options(sock, opts)
    except BaseException:
        sock.close()
        raise
    return sock


def unix_info(addr: Address, kind: socket.SocketKind) -> AddrInfo:
    """The single 'resolved' entry for a Unix address."""
    return (socket.AF_UNIX, kind, 0, "", addr.unix_target)


def literal_info(addr: Address, kind: socket.SocketKind) -> AddrInfo | None:
    """A resolved entry for an IP literal without calling getaddrinfo, else None."""
    family = family_of(addr.host)
    if family is None:
        return None
    if family == socket.AF_INET6:
        host, _, scope = addr.host.partition("%")
        scope_id = (
            socket.if_nametoindex(scope) if scope and not scope.isdigit() else int(scope or 0)
        )
        return (family, kind, 0, "", (host, addr.port, 0, scope_id))
    return (family, kind, 0, "", (addr.host, addr.port))


def connect_datagram(
    addr: Address, infos: Sequence[AddrInfo], opts: SocketOptions
) -> socket.socket:
    """A non-blocking UDP socket connected to the first of ``infos`` that accepts it."""
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            apply_options(sock, opts)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    if error is None:
        raise AddressError(f"{addr.hostport} resolved to no address")
    raise connect_error(error, addr, opts.connect_timeout) from error


def close_quietly(sock: socket.socket | None) -> None:
    """Close a socket, ignoring errors (cleanup paths)."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
