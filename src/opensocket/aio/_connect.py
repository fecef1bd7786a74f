"""Opening connected sockets with asyncio: resolution, happy eyeballs, timeouts, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

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

__all__ = ["open_socket", "open_transport"]


async def _resolve(addr: Address, kind: socket.SocketKind) -> list[AddrInfo]:
    if addr.is_unix:
        return [unix_info(addr, kind)]
    literal = literal_info(addr, kind)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(addr.host, addr.port, type=kind)
    except socket.gaierror as exc:
        raise resolution_error(addr, exc) from exc
    return interleave(infos)


async def _attempt(info: AddrInfo, opts: SocketOptions) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = new_connect_socket(info, opts)
    try:
        await loop.sock_connect(sock, info[4])
    except BaseException:
        sock.close()
        raise
    return sock


async def _happy_eyeballs(infos: list[AddrInfo], opts: SocketOptions) -> socket.socket:
    """Start an attempt per address, staggered by 250 ms; the first to connect wins."""
    if len(infos) == 1:  # nothing to race (IP literals, Unix paths): no tasks to pay for
        return await _attempt(infos[0], opts)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[socket.socket]] = set()
    errors: list[BaseException] = []
    remaining = list(infos)
    try:
        while remaining or pending:
            if remaining:
                pending.add(loop.create_task(_attempt(remaining.pop(0), opts)))
            delay = HAPPY_EYEBALLS_DELAY if remaining else None
            done, pending = await asyncio.wait(
                pending, timeout=delay, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                exc = task.exception()
                if exc is None:
                    return task.result()
                errors.append(exc)
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                close_quietly(await task)
    raise errors[-1] if errors else ConnectError("no address to connect to")


async def open_socket(
    addr: Address, opts: SocketOptions, kind: socket.SocketKind = socket.SOCK_STREAM
) -> socket.socket:
    """Resolve and connect ``addr`` within ``opts.connect_timeout``; translate failures."""
    try:
        async with asyncio.timeout(opts.connect_timeout):
            infos = await _resolve(addr, kind)
            return await _happy_eyeballs(infos, opts)
    except OpenSocketError:
        raise
    except (OSError, TimeoutError) as exc:
        raise connect_error(exc, addr, opts.connect_timeout) from exc


async def open_transport(
    addr: Address,
    factory: Callable[[], asyncio.BaseProtocol],
    opts: SocketOptions,
    tls: TLSOptions | ssl.SSLContext | None,
) -> tuple[asyncio.Transport, Any]:
    """Connect and wrap in a transport (with TLS for tls:// or when ``tls`` is given)."""
    use_tls = addr.is_tls or tls is not None
    # Build the context first: a bad CA or certificate file is our error, found before the
    # peer ever sees a connection.
    ctx = tlsmod.client_context(tls) if use_tls else None
    sock = await open_socket(addr, opts)
    loop = asyncio.get_running_loop()
    try:
        if ctx is None:
            transport, proto = await loop.create_connection(factory, sock=sock)
            return transport, proto
        timeout = tls.handshake_timeout if isinstance(tls, TLSOptions) else 10.0
        transport, proto = await loop.create_connection(
            factory,
            sock=sock,
            ssl=ctx,
            server_hostname=tlsmod.server_hostname(addr, tls),
            ssl_handshake_timeout=timeout,
        )
        return transport, proto
    except OpenSocketError:
        close_quietly(sock)
        raise
    except (ssl.SSLError, ConnectionError, EOFError, TimeoutError) as exc:
        close_quietly(sock)
        if isinstance(exc, TimeoutError):
            raise TLSHandshakeError(
                f"the TLS handshake with {addr.hostport} timed out: does it speak TLS?"
            ) from exc
        raise tlsmod.tls_error(exc, addr.hostport) from exc
