"""Accepting a socket before TLS: admission runs on the plain socket, then TLS starts.

Both asyncio servers (framed and HTTP) listen with ``Acceptor``, decide on the plain accepted
transport, and only for an admitted client ``detach_socket`` it and hand it to
``loop.connect_accepted_socket(ssl=...)``: a refused client costs no TLS handshake. ``Early``
keeps what the TLS layer delivers before the real protocol takes over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import cast

from ..address import peer_text
from ..admission import Admission, Refusal
from ..errors import CloseCode
from ..stats import ServerStats

__all__ = ["Acceptor", "Early", "detach_socket"]


log = logging.getLogger("opensocket.server")


class Acceptor(asyncio.Protocol):
    """First protocol of every accepted socket: hands the transport to ``accepted``, which
    replaces this protocol (admission, then TLS or the real protocol) before any data."""

    def __init__(self, accepted: Callable[[asyncio.Transport], None]) -> None:
        self.accepted = accepted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.accepted(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:  # pragma: no cover - replaced before data
        pass


class Early(asyncio.Protocol):
    """Protocol of a TLS transport until the real one takes over.

    A TLS 1.3 client's first data rides with its Finished message, so the TLS layer hands it
    over before ``connect_accepted_socket`` returns: keep it, then replay it.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def replay(self, proto: asyncio.BaseProtocol) -> None:
        """Hand what arrived early to the protocol that replaced this one."""
        data, self.data = self.data, bytearray()
        if data and isinstance(proto, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(proto.get_buffer(len(view)))
                size = min(len(buf), len(view))
                buf[:size] = view[:size]
                proto.buffer_updated(size)
                view = view[size:]
        elif data and isinstance(proto, asyncio.Protocol):
            proto.data_received(bytes(data))
        if self.eof and isinstance(proto, asyncio.Protocol | asyncio.BufferedProtocol):
            proto.eof_received()  # the TLS layer closes the transport after EOF anyway


def detach_socket(transport: asyncio.Transport) -> socket.socket:
    """Take the connected socket from ``transport`` (called in connection_made, before any
    read): the duplicate keeps the connection open when the transport closes its own."""
    sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
    sock.setblocking(False)
    transport.abort()
    return sock


def screen(
    transport: asyncio.BaseTransport, admission: Admission, stats: ServerStats, *, closing: bool
) -> tuple[str, str | None, Refusal | None]:
    """Admission for a freshly accepted socket: count it, and count and log a refusal.

    Returns the peer text, its IP, and the Refusal (None when admitted).
    """
    peer, ip = peer_text(transport.get_extra_info("peername"))
    stats.accepted += 1
    if closing:
        refusal: Refusal | None = Refusal(CloseCode.GOING_AWAY, "server is shutting down")
    else:
        refusal = admission.admit(ip, asyncio.get_running_loop().time())
    if refusal is not None:
        stats.dropped[CloseCode.describe(refusal.code)] += 1
        log.warning("[%s] refused: %s", peer, refusal.reason)
    return peer, ip, refusal
