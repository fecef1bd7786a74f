"""UDP endpoints, blocking: ``send_to``/``recv_from`` with timeouts."""

from __future__ import annotations

import contextlib
import socket
import time

from .._sockets import (
    AddrInfo,
    bind_sockets,
    connect_datagram,
    interleave,
    literal_info,
    resolution_error,
)
from ..address import Address, from_sockaddr, parse_address
from ..errors import ConnectionClosedOK, OpenSocketError, ReadTimeout, WriteTimeout
from ..options import SocketOptions
from ._transport import READ, WRITE, wait_for

__all__ = ["DatagramEndpoint", "open_datagram_endpoint"]

MAX_DATAGRAM = 65535


def _parse(url: str | Address) -> Address:
    return parse_address(url, default_scheme="udp", schemes=frozenset({"udp"}))


class DatagramEndpoint:
    """A UDP socket. ``send_to``/``recv_from`` for any peer; ``send``/``recv`` when connected."""

    def __init__(
        self, sock: socket.socket, remote: Address | None, *, write_timeout: float | None = None
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._closed = False
        self.write_timeout = write_timeout
        self.remote_address = remote
        self.local_address = from_sockaddr("udp", sock.getsockname())
        self.datagrams_in = 0
        self.datagrams_out = 0

    def send_to(self, data: bytes, addr: tuple[str, int] | str) -> None:
        """Send one datagram to ``addr`` (a (host, port) pair or a udp:// URL)."""
        if isinstance(addr, str):
            parsed = _parse(addr)
            addr = (parsed.host, parsed.port)
        self._send(data, addr)

    def send(self, data: bytes) -> None:
        """Send one datagram to the connected peer."""
        if self.remote_address is None:
            raise OpenSocketError("this endpoint is not connected: use send_to(data, address)")
        self._send(data, None)

    def _send(self, data: bytes, addr: tuple[str, int] | None) -> None:
        if self._closed:
            raise ConnectionClosedOK(1000, "the endpoint is closed")
        if len(data) > MAX_DATAGRAM - 48:
            raise OpenSocketError(f"a datagram of {len(data)} bytes is larger than UDP allows")
        sock = self._sock
        while True:
            try:
                if addr is None:
                    sock.send(data)
                else:
                    sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                if not wait_for(sock, WRITE, self.write_timeout):
                    raise WriteTimeout("the socket send buffer stayed full") from None
                continue
            except ConnectionRefusedError:
                return  # an ICMP error from an earlier datagram: UDP is fire and forget
            self.datagrams_out += 1
            return

    def recv_from(self, timeout: float | None = None) -> tuple[bytes, tuple[str, int]]:
        """Wait for the next datagram; return it with the sender's (host, port)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sock = self._sock
        while True:
            if self._closed:
                raise ConnectionClosedOK(1000, "the endpoint is closed")
            left = None if deadline is None else deadline - time.monotonic()
            if (left is not None and left <= 0) or not wait_for(sock, READ, left):
                raise ReadTimeout(f"no datagram within {timeout:g}s")
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                continue
            except OSError as exc:
                if self._closed:
                    raise ConnectionClosedOK(1000, "the endpoint is closed") from exc
                raise
            self.datagrams_in += 1
            return data, (str(addr[0]), int(addr[1]))

    def recv(self, timeout: float | None = None) -> bytes:
        """Wait for the next datagram and return its bytes."""
        return self.recv_from(timeout)[0]

    def close(self) -> None:
        """Close the socket; a thread waiting in ``recv_from`` wakes with ConnectionClosed."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes pollers, even unconnected (Linux)
        self._sock.close()

    def __enter__(self) -> DatagramEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DatagramEndpoint {self.local_address} -> {self.remote_address or '*'}>"


def _resolve(addr: Address) -> list[AddrInfo]:
    literal = literal_info(addr, socket.SOCK_DGRAM)
    if literal is not None:
        return [literal]
    try:
        return interleave(socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_DGRAM))
    except socket.gaierror as exc:
        raise resolution_error(addr, exc) from exc


def open_datagram_endpoint(
    url: str | Address, *, bind: bool = False, options: SocketOptions | None = None
) -> DatagramEndpoint:
    """Open a UDP endpoint: bound to ``url`` (``bind=True``) or connected to it."""
    addr = _parse(url)
    opts = options or SocketOptions()
    if bind:
        sock, *extra = bind_sockets(addr, opts, kind=socket.SOCK_DGRAM)
        for other in extra:  # a name with several addresses: one endpoint uses the first
            other.close()
        return DatagramEndpoint(sock, None, write_timeout=opts.write_timeout)
    return DatagramEndpoint(
        connect_datagram(addr, _resolve(addr), opts), addr, write_timeout=opts.write_timeout
    )
