"""Opening connected sockets, blocking: resolution, happy eyeballs, timeouts, TLS."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import ssl
import time

from .. import tls as tlsmod
from .._sockets import (
    HAPPY_EYEBALLS_DELAY,
    AddrInfo,
    close_quietly,
    connect_error,
    interleave,
    literal_info,
    new_connect_socket,
    resolution_error,
    unix_info,
)
from ..address import Address
from ..errors import ConnectError, OpenSocketError, TLSHandshakeError
from ..options import SocketOptions, TLSOptions
from ._transport import Transport, tls_handshake

__all__ = ["open_socket", "open_transport"]

_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY})


def _resolve(addr: Address, kind: socket.SocketKind) -> list[AddrInfo]:
    if addr.is_unix:
        return [unix_info(addr, kind)]
    literal = literal_info(addr, kind)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=kind)
    except socket.gaierror as exc:
        raise resolution_error(addr, exc) from exc
    return interleave(infos)


class _Race:
    """Connect attempts in flight, watched by one selector."""

    def __init__(self, opts: SocketOptions) -> None:
        self.opts = opts
        self.selector = selectors.DefaultSelector()
        self.errors: list[OSError] = []

    def start(self, info: AddrInfo) -> socket.socket | None:
        """Begin one attempt; return the socket if it connected at once."""
        sock = new_connect_socket(info, self.opts)
        code = sock.connect_ex(info[4])
        if code == 0:
            return sock
        if code in _IN_PROGRESS:
            self.selector.register(sock, selectors.EVENT_WRITE)
        else:
            sock.close()
            self.errors.append(OSError(code, os.strerror(code)))
        return None

    def wait(self, timeout: float | None) -> socket.socket | None:
        """Wait for attempts to finish; return the first that connected."""
        for key, _ in self.selector.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            self.selector.unregister(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                return sock
            sock.close()
            self.errors.append(OSError(code, os.strerror(code)))
        return None

    @property
    def pending(self) -> int:
        """Attempts still in flight."""
        return len(self.selector.get_map())

    def close(self, keep: socket.socket | None) -> None:
        """Abandon every attempt but the winner."""
        for key in list(self.selector.get_map().values()):
            if key.fileobj is not keep:
                close_quietly(key.fileobj)  # type: ignore[arg-type]
        self.selector.close()


def _happy_eyeballs(
    infos: list[AddrInfo], opts: SocketOptions, deadline: float | None
) -> socket.socket:
    """Start an attempt per address, staggered by 250 ms; the first to connect wins."""
    race = _Race(opts)
    remaining = list(infos)
    winner: socket.socket | None = None
    try:
        next_start = time.monotonic()
        while winner is None and (remaining or race.pending):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError("connect timed out")
            failed = len(race.errors)
            if remaining and (now >= next_start or not race.pending):
                winner = race.start(remaining.pop(0))
            else:
                until = [t for t in (deadline, next_start if remaining else None) if t is not None]
                winner = race.wait(max(min(until) - now, 0.0) if until else None)
            # RFC 8305: a failed attempt starts the next one at once, else wait the delay.
            if len(race.errors) > failed:
                next_start = now
            elif remaining and now >= next_start:
                next_start = now + HAPPY_EYEBALLS_DELAY
    finally:
        race.close(winner)
    if winner is None:
        if race.errors:
            raise race.errors[-1]
        raise ConnectError("no address to connect to")
    return winner


def open_socket(
    addr: Address, opts: SocketOptions, kind: socket.SocketKind = socket.SOCK_STREAM
) -> socket.socket:
    """Resolve and connect ``addr`` within ``opts.connect_timeout``; translate failures."""
    timeout = opts.connect_timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        return _happy_eyeballs(_resolve(addr, kind), opts, deadline)
    except OpenSocketError:
        raise
    except (OSError, TimeoutError) as exc:
        raise connect_error(exc, addr, timeout) from exc


def open_transport(
    addr: Address, opts: SocketOptions, tls: TLSOptions | ssl.SSLContext | None
) -> Transport:
    """Connect, with TLS for tls:// or when ``tls`` is given (handshake bounded in time)."""
    # The context first: a bad CA or certificate file is found before we connect.
    ctx = tlsmod.client_context(tls) if addr.is_tls or tls is not None else None
    sock = open_socket(addr, opts)
    if ctx is None:
        return Transport(sock)
    try:
        timeout = tls.handshake_timeout if isinstance(tls, TLSOptions) else 10.0
        return tls_handshake(
            sock,
            ctx,
            server_side=False,
            server_hostname=tlsmod.server_hostname(addr, tls),
            timeout=timeout,
        )
    except OpenSocketError:
        close_quietly(sock)
        raise
    except TimeoutError as exc:
        close_quietly(sock)
        raise TLSHandshakeError(
            f"the TLS handshake with {addr.hostport} timed out: does it speak TLS?"
        ) from exc
    except (ssl.SSLError, OSError, EOFError) as exc:
        close_quietly(sock)
        raise tlsmod.tls_error(exc, addr.hostport) from exc
