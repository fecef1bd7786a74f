"""UDP endpoints for asyncio: ``send_to``/``recv_from``, bounded receive queue."""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from typing import Any

from .._sockets import (
    AddrInfo,
    bind_sockets,
    connect_datagram,
    interleave,
    literal_info,
    resolution_error,
)
from ..address import Address, family_of, from_sockaddr
from ..errors import AddressError, ConnectionClosedOK, OpenSocketError, ReadTimeout
from ..options import SocketOptions

__all__ = ["DatagramEndpoint", "open_datagram_endpoint"]

log = logging.getLogger("opensocket.udp")
MAX_DATAGRAM = 65535


class _Queue(asyncio.DatagramProtocol):
    def __init__(self, limit: int) -> None:
        self.items: collections.deque[tuple[bytes, Any]] = collections.deque()
        self.limit = limit
        self.dropped = 0
        self.errors = 0
        self.refused = 0  # ICMP port unreachable for what we sent (connected endpoints)
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(self.items) >= self.limit:
            self.items.popleft()
            self.dropped += 1
            if self.dropped in (1, 10, 100, 1000) or self.dropped % 10000 == 0:
                log.warning(
                    "receive queue full (%d): %d datagrams dropped", self.limit, self.dropped
                )
        self.items.append((data, addr))
        self._wake()

    def error_received(self, exc: Exception) -> None:
        self.errors += 1
        if isinstance(exc, ConnectionRefusedError):
            self.refused += 1
        log.debug("datagram error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class DatagramEndpoint:
    """A UDP socket. ``send_to``/``recv_from`` for any peer; ``send``/``recv`` when connected."""

    def __init__(self, transport: asyncio.DatagramTransport, queue: _Queue, remote: Address | None):
        self._transport = transport
        self._queue = queue
        self.remote_address = remote
        sockname = transport.get_extra_info("sockname")
        self.local_address = from_sockaddr("udp", sockname)
        self.datagrams_in = 0
        self.datagrams_out = 0

    @property
    def dropped(self) -> int:
        """Datagrams discarded because the receive queue was full."""
        return self._queue.dropped

    @property
    def refused(self) -> int:
        """ "Port unreachable" answers to what this connected endpoint sent: nothing listens
        there (UDP stays fire and forget: sends and receives go on)."""
        return self._queue.refused

    async def send_to(self, data: bytes, addr: tuple[str, int] | str) -> None:
        """Send one datagram to ``addr`` (a (host, port) pair or a udp:// URL).

        A host name is resolved first (without blocking the loop); IP addresses are fastest.
        """
        if isinstance(addr, str):
            parsed = _parse(addr)
            addr = (parsed.host, parsed.port)
        self._check(len(data))
        self._transport.sendto(data, await self._target(addr[0], addr[1]))
        self.datagrams_out += 1

    async def _target(self, host: str, port: int) -> tuple[str, int]:
        """A numeric address of this socket's family (transports do not resolve names)."""
        family = self._transport.get_extra_info("socket").family
        host_family = family_of(host)
        if host_family is None:
            host, host_family = await _resolve(host, port, family)
        if host_family == family:
            return host, port
        if family == socket.AF_INET6:
            return f"::ffff:{host}", port  # IPv4 through a dual-stack socket
        raise AddressError(
            f"cannot send to IPv6 address {host} from an IPv4 endpoint: bind an IPv6 or "
            "dual-stack (udp://*:0) endpoint"
        )

    async def send(self, data: bytes) -> None:
        """Send one datagram to the connected peer."""
        if self.remote_address is None:
            raise OpenSocketError("this endpoint is not connected: use send_to(data, address)")
        self._check(len(data))
        self._transport.sendto(data)
        self.datagrams_out += 1

    def _check(self, size: int) -> None:
        if self._transport.is_closing():
            raise ConnectionClosedOK(1000, "the endpoint is closed")
        if size > MAX_DATAGRAM - 48:
            raise OpenSocketError(f"a datagram of {size} bytes is larger than UDP allows")

    async def recv_from(self, timeout: float | None = None) -> tuple[bytes, tuple[str, int]]:
        """Wait for the next datagram; return it with the sender's (host, port)."""
        queue = self._queue
        while not queue.items:
            if queue.closed:
                raise ConnectionClosedOK(1000, "the endpoint is closed")
            queue.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await queue.waiter
            except TimeoutError:
                raise ReadTimeout(f"no datagram within {timeout:g}s") from None
            finally:
                queue.waiter = None
        data, addr = queue.items.popleft()
        self.datagrams_in += 1
        return data, (str(addr[0]), int(addr[1]))

    async def recv(self, timeout: float | None = None) -> bytes:
        """Wait for the next datagram and return its bytes."""
        return (await self.recv_from(timeout))[0]

    def close(self) -> None:
        """Close the socket."""
        self._transport.close()

    async def __aenter__(self) -> DatagramEndpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def _resolve(host: str, port: int, family: int) -> tuple[str, socket.AddressFamily]:
    """Resolve a host name for sending, preferring the socket's own family."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise resolution_error(Address("udp", host, port), exc) from exc
    best = next((i for i in infos if i[0] == family), infos[0])
    return str(best[4][0]), best[0]


def _parse(url: str) -> Address:
    from ..address import parse_address

    return parse_address(url, default_scheme="udp", schemes=frozenset({"udp"}))


async def _infos(addr: Address, *, passive: bool) -> list[AddrInfo]:
    """Resolve a UDP address without blocking the loop (IP literals need no lookup)."""
    literal = literal_info(addr, socket.SOCK_DGRAM)
    if literal is not None:
        return [literal]
    flags = socket.AI_PASSIVE if passive else 0
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_DGRAM, flags=flags)
    except socket.gaierror as exc:
        raise resolution_error(addr, exc) from exc
    return interleave(infos)


async def _bound_socket(addr: Address, opts: SocketOptions) -> socket.socket:
    if addr.is_wildcard:
        (sock,) = bind_sockets(addr, opts, kind=socket.SOCK_DGRAM)
        return sock
    infos = await _infos(addr, passive=True)
    # One endpoint is one socket: bind the first address (the one clients try first).
    first = Address("udp", str(infos[0][4][0]), addr.port)
    others = sorted({str(info[4][0]) for info in infos} - {first.host})
    if others:
        log.info(
            "%s also resolves to %s: this endpoint listens on %s only (use udp://*:PORT "
            "for every address)",
            addr.host,
            ", ".join(others),
            first.hostport,
        )
    (sock,) = bind_sockets(first, opts, kind=socket.SOCK_DGRAM)
    return sock


async def open_datagram_endpoint(
    url: str | Address,
    *,
    bind: bool = False,
    options: SocketOptions | None = None,
    queue_limit: int = 4096,
) -> DatagramEndpoint:
    """Open a UDP endpoint: bound to ``url`` (``bind=True``) or connected to it."""
    addr = _parse(url) if isinstance(url, str) else url
    opts = options or SocketOptions()
    loop = asyncio.get_running_loop()
    if bind:
        sock = await _bound_socket(addr, opts)
        remote = None
    else:
        sock = connect_datagram(addr, await _infos(addr, passive=False), opts)
        remote = addr
    queue = _Queue(queue_limit)
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: queue, sock=sock)
    except BaseException:
        sock.close()
        raise
    return DatagramEndpoint(transport, queue, remote)
