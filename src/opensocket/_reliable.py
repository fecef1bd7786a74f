"""What the asyncio and the blocking reliable-UDP runtimes share (no I/O, no threads).

Options and codec helpers, the connection's identity, inbox, event draining and close state
(``ReliableConnectionBase``), and the server's bookkeeping: admission, counters, the table of
live connections (``ReliableServerBase``). Each runtime adds how it waits, wakes and sends.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, Self, TypeVar

from .address import Address, format_sockaddr, rudp_address
from .admission import Admission
from .codecs import Codec, get_codec
from .errors import (
    CloseCode,
    ConfigError,
    ConnectionClosed,
    ConnectionClosedOK,
    ConnectionRejected,
    ConnectTimeout,
    closed_error,
)
from .options import ServerLimits, SocketOptions
from .rudp import (
    Connected,
    ConnectionTerminated,
    MessageReceived,
    RudpConnection,
    RudpOptions,
    RudpServer,
    RudpStats,
    State,
    Writable,
)
from .stats import ServerStats

__all__ = [
    "ClientSetup",
    "ReliableConnectionBase",
    "ReliableServerBase",
    "client_setup",
    "codec_of",
    "copy_stats",
    "count_dropped",
    "handshake_error",
    "peer_ip",
    "rudp_options",
    "run_core",
    "server_addresses",
]

log = logging.getLogger("opensocket.rudp")
QUIET: tuple[int, ...] = (CloseCode.NORMAL, CloseCode.GOING_AWAY)  # ends that are not failures
SHUTTING_DOWN = "server shutting down"


def rudp_options(rudp: RudpOptions | None, secret: bytes | str | None) -> RudpOptions:
    """The endpoint options: ``rudp`` (or defaults) with ``secret`` filled in."""
    opts = rudp or RudpOptions()
    if secret is None:
        return opts
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if opts.secret is not None and opts.secret != key:
        raise ConfigError("secret= and RudpOptions.secret differ: give the secret once")
    return replace(opts, secret=key)


def codec_of(codec: str | tuple[str, ...] | None) -> Codec:
    """The codec both sides agreed on out of band (rudp has no codec negotiation)."""
    if isinstance(codec, tuple):
        if len(codec) != 1:
            raise ConfigError("rudp:// does not negotiate codecs: give exactly one codec")
        codec = codec[0]
    return get_codec(codec or "bytes")


def handshake_error(event: ConnectionTerminated, where: str, timeout: float) -> Exception:
    """What a failed rudp handshake means for the caller of ``connect``."""
    if event.code == CloseCode.HANDSHAKE_TIMEOUT:
        return ConnectTimeout(
            f"no answer from {where} to the rudp handshake within {timeout:g}s: "
            "is a rudp server running there, and does the firewall pass UDP?"
        )
    if event.by_peer:
        return ConnectionRejected(event.reason, event.code)
    return closed_error(event.code, event.reason)


def copy_stats(core: RudpConnection) -> RudpStats:
    """A snapshot of a connection's counters (RTT, loss, retransmits, bytes, drops)."""
    stats = core.get_stats()
    return replace(stats, dropped=Counter(stats.dropped))


def count_dropped(core: RudpConnection | RudpServer, total: Counter[str]) -> None:
    """Add the datagrams a server endpoint and its live connections discarded to ``total``."""
    assert isinstance(core, RudpServer)
    total.update(core.stats.dropped)
    for conn in core.connections.values():
        total.update(conn.stats.dropped)


def peer_ip(addr: Any) -> str | None:
    """The IP address admission counts a peer by (None for a non-IP address)."""
    return str(addr[0]) if isinstance(addr, tuple) else None


def run_core(
    core: RudpConnection | RudpServer, now: float, on_events: Callable[[], None]
) -> list[tuple[bytes, Any]]:
    """Run the core's timer if due, report its events, and return the datagrams to send."""
    timer = core.get_timer()
    if timer is not None and timer <= now:
        core.handle_timer(now)
    on_events()
    return core.datagrams_to_send(now)


@dataclass(frozen=True, slots=True)
class ClientSetup:
    """What ``connect_rudp`` makes of its arguments."""

    addr: Address
    options: SocketOptions
    rudp: RudpOptions
    codec: Codec

    @property
    def handshake_limit(self) -> float:
        """Seconds the handshake may take: the connect timeout, capped by the rudp one."""
        ropts = self.rudp
        return min(self.options.connect_timeout or ropts.handshake_timeout, ropts.handshake_timeout)


def client_setup(
    url: str | Address,
    codec: str | tuple[str, ...] | None,
    secret: bytes | str | None,
    options: SocketOptions | None,
    rudp: RudpOptions | None,
) -> ClientSetup:
    """Check and complete the arguments of ``connect_rudp``."""
    addr = rudp_address(url)
    return ClientSetup(
        addr, options or SocketOptions(), rudp_options(rudp, secret), codec_of(codec)
    )


def server_addresses(url: str | Address | list[str | Address]) -> list[Address]:
    """The rudp:// addresses ``serve_rudp`` listens on."""
    urls = url if isinstance(url, list) else [url]
    return [rudp_address(u) for u in urls]


E = TypeVar("E")  # a runtime's endpoint: the UDP socket under the connection


class ReliableConnectionBase(Generic[E]):
    """Base of the asyncio and the blocking ``ReliableConnection``.

    A runtime sets up its waiting (``_init_waiting``), says how waiters wake (``_wake``,
    ``_connected``, ``_handshake_failed``, ``_ended``) and how output leaves (``_flush``);
    the blocking one calls in with its lock held.
    """

    def __init__(
        self,
        endpoint: E,
        core: RudpConnection,
        codec: Codec,
        *,
        local: str,
        remote: str,
        read_timeout: float | None,
        write_timeout: float | None,
        on_done: Callable[[Self], None] | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._core = core
        self.codec = codec
        self.local_address = local
        self.remote_address = remote
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self._on_done = on_done
        self._inbox: deque[tuple[int, bytes]] = deque()
        self._inbox_bytes = 0
        self._term: ConnectionTerminated | None = None
        self._stopped = False
        self._draining_all = False
        self._init_waiting()

    # ---- what a runtime provides -----------------------------------------------------------

    def _init_waiting(self) -> None:
        raise NotImplementedError

    def _wake(self, readers: bool, writers: bool) -> None:
        raise NotImplementedError

    def _connected(self) -> None:
        raise NotImplementedError

    def _handshake_failed(self, event: ConnectionTerminated) -> None:
        raise NotImplementedError

    def _ended(self) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    # ---- events from the core --------------------------------------------------------------

    def _drain_events(self) -> None:
        core = self._core
        # Messages stay in the core beyond a window of unread bytes: the core grants the peer
        # flow credit only as we take them, so a slow reader slows the sender.
        limit = core.options.receive_window
        readers = writers = False
        while self._draining_all or self._inbox_bytes <= limit:
            event = core.next_event()
            if event is None:
                break
            kind = type(event)
            if kind is MessageReceived:
                assert isinstance(event, MessageReceived)
                self._inbox.append((event.channel, event.data))
                self._inbox_bytes += len(event.data)
                readers = True
            elif kind is Writable:
                writers = True
            elif kind is Connected:
                self._connected()
            elif isinstance(event, ConnectionTerminated):
                self._terminated(event)
        if readers or writers:
            self._wake(readers, writers)

    def _drain_all(self) -> None:
        """From now on deliver everything the core has, whatever the window."""
        self._draining_all = True
        self._drain_events()

    def _handshake_error(self, event: ConnectionTerminated) -> Exception:
        return handshake_error(event, self.remote_address, self._core.options.handshake_timeout)

    def _terminated(self: Self, event: ConnectionTerminated) -> None:
        self._term = event
        self._handshake_failed(event)
        level = logging.DEBUG if event.code in QUIET else logging.INFO
        log.log(level, "[%s] closed: %s (%s)", self.remote_address, event.reason, event.code)
        self._wake(True, True)
        self._ended()
        if self._on_done is not None:
            self._on_done(self)

    def _closed_error(self) -> ConnectionClosed:
        term = self._term
        if term is not None:
            return closed_error(term.code, term.reason, by_peer=term.by_peer)
        return closed_error(self._core.close_code or CloseCode.NORMAL, self._core.close_reason)

    def _raise_if_closed(self) -> None:
        if self.closed:
            raise self._closed_error()

    def _start_close(self, code: int, reason: str) -> None:
        self._draining_all = True
        self._core.close(code, reason)

    # ---- receiving -------------------------------------------------------------------------

    def _has_message(self) -> bool:
        """True when a message is queued; raises once none can come any more."""
        if self._inbox:
            return True
        self._drain_events()
        if self._inbox:
            return True
        self._raise_if_closed()
        if self._stopped:
            raise ConnectionClosedOK(CloseCode.GOING_AWAY, SHUTTING_DOWN)
        return False

    def _take(self) -> tuple[int, bytes]:
        channel, data = self._inbox.popleft()
        self._inbox_bytes -= len(data)
        if self._core._events:
            self._drain_events()
            self._flush()  # taking messages may have opened the flow window
        return channel, data

    def _decoded(self, channel: int, data: bytes) -> tuple[int, Any]:
        decode = self.codec.decode
        return channel, (data if decode is None else self.codec.loads(data))

    # ---- state -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection has ended."""
        return self._term is not None or self._core.state is State.CLOSED

    @property
    def close_code(self) -> int | None:
        """The close code once closed."""
        return self._core.close_code if self.closed else None

    @property
    def close_reason(self) -> str:
        """The close reason once closed."""
        return self._core.close_reason if self.closed else ""

    @property
    def stats(self) -> RudpStats:
        """Counters: srtt/min_rtt, retransmits, lost, bytes, messages, dropped by reason."""
        return copy_stats(self._core)

    @property
    def channels(self) -> int:
        """How many channels this connection has."""
        return len(self._core.options.channels)

    def __repr__(self) -> str:
        state = self._core.state.value
        return f"<{type(self).__name__} {self.local_address} -> {self.remote_address} {state}>"


C = TypeVar("C", bound=ReliableConnectionBase[Any])
W = TypeVar("W")  # what runs a handler: a task or a thread


class ReliableServerBase(Generic[C, W]):
    """Base of the asyncio and the blocking ``ReliableServer``: configuration and bookkeeping.

    The blocking server calls the bookkeeping methods with its lock held.
    """

    def __init__(
        self,
        handler: Callable[[Any], Any],
        *,
        rudp: RudpOptions,
        codec: Codec,
        options: SocketOptions,
        limits: ServerLimits,
    ) -> None:
        self.handler = handler
        self.rudp = rudp
        self.codec = codec
        self.options = options
        self.limits = limits
        self.addresses: list[Address] = []
        self._admission = Admission(limits)
        self._stats = ServerStats()
        self._live: dict[C, tuple[str | None, W]] = {}
        self._closing = False

    @classmethod
    def _configured(
        cls,
        handler: Callable[[Any], Any],
        codec: str | tuple[str, ...] | None,
        secret: bytes | str | None,
        options: SocketOptions | None,
        limits: ServerLimits | None,
        rudp: RudpOptions | None,
    ) -> Self:
        """The server ``serve_rudp`` makes of its arguments (not yet listening)."""
        return cls(
            handler,
            rudp=rudp_options(rudp, secret),
            codec=codec_of(codec),
            options=options or SocketOptions(),
            limits=limits or ServerLimits(),
        )

    def _new_core(self, now: float) -> RudpServer:
        """The sans-IO server for one more bound socket."""
        return RudpServer(self.rudp, now=now, max_connections=self.limits.max_connections)

    def _admit(self, conn: RudpConnection, ip: str | None, now: float) -> bool:
        """Admission of an accepted connection: False (the connection closing) when refused."""
        if self._closing:
            conn.close(CloseCode.GOING_AWAY, SHUTTING_DOWN)
            return False
        refusal = self._admission.admit(ip, now)
        if refusal is not None:
            conn.close(refusal.code, refusal.reason)
            self._stats.dropped[CloseCode.describe(refusal.code)] += 1
            log.info("[%s] refused: %s", format_sockaddr(conn.addr), refusal.reason)
            return False
        self._stats.accepted += 1
        return True

    def _forget(self, conn: C) -> None:
        """A connection ended: free its admission slot and add its counters."""
        ip, _worker = self._live.pop(conn, (None, None))
        self._admission.release(ip)
        stats = conn._core.stats
        self._stats.bytes_in += stats.bytes_received
        self._stats.bytes_out += stats.bytes_sent
        self._stats.messages_in += stats.messages_received
        self._stats.messages_out += stats.messages_sent
        term = conn._term
        if term is not None and term.code not in QUIET:
            self._stats.dropped[CloseCode.describe(term.code)] += 1

    def _log_listening(self) -> None:
        log.info("rudp listening on %s", ", ".join(map(str, self.addresses)))

    def _log_closed(self) -> None:
        log.info("rudp server on %s closed", ", ".join(map(str, self.addresses)))

    @property
    def url(self) -> str:
        """The first bound address as a URL (handy with port 0)."""
        return str(self.addresses[0])

    @property
    def stats(self) -> ServerStats:
        """Counters: accepted, active, bytes/messages in and out, closes by reason."""
        snap = replace(self._stats, dropped=self._stats.dropped.copy())
        snap.active = len(self._live)
        return snap

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {', '.join(map(str, self.addresses))}>"
