"""The server side: one endpoint per UDP socket, demultiplexing datagrams by connection id.

Before a client has proven its address the server keeps nothing about it: an INITIAL without
a valid cookie is answered by a RETRY carrying one (an HMAC over the client's address, port,
connection id and nonce, and a timestamp, under a rotating server secret). Every such reply is
smaller than the INITIAL it answers, which clients pad to at least MIN_INITIAL bytes, so the
server never sends more than it received from an unvalidated address (anti-amplification).
"""

from __future__ import annotations

import os
from collections import Counter, deque
from dataclasses import dataclass, field

from ..errors import CloseCode
from . import crypto
from .connection import Address, RudpConnection, State
from .events import ConnectionAccepted, Event
from .options import RudpOptions
from .wire import (
    HEADER,
    HEADER_SIZE,
    INITIAL_HEAD,
    MAC_SIZE,
    MAGIC,
    MIN_INITIAL,
    PARAM_SECURE,
    REJECT_HEAD,
    VERSION,
    Header,
    Malformed,
    PacketType,
    decode_params,
    parse_header,
)

__all__ = ["RudpServer", "ServerStats"]


@dataclass(slots=True)
class ServerStats:
    """Counters of a server endpoint; ``dropped`` counts discarded datagrams by reason."""

    datagrams_received: int = 0
    bytes_received: int = 0
    retries_sent: int = 0
    rejects_sent: int = 0
    accepted: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class RudpServer:
    """A sans-IO reliable-UDP server endpoint (one per bound socket)."""

    def __init__(
        self, options: RudpOptions | None = None, *, now: float, max_connections: int = 10_000
    ) -> None:
        self.options = options or RudpOptions()
        self.max_connections = max_connections
        self.connections: dict[int, RudpConnection] = {}
        self.stats = ServerStats()
        self._by_client: dict[tuple[Address, int], RudpConnection] = {}
        self._cookies = crypto.CookieJar(self.options.cookie_lifetime, now)
        self._hs_key = crypto.handshake_key(self.options.secret) if self.options.secret else b""
        self._kinds = bytes(self.options.channels)
        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()

    def receive_datagram(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        """Route one datagram to its connection or the handshake; never raises for bad input."""
        stats = self.stats
        stats.datagrams_received += 1
        stats.bytes_received += len(data)
        view = memoryview(data)
        try:
            header = parse_header(view)
            if header.type == PacketType.DATA:
                conn = self.connections.get(header.dcid)
                if conn is None:
                    raise Malformed("unknown connection id")
                conn.receive_datagram(view, addr, now)
            elif header.type == PacketType.INITIAL:
                self._on_initial(view, header, addr, now)
            else:
                raise Malformed("unexpected packet type")
        except Malformed as exc:
            stats.dropped[str(exc)] += 1

    def _on_initial(self, data: memoryview, header: Header, addr: Address, now: float) -> None:
        if len(data) < MIN_INITIAL:
            raise Malformed("initial too small")
        body = crypto.open_crc(data)
        ccid, nonce = INITIAL_HEAD.unpack_from(body, HEADER_SIZE)
        flags, _max_dgram, window, kinds, pos = decode_params(body, HEADER_SIZE + INITIAL_HEAD.size)
        if len(body) < pos + 1 + body[pos] or ccid == 0:
            raise Malformed("initial")
        token = bytes(body[pos + 1 : pos + 1 + body[pos]])
        end = pos + 1 + len(token)
        if self.options.secret is not None:
            if not flags & PARAM_SECURE:
                self._reject(ccid, addr, CloseCode.AUTH_REQUIRED, "a shared secret is required")
                return
            if bytes(body[end : end + MAC_SIZE]) != crypto.mac(self._hs_key, body[:end]):
                raise Malformed("handshake authentication")
        elif flags & PARAM_SECURE:
            self._reject(ccid, addr, CloseCode.NEGOTIATION_FAILED, "this server has no secret")
            return
        if kinds != self._kinds:
            self._reject(ccid, addr, CloseCode.NEGOTIATION_FAILED, "channel kinds differ")
            return
        if not token or not self._cookies.check(token, addr, ccid, nonce, now):
            if token:
                self.stats.dropped["bad cookie"] += 1
            self._retry(ccid, nonce, addr, now)
            return
        self._validated(addr, ccid, nonce, window, now)

    def _validated(self, addr: Address, ccid: int, nonce: bytes, window: int, now: float) -> None:
        existing = self._by_client.get((addr, ccid))
        if existing is not None and existing.peer_nonce == nonce:
            if existing.state is not State.CLOSED:
                existing.send_accept()  # our ACCEPT was lost: the client asked again
            return
        if len(self.connections) >= self.max_connections:
            self._reject(ccid, addr, CloseCode.CONNECTION_LIMIT, "the server is full")
            return
        cid = self._new_cid()
        conn = RudpConnection.accepted(self.options, addr, cid, ccid, nonce, window, now)
        self.connections[cid] = conn
        self._by_client[(addr, ccid)] = conn
        self.stats.accepted += 1
        self._events.append(ConnectionAccepted(conn))

    def _new_cid(self) -> int:
        while True:
            cid = int.from_bytes(os.urandom(4))
            if cid and cid not in self.connections:
                return cid

    def _retry(self, ccid: int, nonce: bytes, addr: Address, now: float) -> None:
        token = self._cookies.make(addr, ccid, nonce, now)
        packet = bytearray(HEADER.pack(MAGIC, VERSION, PacketType.RETRY, ccid, 0))
        packet.append(len(token))
        packet += token
        self._out.append((crypto.seal_crc(packet), addr))
        self.stats.retries_sent += 1

    def _reject(self, ccid: int, addr: Address, code: int, reason: str) -> None:
        text = reason.encode()
        packet = bytearray(HEADER.pack(MAGIC, VERSION, PacketType.REJECT, ccid, 0))
        packet += REJECT_HEAD.pack(code, len(text)) + text
        self._out.append((crypto.seal_crc(packet), addr))
        self.stats.rejects_sent += 1

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Stateless replies and every connection's datagrams."""
        out, self._out = self._out, []
        for conn in self.connections.values():
            out.extend(conn.datagrams_to_send(now))
        self._reap()
        return out

    def get_timer(self) -> float | None:
        """The earliest timer of any connection."""
        timers = [t for c in self.connections.values() if (t := c.get_timer()) is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        """Run the timers that are due."""
        for conn in list(self.connections.values()):
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now)
        self._reap()

    def next_event(self) -> Event | None:
        """The next server event (ConnectionAccepted), or None."""
        return self._events.popleft() if self._events else None

    def _reap(self) -> None:
        closed = [cid for cid, c in self.connections.items() if c.state is State.CLOSED]
        for cid in closed:
            conn = self.connections.pop(cid)
            self._by_client.pop((conn.addr, conn.peer_cid), None)
