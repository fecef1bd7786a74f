"""One reliable-UDP connection, sans I/O (the aioquic shape).

Datagrams come in through ``receive_datagram(data, addr, now)``; what to send comes out of
``datagrams_to_send(now)``; ``get_timer()`` says when ``handle_timer(now)`` is due; happenings
come out of ``next_event()``. Time only ever arrives as ``now``.

States (the same for both roles; a server connection is born OPEN, after the cookie)::

    HANDSHAKE  client: INITIAL sent (again with the cookie from RETRY), awaiting ACCEPT
    OPEN       messages flow both ways
    CLOSING    close() called: queued data is delivered and acked, then CLOSE is sent
               until acked (or close_timeout passes)
    DRAINING   the peer's CLOSE arrived: acks its retransmissions for 3 RTOs, sends nothing
    CLOSED     terminal; ConnectionTerminated was reported once

Malformed, forged, replayed or unauthenticated datagrams are dropped and counted in
``stats.dropped``; nothing a peer sends makes ``receive_datagram`` raise.
"""

from __future__ import annotations

import os
from collections import deque
from enum import Enum
from typing import Final

from ..errors import CloseCode, ConfigError, FrameTooLarge, SendBufferFull, closed_error
from . import crypto
from .channels import RecvChannel, fragment
from .congestion import Pacer, make_controller
from .events import Connected, ConnectionTerminated, Event, MessageReceived, RudpStats, Writable
from .options import ChannelKind, RudpOptions
from .recovery import LossRecovery, ReceivedRanges, RttEstimator, SentPacket
from .redundancy import Copies, Copy
from .wire import (
    ACCEPT_HEAD,
    CLOSE_HEAD,
    CRC_SIZE,
    FLOW_FRAME,
    FRAG,
    HEADER,
    HEADER_SIZE,
    INITIAL_HEAD,
    MAC_SIZE,
    MAGIC,
    MIN_INITIAL,
    MSG_FRAG,
    MSG_HEAD,
    NONCE_SIZE,
    PARAM_SECURE,
    PN_LIMIT,
    REJECT_HEAD,
    VERSION,
    Fragment,
    FrameType,
    Header,
    Malformed,
    PacketType,
    decode_ack,
    decode_params,
    encode_ack,
    encode_close,
    encode_params,
    parse_header,
)

__all__ = ["RudpConnection", "SendBufferFull", "State"]

Address = object
ACK_EVERY: Final = 2  # ack-eliciting packets received before an immediate ACK
ACK_RESERVE: Final = 24  # room kept for an ACK frame (two ranges) when fragments are sized
MAX_RETRIES: Final = 8  # RETRY packets a client follows before giving up on the server
MAX_INITIAL_WAIT: Final = 1.0
PACING_BURST: Final = 10  # datagrams the pacer lets out back to back
MIN_LINGER: Final = 3.0  # seconds a closing or draining side keeps answering CLOSE frames
_CLOSE_ITEM: Final = "close"
_FLOW_ITEM: Final = "flow"


class State(Enum):
    """Connection states (see the module docstring)."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"
    DRAINING = "draining"
    CLOSED = "closed"


class RudpConnection:
    """A reliable-UDP connection; build one with ``connect`` (client) or via RudpServer."""

    def __init__(self, options: RudpOptions, addr: Address, local_cid: int, now: float) -> None:
        self.options = opts = options
        self.addr = addr
        self.local_cid = local_cid
        self.peer_cid = 0
        self.state = State.HANDSHAKE
        self.is_client = True
        self.stats = RudpStats()
        self.close_code: int | None = None
        self.close_reason = ""
        self.nonce = os.urandom(NONCE_SIZE)
        self.peer_nonce = b""
        self._protection: crypto.Protection = crypto.PlainProtection()
        self._events: deque[Event] = deque()
        self._out: list[tuple[bytes, Address]] = []
        self._next_pn = 0
        self._received = ReceivedRanges()
        self._ack_pending = 0
        self._ack_deadline: float | None = None
        self._ack_now = False
        self._largest_time = now
        self._mss = opts.max_datagram
        self.rtt = RttEstimator(opts.initial_rtt, opts.min_rto, opts.max_rto)
        self.cc = make_controller(opts.congestion, opts.max_datagram)
        self.recovery = LossRecovery(self.rtt, self.cc, self._on_lost, self._on_acked)
        self._pacer = Pacer(PACING_BURST * opts.max_datagram)
        self._pace_wait: float | None = None
        self._setup_channels(opts)
        self._last_received = now
        self._last_sent = now
        self._deadline: float | None = now + opts.handshake_timeout
        self._ping = False
        self._close_pending = False
        self._close_sent = False
        self._closing_reported = False
        # handshake (client)
        self._token = b""
        self._retries = 0
        self._initial_due: float | None = now
        self._initial_count = 0
        self._initial_backoff = 0

    def _setup_channels(self, opts: RudpOptions) -> None:
        kinds = opts.channels
        self._kinds = bytes(kinds)
        self._reliable = [k is not ChannelKind.UNRELIABLE_SEQUENCED for k in kinds]
        self._recv = [RecvChannel(k, opts.max_message) for k in kinds]
        self._queues: list[deque[Fragment]] = [deque() for _ in kinds]
        self._next_seq = [0] * len(kinds)
        self._retx: deque[Fragment] = deque()
        self._copies = Copies(opts.redundancy) if opts.redundancy else None
        self._rr = 0
        self._queued = 0  # bytes sent-but-unacked (reliable) or unsent (unreliable)
        self._blocked = False
        self._unread = 0  # bytes of MessageReceived events not yet taken
        # flow control, in reliable fragment bytes
        self._data_sent = 0
        self._peer_max_data = opts.receive_window  # until the peer's parameters arrive
        self._data_received = 0
        self._consumed = 0
        self._advertised = opts.receive_window
        self._flow_pending = False
        overhead = crypto.AeadProtection.overhead if opts.secret else crypto.Protection.overhead
        room = opts.max_datagram - HEADER_SIZE - overhead - ACK_RESERVE
        self._single = room - MSG_HEAD.size
        self._chunk = room - MSG_FRAG.size

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def connect(
        cls, addr: Address, options: RudpOptions | None = None, *, now: float
    ) -> RudpConnection:
        """A client connection to ``addr``; its first ``datagrams_to_send`` holds the INITIAL."""
        return cls(options or RudpOptions(), addr, _random_cid(), now)

    @classmethod
    def accepted(
        cls,
        options: RudpOptions,
        addr: Address,
        local_cid: int,
        peer_cid: int,
        peer_nonce: bytes,
        peer_window: int,
        now: float,
    ) -> RudpConnection:
        """A server connection for a client whose cookie was valid (used by RudpServer)."""
        conn = cls(options, addr, local_cid, now)
        conn.is_client = False
        conn.peer_cid = peer_cid
        conn.peer_nonce = peer_nonce
        conn._peer_max_data = peer_window
        conn._initial_due = None
        conn._deadline = None
        if options.secret is not None:
            conn._protection = crypto.derive_keys(
                options.secret, peer_nonce, conn.nonce, peer_cid, local_cid, client=False
            )
        conn._open(now)
        conn.send_accept()
        return conn

    def _open(self, now: float) -> None:
        self.state = State.OPEN
        self._deadline = None
        self._last_received = self._last_sent = now
        secure = self.options.secret is not None
        self._events.append(Connected(self.local_cid, self.peer_cid, secure))

    # ---- application API -------------------------------------------------------------------

    def send(self, channel: int, data: bytes | bytearray | memoryview) -> None:
        """Queue one message on ``channel`` (raises when closed, too large or buffer full)."""
        if self.state not in (State.HANDSHAKE, State.OPEN):
            raise closed_error(self.close_code or CloseCode.NORMAL, self.close_reason)
        if not 0 <= channel < len(self._queues):
            raise ConfigError(f"no channel {channel}: channels are 0..{len(self._queues) - 1}")
        size = len(data)
        if size > self.options.max_message:
            raise FrameTooLarge(
                f"a {size}-byte message is larger than max_message ({self.options.max_message})"
            )
        if self._queued + size > self.options.send_buffer and self._queued:
            self._blocked = True
            raise SendBufferFull(
                f"the send buffer holds {self._queued} bytes (limit {self.options.send_buffer}):"
                " wait for a Writable event"
            )
        seq = self._next_seq[channel]
        self._next_seq[channel] = seq + 1
        payload = bytes(data)
        self._queues[channel].extend(fragment(channel, seq, payload, self._chunk, self._single))
        self._queued += size
        self.stats.messages_sent += 1

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close gracefully: deliver what is queued, then exchange CLOSE (bounded in time)."""
        if self.state is State.HANDSHAKE:
            self.close_code, self.close_reason = code, reason
            self._terminate(code, reason, by_peer=False)
        elif self.state is State.OPEN:
            self.close_code, self.close_reason = code, reason
            self.state = State.CLOSING
            self._deadline = None  # set from the next ``now`` seen

    def next_event(self) -> Event | None:
        """The next event, or None."""
        if not self._events:
            return None
        event = self._events.popleft()
        if type(event) is MessageReceived:
            size = len(event.data)
            self._unread -= size
            if self._reliable[event.channel]:
                self._consumed += size
                window = self.options.receive_window
                if self._consumed + window - self._advertised >= window // 4:
                    self._flow_pending = True
        return event

    @property
    def send_buffered(self) -> int:
        """Bytes queued and not yet acknowledged (reliable) or sent (unreliable)."""
        return self._queued

    def get_stats(self) -> RudpStats:
        """The counters, with RTT and window figures filled in now."""
        stats = self.stats
        stats.srtt, stats.rttvar, stats.rto = self.rtt.srtt, self.rtt.rttvar, self.recovery.rto
        stats.min_rtt = self.rtt.min_rtt if self.rtt.sampled else None
        stats.cwnd = self.cc.cwnd
        stats.bytes_in_flight = self.recovery.bytes_in_flight
        stats.lost = self.recovery.lost_packets
        stats.loss_episodes = getattr(self.cc, "loss_episodes", 0)
        return stats

    # ---- input -----------------------------------------------------------------------------

    def receive_datagram(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        """Process one datagram from ``addr``; bad ones are dropped and counted, never raised."""
        try:
            self._receive(memoryview(data), addr, now)
        except Malformed as exc:
            self.stats.dropped[str(exc)] += 1

    def _receive(self, data: memoryview, addr: Address, now: float) -> None:
        if self.state is State.CLOSED:
            raise Malformed("closed")
        if addr != self.addr:
            raise Malformed("address")
        header = parse_header(data)
        if header.dcid != self.local_cid:
            raise Malformed("connection id")
        if header.type == PacketType.DATA:
            if self.state is State.HANDSHAKE:
                raise Malformed("early")
            self._receive_packet(data, header, now)
        elif self.is_client and self.state is State.HANDSHAKE:
            self._receive_handshake(data, header, now)
        else:
            raise Malformed("unexpected handshake")

    def _receive_packet(self, data: memoryview, header: Header, now: float) -> None:
        if header.pn < self._received.floor or self._received.contains(header.pn):
            raise Malformed("replay")
        body = self._protection.open(data, header.pn)
        in_order = header.pn == self._received.largest + 1
        if header.pn > self._received.largest:
            self._largest_time = now
        self._received.add(header.pn)
        stats = self.stats
        stats.packets_received += 1
        stats.bytes_received += len(data)
        self._last_received = now
        if self._parse_frames(body, now):
            self._ack_pending += 1
            if self._ack_pending >= ACK_EVERY or not in_order:
                self._ack_now = True
            elif self._ack_deadline is None:
                self._ack_deadline = now + self.options.max_ack_delay

    def _parse_frames(self, body: memoryview, now: float) -> bool:
        """Apply every frame; True when one of them asks for an acknowledgement."""
        pos = HEADER_SIZE
        end = len(body)
        eliciting = False
        while pos < end:
            ftype = body[pos]
            if ftype == FrameType.MSG:
                pos = self._on_msg(body, pos)
                eliciting = True
            elif ftype == FrameType.ACK:
                ranges, delay, pos = decode_ack(body, pos)
                if ranges[0][1] >= self._next_pn:
                    raise Malformed("ack of unsent packet")
                self.recovery.on_ack(ranges, delay, now)
            elif ftype == FrameType.PING:
                pos += 1
                eliciting = True
            elif ftype == FrameType.FLOW:
                if end < pos + FLOW_FRAME.size:
                    raise Malformed("flow")
                self._peer_max_data = max(self._peer_max_data, FLOW_FRAME.unpack_from(body, pos)[1])
                pos += FLOW_FRAME.size
                eliciting = True
            elif ftype == FrameType.CLOSE:
                pos = self._on_close_frame(body, pos, now)
                eliciting = True
            elif ftype == FrameType.PADDING:
                break
            else:
                raise Malformed("frame type")
        if self.state is State.CLOSING:
            self._check_close_ready()
        return eliciting

    def _on_msg(self, body: memoryview, pos: int) -> int:
        if len(body) < pos + MSG_HEAD.size:
            raise Malformed("msg")
        channel: int
        seq: int
        length: int
        _, channel, flags, seq, length = MSG_HEAD.unpack_from(body, pos)
        if flags & FRAG:
            if len(body) < pos + MSG_FRAG.size:
                raise Malformed("msg")
            index, count = MSG_FRAG.unpack_from(body, pos)[5:]
            start = pos + MSG_FRAG.size
        else:
            index, count, start = 0, 1, pos + MSG_HEAD.size
        end = start + length
        if end > len(body) or channel >= len(self._recv) or count == 0:
            raise Malformed("msg")
        if self.state is not State.OPEN and self.state is not State.CLOSING:
            return end
        self._deliver(channel, seq, index, count, body[start:end])
        return end

    def _deliver(self, channel: int, seq: int, index: int, count: int, data: memoryview) -> None:
        delivered: list[bytes] = []
        recv = self._recv[channel]
        accepted = recv.receive(seq, index, count, data, delivered)
        if accepted < 0:
            self.stats.dropped["duplicate" if self._reliable[channel] else "stale"] += 1
            return
        self._data_received += accepted
        if self._data_received > self._advertised:
            # a peer ignoring our window would make us buffer without bound: end it
            self._terminate(CloseCode.PROTOCOL_ERROR, "the peer overran the flow window", False)
            raise Malformed("flow control violated")
        for message in delivered:
            if not self._reliable[channel] and self._unread > self.options.receive_window:
                self.stats.dropped["receive buffer full"] += 1
                continue
            self._unread += len(message)
            self.stats.messages_received += 1
            self._events.append(MessageReceived(channel, message))

    def _on_close_frame(self, body: memoryview, pos: int, now: float) -> int:
        if len(body) < pos + CLOSE_HEAD.size:
            raise Malformed("close")
        code: int
        length: int
        _, code, length = CLOSE_HEAD.unpack_from(body, pos)
        end = pos + CLOSE_HEAD.size + length
        if end > len(body):
            raise Malformed("close")
        reason = bytes(body[pos + CLOSE_HEAD.size : end]).decode(errors="replace")
        if self.state in (State.OPEN, State.CLOSING):
            self.close_code, self.close_reason = code, reason
            self._report_closed(code, reason, by_peer=True)
            self.state = State.DRAINING
            self._deadline = now + self._linger()
            self._ack_now = True
        return end

    def _receive_handshake(self, data: memoryview, header: Header, now: float) -> None:
        body = crypto.open_crc(data)
        if header.type == PacketType.RETRY:
            self._on_retry(body, now)
        elif header.type == PacketType.ACCEPT:
            self._on_accept(body, now)
        elif header.type == PacketType.REJECT:
            self._on_reject(body)
        else:
            raise Malformed("unexpected handshake")

    def _on_retry(self, body: memoryview, now: float) -> None:
        if len(body) < HEADER_SIZE + 1 or len(body) < HEADER_SIZE + 1 + body[HEADER_SIZE]:
            raise Malformed("retry")
        if self._retries >= MAX_RETRIES:
            raise Malformed("too many retries")
        self._retries += 1
        self._token = bytes(body[HEADER_SIZE + 1 : HEADER_SIZE + 1 + body[HEADER_SIZE]])
        self._initial_due = now
        self._initial_backoff = 0  # the server answers: the path works, no need to back off

    def _on_accept(self, body: memoryview, now: float) -> None:
        pos = HEADER_SIZE + ACCEPT_HEAD.size
        if len(body) < pos:
            raise Malformed("accept")
        scid, nonce = ACCEPT_HEAD.unpack_from(body, HEADER_SIZE)
        flags, _max_dgram, window, kinds, end = decode_params(body, pos)
        secret = self.options.secret
        if secret is not None:
            given = bytes(body[end : end + MAC_SIZE])
            key = crypto.handshake_key(secret)
            if given != crypto.mac(key, body[:end], self.nonce, self.local_cid.to_bytes(4)):
                raise Malformed("handshake authentication")
        if bool(flags & PARAM_SECURE) != (secret is not None) or scid == 0:
            raise Malformed("accept")
        self.peer_cid, self.peer_nonce = scid, nonce
        if kinds != self._kinds:
            self._terminate(CloseCode.NEGOTIATION_FAILED, "the server has other channels", False)
            return
        self._peer_max_data = window
        self._initial_due = None
        if secret is not None:
            self._protection = crypto.derive_keys(
                secret, self.nonce, nonce, self.local_cid, scid, client=True
            )
        self._open(now)
        self._ping = True  # tells the server at once that we have its ACCEPT

    def _on_reject(self, body: memoryview) -> None:
        if len(body) < HEADER_SIZE + REJECT_HEAD.size:
            raise Malformed("reject")
        code, length = REJECT_HEAD.unpack_from(body, HEADER_SIZE)
        start = HEADER_SIZE + REJECT_HEAD.size
        reason = bytes(body[start : start + length]).decode(errors="replace")
        self._terminate(code, f"the server refused the connection: {reason}", by_peer=True)

    # ---- output ----------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Every datagram that should go out now, with its destination."""
        out, self._out = self._out, []
        if self.state is State.HANDSHAKE:
            if self._initial_due is not None and now >= self._initial_due:
                out.append((self._build_initial(now), self.addr))
            return out
        if self.state is State.CLOSING and self._deadline is None:
            self._deadline = now + self.options.close_timeout
            self._check_close_ready()
        if self.state in (State.OPEN, State.CLOSING, State.DRAINING):
            while (packet := self._build_packet(now)) is not None:
                out.append((packet, self.addr))
        return out

    def _build_initial(self, now: float) -> bytes:
        opts = self.options
        flags = PARAM_SECURE if opts.secret is not None else 0
        packet = bytearray(HEADER.pack(MAGIC, VERSION, PacketType.INITIAL, 0, self._initial_count))
        packet += INITIAL_HEAD.pack(self.local_cid, self.nonce)
        packet += encode_params(flags, opts.max_datagram, opts.receive_window, self._kinds)
        packet.append(len(self._token))
        packet += self._token
        if opts.secret is not None:
            packet += crypto.mac(crypto.handshake_key(opts.secret), packet)
        packet += bytes(max(MIN_INITIAL, opts.max_datagram) - CRC_SIZE - len(packet))
        self._initial_count += 1
        wait = min(self.rtt.rto * (1 << self._initial_backoff), MAX_INITIAL_WAIT)
        self._initial_backoff = min(self._initial_backoff + 1, 8)
        self._initial_due = now + wait
        self.stats.packets_sent += 1
        self.stats.bytes_sent += len(packet) + CRC_SIZE
        return crypto.seal_crc(packet)

    def send_accept(self) -> None:
        """Queue the ACCEPT again (the server saw the client's INITIAL once more)."""
        opts = self.options
        flags = PARAM_SECURE if opts.secret is not None else 0
        packet = bytearray(HEADER.pack(MAGIC, VERSION, PacketType.ACCEPT, self.peer_cid, 0))
        packet += ACCEPT_HEAD.pack(self.local_cid, self.nonce)
        packet += encode_params(flags, opts.max_datagram, opts.receive_window, self._kinds)
        if opts.secret is not None:
            key = crypto.handshake_key(opts.secret)
            packet += crypto.mac(key, packet, self.peer_nonce, self.peer_cid.to_bytes(4))
        self._out.append((crypto.seal_crc(packet), self.addr))

    def _build_packet(self, now: float) -> bytes | None:
        buf = bytearray(HEADER_SIZE)
        limit = self.options.max_datagram - self._protection.overhead
        items: list[object] = []
        eliciting = False
        if self._ack_now or (self._ack_deadline is not None and now >= self._ack_deadline):
            if self._received.ranges:
                buf += encode_ack(self._received.ranges, now - self._largest_time)
            self._ack_now = False
            self._ack_pending = 0
            self._ack_deadline = None
        if self.state is State.DRAINING:
            return self._finish(buf, now, items, eliciting=False)
        first_close = self._close_pending and not self._close_sent
        eliciting = self._control_frames(buf, items)
        if first_close:
            # data is all acked: the CLOSE alone is at stake, as long as the peer drains
            self._deadline = min(self._deadline or now + self._linger(), now + self._linger())
        self._pace_wait = None
        if self.recovery.bytes_in_flight + self._mss <= self.cc.cwnd:
            wait = self._pacer.wait(now, self.cc.pacing_rate(self.rtt.srtt), self._mss)
            self._pace_wait = wait
            if wait is None:
                before = len(buf)
                eliciting = self._data_frames(buf, limit, items, now) or eliciting
                self._pacer.spend(len(buf) - before)
        return self._finish(buf, now, items, eliciting)

    def _control_frames(self, buf: bytearray, items: list[object]) -> bool:
        eliciting = False
        if self._close_pending:
            code = self.close_code if self.close_code is not None else CloseCode.NORMAL
            buf += encode_close(code, self.close_reason)
            items.append(_CLOSE_ITEM)
            self._close_pending = False
            self._close_sent = True
            eliciting = True
        if self._flow_pending:
            self._advertised = self._consumed + self.options.receive_window
            buf += FLOW_FRAME.pack(FrameType.FLOW, self._advertised)
            items.append(_FLOW_ITEM)
            self._flow_pending = False
            eliciting = True
        if self._ping:
            buf.append(FrameType.PING)
            self._ping = False
            eliciting = True
        return eliciting

    def _data_frames(self, buf: bytearray, limit: int, items: list[object], now: float) -> bool:
        start = len(buf)
        retx = self._retx
        while retx and len(buf) + _frame_size(retx[0]) <= limit:
            frag = retx.popleft()
            if self._copied(frag) and not self._copies.pending(frag):  # type: ignore[union-attr]
                continue  # a copy was acknowledged meanwhile
            _encode_msg(buf, frag)
            items.append(frag)
            self.stats.retransmits += 1
        if self._copies:
            self._copy_frames(self._copies, buf, limit, items, now)
        queues = self._queues
        count = len(queues)
        idle = 0
        channel = self._rr
        while idle < count:
            queue = queues[channel]
            channel = channel + 1 if channel + 1 < count else 0
            if not queue or len(buf) + _frame_size(queue[0]) > limit:
                idle += 1
                continue
            frag = queue[0]
            if self._reliable[frag.channel]:
                if self._data_sent + len(frag.data) > self._peer_max_data:
                    idle += 1
                    continue
                self._data_sent += len(frag.data)
                items.append(frag)
                if self._copied(frag):
                    self._copies.schedule(frag, now, self.rtt.srtt)  # type: ignore[union-attr]
            else:
                self._release(len(frag.data))
            queue.popleft()
            _encode_msg(buf, frag)
            idle = 0
        self._rr = channel
        return len(buf) > start

    def _finish(
        self, buf: bytearray, now: float, items: list[object], eliciting: bool
    ) -> bytes | None:
        if len(buf) == HEADER_SIZE:
            return None
        pn = self._next_pn
        if pn >= PN_LIMIT:
            self._terminate(CloseCode.INTERNAL_ERROR, "packet numbers exhausted", by_peer=False)
            return None
        self._next_pn = pn + 1
        HEADER.pack_into(buf, 0, MAGIC, VERSION, PacketType.DATA, self.peer_cid, pn)
        packet = self._protection.seal(buf, pn)
        size = len(packet)
        if eliciting:
            self.recovery.on_sent(SentPacket(pn, now, size, True, items))
            self._last_sent = now
        self.stats.packets_sent += 1
        self.stats.bytes_sent += size
        return packet

    # ---- redundancy -------------------------------------------------------------------------

    def _copied(self, frag: Fragment) -> bool:
        """True for the fragments that get copies (small, reliable, redundancy on)."""
        return self._copies is not None and self._reliable[frag.channel] and Copies.wanted(frag)

    def _copy_frames(
        self, copies: Copies, buf: bytearray, limit: int, items: list[object], now: float
    ) -> None:
        while (frag := copies.peek(now)) is not None and len(buf) + _frame_size(frag) <= limit:
            copies.pop()
            _encode_msg(buf, frag)
            items.append(Copy(frag))
            self.stats.redundant += 1

    def _settle(self, frag: Fragment) -> bool:
        """An acknowledgement covers ``frag``: True the first time (release its bytes)."""
        return not self._copied(frag) or self._copies.settle(frag)  # type: ignore[union-attr]

    # ---- recovery callbacks -----------------------------------------------------------------

    def _on_lost(self, packet: SentPacket) -> None:
        for item in packet.items:
            if type(item) is Fragment:
                if not self._copied(item) or self._copies.pending(item):  # type: ignore[union-attr]
                    self._retx.append(item)
            elif item is _CLOSE_ITEM and self.state is State.CLOSING:
                self._close_pending = True
            elif item is _FLOW_ITEM:
                self._flow_pending = True

    def _on_acked(self, packet: SentPacket) -> None:
        for item in packet.items:
            if type(item) is Fragment:
                if self._settle(item):
                    self._release(len(item.data))
            elif type(item) is Copy:
                if self._settle(item.frag):
                    self._release(len(item.frag.data))
            elif item is _CLOSE_ITEM and self.state is State.CLOSING:
                self._terminate(self.close_code or CloseCode.NORMAL, self.close_reason, False)

    def _release(self, size: int) -> None:
        self._queued -= size
        if self._blocked and self._queued <= self.options.send_buffer // 2:
            self._blocked = False
            self._events.append(Writable())

    def _window_full(self) -> bool:
        return self.recovery.bytes_in_flight + self._mss > self.cc.cwnd

    def _linger(self) -> float:
        """How long the CLOSE exchange may take: 3 RTOs, and long enough for a few retries."""
        return max(3 * self.recovery.rto, MIN_LINGER)

    def _check_close_ready(self) -> None:
        if not self._close_sent and not self._close_pending and self._queued == 0:
            self._close_pending = True

    # ---- timers ----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called next (None: nothing scheduled)."""
        state = self.state
        if state is State.CLOSED:
            return None
        if state is State.HANDSHAKE:
            return _earliest(self._initial_due, self._deadline)
        if state is State.DRAINING:
            return _earliest(self._deadline, self._ack_deadline)
        opts = self.options
        timer = _earliest(
            self._deadline, self._ack_deadline, self.recovery.timer(), self._idle_deadline()
        )
        if self._pace_wait is not None and (self._retx or any(self._queues)):
            timer = _earliest(timer, self._pace_wait)
        copies = self._copies
        if copies and (due := copies.next_due()) is not None and not self._window_full():
            timer = _earliest(timer, max(due, self._pace_wait or due))
        if opts.keepalive_interval is not None and not self.recovery.ack_eliciting_out:
            timer = _earliest(timer, self._last_sent + opts.keepalive_interval)
        return timer

    def _idle_deadline(self) -> float:
        return self._last_received + self.options.idle_timeout

    def handle_timer(self, now: float) -> None:
        """Run whatever is due at ``now``: retransmission, acks, keepalive, timeouts."""
        state = self.state
        if state is State.CLOSED:
            return
        if self._deadline is not None and now >= self._deadline:
            self._on_deadline(now)
            return
        if state is State.HANDSHAKE or state is State.DRAINING:
            return
        if now >= self._idle_deadline():
            self._terminate(CloseCode.IDLE_TIMEOUT, "no datagram from the peer", by_peer=False)
            return
        recovery_timer = self.recovery.timer()
        if recovery_timer is not None and now >= recovery_timer:
            self.recovery.on_timeout(now)
            if self.recovery.backoff > self.options.max_retransmits:
                self._terminate(
                    CloseCode.HEARTBEAT_TIMEOUT, "the peer stopped acknowledging", by_peer=False
                )
                return
        interval = self.options.keepalive_interval
        if (
            interval is not None
            and not self.recovery.ack_eliciting_out
            and now >= self._last_sent + interval
        ):
            self._ping = True

    def _on_deadline(self, now: float) -> None:
        if self.state is State.HANDSHAKE:
            self._terminate(CloseCode.HANDSHAKE_TIMEOUT, "no answer to the handshake", False)
        elif self.state is State.CLOSING:
            code = self.close_code if self.close_code is not None else CloseCode.NORMAL
            # out of time: one last CLOSE, best effort, so the peer need not wait to idle out
            buf = bytearray(HEADER_SIZE) + encode_close(code, self.close_reason)
            packet = self._finish(buf, now, [], eliciting=False)
            if packet is not None:
                self._out.append((packet, self.addr))
            self._terminate(code, self.close_reason, by_peer=False)
        else:
            self._terminate(self.close_code or CloseCode.NORMAL, self.close_reason, True)

    def _terminate(self, code: int, reason: str, by_peer: bool) -> None:
        self._report_closed(code, reason, by_peer)
        self.state = State.CLOSED
        self.recovery.discard()
        self._deadline = None

    def _report_closed(self, code: int, reason: str, by_peer: bool) -> None:
        if not self._closing_reported:
            self._closing_reported = True
            if self.close_code is None:
                self.close_code, self.close_reason = code, reason
            self._events.append(ConnectionTerminated(code, reason, by_peer))


def _frame_size(frag: Fragment) -> int:
    return (MSG_FRAG.size if frag.parts > 1 else MSG_HEAD.size) + len(frag.data)


def _encode_msg(buf: bytearray, frag: Fragment) -> None:
    if frag.parts > 1:
        buf += MSG_FRAG.pack(
            FrameType.MSG, frag.channel, FRAG, frag.seq, len(frag.data), frag.part, frag.parts
        )
    else:
        buf += MSG_HEAD.pack(FrameType.MSG, frag.channel, 0, frag.seq, len(frag.data))
    buf += frag.data


def _earliest(*times: float | None) -> float | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None


def _random_cid() -> int:
    while True:
        cid = int.from_bytes(os.urandom(4))
        if cid:
            return cid
