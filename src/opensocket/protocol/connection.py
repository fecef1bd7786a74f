"""The framed connection: one sans-IO state machine for both client and server.

How it works: bytes from the socket go in through ``get_buffer``/``buffer_updated`` (or
``receive_data``); message payloads collect in the decoder's list (``take_messages``), other
happenings become events (``events``), and everything to write collects in one buffer
(``data_to_send``). Time only ever comes in as the ``now`` argument; ``get_timer`` tells when
``handle_timer`` must be called next (handshake deadline, heartbeat tick, close deadline).

States and the frames each accepts (the same table for both roles)::

    HANDSHAKE  (server awaits HELLO, then AUTH; client awaits WELCOME, then AUTH_OK)
       │ handshake frames, ERROR, CLOSE
       ▼
    OPEN       DATA, PING, PONG, CLOSE, ERROR (+ pattern frames 0x21-0x3F when ``patterns``)
       │ close()                      ← CLOSE from the peer goes straight to CLOSED
       ▼
    CLOSING    DATA, PING, PONG, CLOSE, ERROR   (waits for the peer's CLOSE)
       ▼
    CLOSED     terminal: input is ignored, ConnectionTerminated was emitted once

Any protocol violation queues an ERROR frame and moves to CLOSED.

Messaging-pattern frames (types 0x21-0x3F, docs/protocol.md section 13) pass only when the
connection opted in: ``patterns=True``, or a messaging pattern agreed in the handshake
(``ProtocolOptions.pattern`` on both sides). They then arrive among the messages, in order
with DATA, as ``Frame`` objects, and go out with ``send_frame``/``send_frames``.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from enum import Enum
from typing import Final

from crc32c import crc32c

from ..errors import (
    AuthenticationFailed,
    CloseCode,
    CodecError,
    ConfigError,
    ConnectionClosed,
    ConnectionRejected,
    FrameTooLarge,
    HandshakeError,
    HandshakeTimeout,
    NegotiationFailed,
    OpenSocketError,
    ProtocolError,
    UnexpectedFrame,
    closed_error,
)
from ..options import ProtocolOptions
from . import handshake as hs
from .decoder import FrameDecoder
from .events import ConnectionTerminated, Event, HandshakeComplete, PongReceived
from .frame import (
    DATA_HEADER,
    HEADER_SIZE,
    MAGIC_VERSION,
    Frame,
    FrameType,
    cached_data_tail,
    data_tail,
    encode_frame,
)
from .patterns import EncodedFrames, PatternFrame, bad_frame, pattern_parts

__all__ = ["FramedConnection", "Role", "State"]

_CODE: Final = struct.Struct(">H")
_STAMP: Final = struct.Struct(">d")
MAX_REASON: Final = 1024
JOIN_BELOW: Final = 64 * 1024
EARLY_MESSAGE: Final = "a message arrived before the handshake completed"


def _not_bytes(payload: object) -> CodecError:
    return CodecError(
        f"a message must be bytes-like, not {type(payload).__name__}: encode it, or use a "
        "codec that does (codec='json' or 'msgpack')"
    )


def _patterns_off() -> ConfigError:
    return ConfigError(
        "messaging-pattern frames are off on this connection: set "
        "ProtocolOptions.pattern on both sides (or pass patterns=True)"
    )


class Role(Enum):
    """Which end of the connection this is."""

    CLIENT = "client"
    SERVER = "server"


class State(Enum):
    """Connection states (see the module docstring)."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Step(Enum):
    """Where the handshake is."""

    AWAIT_HELLO = 1
    AWAIT_WELCOME = 2
    AWAIT_AUTH = 3
    AWAIT_AUTH_OK = 4
    DONE = 5


_HS = frozenset({FrameType.ERROR, FrameType.CLOSE})
_OPEN = frozenset({FrameType.PING, FrameType.PONG, FrameType.CLOSE, FrameType.ERROR})
ALLOWED: Final[dict[Step, frozenset[int]]] = {
    Step.AWAIT_HELLO: _HS | {FrameType.HELLO},
    Step.AWAIT_WELCOME: _HS | {FrameType.WELCOME},
    Step.AWAIT_AUTH: _HS | {FrameType.AUTH},
    Step.AWAIT_AUTH_OK: _HS | {FrameType.AUTH_OK},
    Step.DONE: _OPEN,
}

_PEER_ERRORS: Final[dict[int, type[OpenSocketError]]] = {
    CloseCode.AUTH_FAILED: AuthenticationFailed,
    CloseCode.AUTH_REQUIRED: AuthenticationFailed,
    CloseCode.NEGOTIATION_FAILED: NegotiationFailed,
    CloseCode.HANDSHAKE_FAILED: HandshakeError,
    CloseCode.HANDSHAKE_TIMEOUT: HandshakeTimeout,
}
_REJECTIONS: Final = frozenset(
    {
        CloseCode.POLICY,
        CloseCode.CONNECTION_LIMIT,
        CloseCode.RATE_LIMITED,
        CloseCode.ACCESS_DENIED,
        CloseCode.GOING_AWAY,
    }
)


def encode_close(code: int, reason: str, limit: int = MAX_REASON) -> bytes:
    """Body of a CLOSE or ERROR frame: a 2-byte code and a UTF-8 reason of at most ``limit``
    bytes (cut at a character boundary)."""
    text = reason.encode()
    if len(text) > limit:
        text = text[:limit].decode(errors="ignore").encode()
    return _CODE.pack(code) + text


def decode_close(body: bytes) -> tuple[int, str]:
    """Parse a CLOSE or ERROR body; an empty body means 'no code'."""
    if not body:
        return CloseCode.NO_CODE, ""
    if len(body) < 2:
        raise ProtocolError("a CLOSE or ERROR frame body must start with a 2-byte code")
    return _CODE.unpack_from(body)[0], body[2:].decode(errors="replace")


def peer_error(code: int, message: str, *, during_handshake: bool) -> OpenSocketError:
    """The exception that stands for an ERROR frame the peer sent us."""
    if code in _REJECTIONS and during_handshake:
        return ConnectionRejected(f"the server refused the connection: {message}", code)
    cls = _PEER_ERRORS.get(code)
    if cls is not None:
        return cls(f"the peer reported: {message}")
    return ProtocolError(f"the peer reported a protocol error ({code}): {message}", code)


class FramedConnection:
    """The framed protocol, sans I/O. See the module docstring for the state machine."""

    __slots__ = (
        "_active",
        "_checksum",
        "_deadline",
        "_decoder",
        "_events",
        "_heard",
        "_hello",
        "_idle_timeout",
        "_interval",
        "_nonce",
        "_out",
        "_peer_max",
        "_peer_nonce",
        "_seen",
        "_tick",
        "_welcome",
        "agreement",
        "bytes_in",
        "bytes_out",
        "close_code",
        "close_reason",
        "control_in",
        "control_out",
        "messages_in",
        "messages_out",
        "options",
        "patterns",
        "role",
        "rtt",
        "state",
        "step",
        "terminated",
        "tls",
    )

    def __init__(
        self,
        role: Role,
        options: ProtocolOptions | None = None,
        *,
        now: float,
        tls: bool = False,
        idle_timeout: float | None = None,
        scratch: bytearray | None = None,
        nonce: bytes | None = None,
        patterns: bool = False,
    ) -> None:
        self.role = role
        # Pattern frames pass once open: forced here, or agreed in the handshake.
        self.patterns = patterns
        self.options = opts = options or ProtocolOptions()
        self.tls = tls
        self.state = State.HANDSHAKE
        self.step = Step.AWAIT_WELCOME if role is Role.CLIENT else Step.AWAIT_HELLO
        self.agreement: hs.Agreement | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.terminated: ConnectionTerminated | None = None
        self.rtt: float | None = None
        self.bytes_in = self.bytes_out = 0
        self.messages_in = self.messages_out = 0
        self.control_in = self.control_out = 0  # frames other than DATA (handshake, pings, ...)
        # Until the handshake is done only small control frames may arrive: a client that
        # has not even said HELLO must not make us buffer a max_frame_size body.
        self._decoder = FrameDecoder(hs.MAX_HANDSHAKE_BODY, scratch=scratch)
        self._out = bytearray()
        self._events: list[Event] = []
        self._checksum = True
        self._peer_max = hs.MAX_HANDSHAKE_BODY
        self._nonce = nonce if nonce is not None else os.urandom(hs.NONCE_SIZE)
        self._peer_nonce = b""
        self._hello = b""
        self._welcome = b""
        self._idle_timeout = idle_timeout
        self._deadline: float | None = now + opts.handshake_timeout
        self._tick: float | None = None
        self._interval = 0.0
        self._seen = (0, 0, 0)
        self._heard = now
        self._active = now
        if role is Role.CLIENT:
            self._hello = hs.build_hello(opts, tls=tls, nonce=self._nonce)
            self._send_control(FrameType.HELLO, self._hello)

    # ---- input -------------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Memory to read into (see FrameDecoder.get_buffer)."""
        return self._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int, now: float) -> None:
        """Process ``nbytes`` just read into the buffer from ``get_buffer``."""
        if self.state is State.CLOSED:
            return
        self.bytes_in += nbytes
        try:
            self._decoder.buffer_updated(nbytes)
            self._after_decode(now)
        except ProtocolError as exc:
            self._fail(exc)

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Process bytes from the peer; ``b""`` means the peer closed its side (EOF)."""
        if not data:
            self.receive_eof(now)
            return
        if self.state is State.CLOSED:
            return
        self.bytes_in += len(data)
        try:
            self._decoder.feed(data)
            self._after_decode(now)
        except ProtocolError as exc:
            self._fail(exc)

    def receive_eof(self, now: float) -> None:
        """The peer closed its side of the transport."""
        if self.state is State.CLOSED:
            return
        pending = self._decoder.buffered
        if self.state is State.CLOSING:
            self._terminate(self.close_code or CloseCode.NORMAL, self.close_reason, by_peer=False)
        elif self.state is State.HANDSHAKE:
            self._terminate(
                CloseCode.ABNORMAL,
                "closed during the handshake",
                by_peer=True,
                error=HandshakeError(
                    "the peer closed the connection right after the TLS handshake: does it "
                    "require a client certificate (mutual TLS) or reject ours, or is it not "
                    "an opensocket endpoint?"
                    if self.tls and self.role is Role.CLIENT
                    else "the peer closed the connection during the handshake: is it an "
                    "opensocket endpoint, does it require TLS (tls://), or did it reject us?"
                ),
            )
        elif pending:
            self._terminate(
                CloseCode.ABNORMAL,
                f"truncated frame: the peer closed the connection {pending} bytes into a frame",
                by_peer=True,
                error=ProtocolError("truncated frame at end of stream"),
            )
        else:
            self._terminate(
                CloseCode.ABNORMAL,
                "the peer closed the connection without a close frame",
                by_peer=True,
            )

    def take_messages(self) -> list[bytes | Frame]:
        """Remove and return the message payloads received so far, in order (pattern frames
        as tuples instead of Frames after ``deliver_pattern_tuples``)."""
        decoder = self._decoder
        messages = decoder.messages
        if messages:
            decoder.messages = []
            self.messages_in += len(messages)
        return messages

    def deliver_pattern_tuples(self, on: bool = True) -> None:
        """Pattern frames come out of ``take_messages`` as ``(type, metadata, payload)``
        tuples instead of Frame objects from now on (cheaper, for runtimes that feed them to
        a messaging Bridge)."""
        self._decoder.pattern_tuples = on

    def events(self) -> list[Event]:
        """Remove and return the events produced so far."""
        events = self._events
        self._events = []
        return events

    # ---- output ------------------------------------------------------------------------

    def send(self, payload: bytes | bytearray | memoryview) -> None:
        """Queue one message. Raises ConnectionClosed unless open, FrameTooLarge if too big,
        CodecError (with nothing queued) if ``payload`` is not bytes-like."""
        if self.state is not State.OPEN:
            raise self.closed_exception()
        out = self._out
        try:
            size = len(payload)
            if size > self._peer_max:
                raise self._too_large(size)
            entry = cached_data_tail(size) or data_tail(size)
            if self._checksum:  # crc32c refuses a non-buffer before anything is queued
                out += DATA_HEADER.pack(MAGIC_VERSION, crc32c(payload, entry[1]), entry[0])
                out += payload
            else:
                out += entry[2]
                try:
                    out += payload
                except TypeError:
                    del out[-HEADER_SIZE:]  # the header went in, the payload cannot follow
                    raise
        except TypeError:
            raise _not_bytes(payload) from None
        self.messages_out += 1

    def send_many(self, payloads: Sequence[bytes | bytearray | memoryview]) -> None:
        """Queue several messages at once; all or none (a too-large one raises first)."""
        if self.state is not State.OPEN:
            raise self.closed_exception()
        if not payloads:
            return
        out = self._out
        start = len(out)
        try:
            self._queue_many(out, payloads)
        except TypeError:
            del out[start:]
            bad = next(p for p in payloads if not isinstance(p, bytes | bytearray | memoryview))
            raise _not_bytes(bad) from None

    def _queue_many(
        self, out: bytearray, payloads: Sequence[bytes | bytearray | memoryview]
    ) -> None:
        sizes = list(map(len, payloads))
        largest = max(sizes)
        if largest > self._peer_max:
            raise self._too_large(largest)
        parts: list[bytes | bytearray | memoryview] = []
        append = parts.append
        get = cached_data_tail
        if self._checksum:
            pack = DATA_HEADER.pack
            for payload, size in zip(payloads, sizes, strict=True):
                entry = get(size) or data_tail(size)
                append(pack(MAGIC_VERSION, crc32c(payload, entry[1]), entry[0]))
                append(payload)
        else:
            for payload, size in zip(payloads, sizes, strict=True):
                append((get(size) or data_tail(size))[2])
                append(payload)
        if len(parts) * largest < JOIN_BELOW:
            out += b"".join(parts)  # one C-level pass for a small batch
        else:
            # A big joined temporary costs a second copy and fresh pages (page faults) for
            # every batch: append each part straight into the output buffer instead.
            for part in parts:
                out += part
        self.messages_out += len(sizes)

    def send_frame(
        self, frame_type: int, meta: bytes, payload: bytes | bytearray | memoryview
    ) -> None:
        """Queue one messaging-pattern frame (type 0x21-0x3F) with its metadata."""
        self.send_frames(((frame_type, meta, payload),))

    def send_frames(self, frames: Sequence[PatternFrame]) -> None:
        """Queue messaging-pattern frames ``(type, metadata, payload)``; all or none.

        Raises ConnectionClosed unless open, ConfigError for a type outside 0x21-0x3F or when
        pattern frames are off on this connection, FrameTooLarge over the peer's limit.
        """
        if self.state is not State.OPEN:
            raise self.closed_exception()
        if not self.patterns:
            raise _patterns_off()
        out = self._out
        start = len(out)
        try:
            parts, total = pattern_parts(frames, checksum=self._checksum, limit=self._peer_max)
            if total < JOIN_BELOW:
                out += b"".join(parts)  # one C-level pass for a small batch
            else:
                for part in parts:
                    out += part
        except (TypeError, struct.error):
            del out[start:]  # a part that is not bytes-like may only show up when joined
            raise bad_frame(frames) from None
        self.messages_out += len(frames)

    def send_encoded(self, batch: EncodedFrames) -> None:
        """Queue pattern frames framed once by ``encode_frames`` (the same frames going to
        several connections); the checks of ``send_frames`` apply. Raises ConfigError if
        ``batch`` was framed for the other checksum setting."""
        if self.state is not State.OPEN:
            raise self.closed_exception()
        if not self.patterns:
            raise _patterns_off()
        if batch.checksum != self._checksum:
            raise ConfigError(
                f"these frames were framed {'with' if batch.checksum else 'without'} checksums "
                "and this connection agreed otherwise: frame them with its setting"
            )
        if batch.largest > self._peer_max:
            raise self._too_large(batch.largest)
        self._out += batch.data
        self.messages_out += batch.count

    def send_data_frames(self, frames: Sequence[bytes]) -> None:
        """Queue complete DATA frames built once elsewhere (``frame_bytes(FrameType.DATA,
        payload, checksum=self.checksums)``) for a fan-out to many connections; all or none.

        Raises ConnectionClosed unless open, FrameTooLarge for a payload over the peer's limit.
        """
        if self.state is not State.OPEN:
            raise self.closed_exception()
        largest = max(map(len, frames)) - HEADER_SIZE if frames else 0
        if largest > self._peer_max:
            raise self._too_large(largest)
        out = self._out
        for frame in frames:
            out += frame
        self.messages_out += len(frames)

    @property
    def checksums(self) -> bool:
        """Whether frames on this connection carry checksums (agreed in the handshake)."""
        return self._checksum

    def _too_large(self, size: int) -> FrameTooLarge:
        return FrameTooLarge(
            f"a message of {size} bytes exceeds the peer's maximum frame size "
            f"of {self._peer_max} bytes"
        )

    def data_to_send(self) -> bytearray:
        """Remove and return everything queued for the socket."""
        out = self._out
        if out:
            self._out = bytearray()
            self.bytes_out += len(out)
        return out

    @property
    def frames_in(self) -> int:
        """Frames received: messages and control frames."""
        return self.messages_in + self.control_in

    @property
    def frames_out(self) -> int:
        """Frames queued for sending: messages and control frames."""
        return self.messages_out + self.control_out

    @property
    def pending_output(self) -> int:
        """Bytes queued and not yet taken by ``data_to_send``."""
        return len(self._out)

    def ping(self, now: float) -> None:
        """Send a heartbeat ping now (its PONG yields a PongReceived with the round trip)."""
        if self.state in (State.OPEN, State.CLOSING):
            self._send_control(FrameType.PING, _STAMP.pack(now))

    def close(self, now: float, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start a graceful close: queue CLOSE and wait for the peer's CLOSE."""
        if not 1000 <= code <= 4999:
            raise ConfigError(f"close code {code} is outside 1000-4999 (see CloseCode)")
        if self.state is State.OPEN:
            self._send_control(FrameType.CLOSE, self._close_body(code, reason))
            self.state = State.CLOSING
            self.close_code, self.close_reason = code, reason
            self._deadline = now + self.options.close_timeout
        elif self.state is State.HANDSHAKE:
            self._send_control(FrameType.CLOSE, self._close_body(code, reason))
            self._terminate(code, reason, by_peer=False)

    def fail(
        self, error: OpenSocketError, code: int = CloseCode.ABNORMAL, *, by_peer: bool = False
    ) -> None:
        """The runtime lost the transport (``by_peer`` for a reset or an EOF it saw) or gave
        up on the peer (write timeout, slow consumer)."""
        if self.state is not State.CLOSED:
            self._terminate(code, str(error), by_peer=by_peer, error=error)

    def reject(self, code: int, reason: str) -> None:
        """Refuse the connection (server policy): send ERROR and close at once."""
        if self.state is State.CLOSED:
            return
        self._send_control(FrameType.ERROR, self._close_body(code, reason))
        self._terminate(code, reason, by_peer=False)

    def closed_exception(self) -> OpenSocketError:
        """The exception a send or receive on this connection raises now."""
        term = self.terminated
        if term is None:
            if self.state is State.HANDSHAKE:
                return HandshakeError("the handshake has not finished yet")
            return closed_error(self.close_code or CloseCode.NORMAL, self.close_reason)
        if term.error is not None and not isinstance(term.error, ConnectionClosed):
            err = closed_error(term.code, term.reason, by_peer=term.by_peer)
            err.__cause__ = term.error
            return err
        return closed_error(term.code, term.reason, by_peer=term.by_peer)

    # ---- timers ------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called, or None."""
        if self.state is State.CLOSED:
            return None
        if self._deadline is not None and self._tick is not None:
            return min(self._deadline, self._tick)
        return self._deadline if self._deadline is not None else self._tick

    def handle_timer(self, now: float) -> None:
        """Fire whatever is due: handshake or close deadline, heartbeat, idle timeout."""
        if self.state is State.CLOSED:
            return
        if self._deadline is not None and now >= self._deadline:
            if self.state is State.HANDSHAKE:
                limit = self.options.handshake_timeout
                self._fail(HandshakeTimeout(f"the handshake did not complete within {limit:g}s"))
            else:
                self._terminate(
                    self.close_code or CloseCode.NORMAL,
                    self.close_reason or "the peer did not answer our close in time",
                    by_peer=False,
                )
            return
        if self._tick is not None and now >= self._tick:
            self._on_tick(now)

    def _on_tick(self, now: float) -> None:
        seen = (
            self.bytes_in,
            self.bytes_out + len(self._out),
            self.messages_in + self.messages_out,
        )
        old_in, old_out, old_msgs = self._seen
        self._seen = seen
        if seen[0] != old_in:
            self._heard = now
        if seen[2] != old_msgs:
            self._active = now
        interval = self._interval
        if interval:
            silent = now - self._heard
            misses = self.options.heartbeat_misses
            if silent >= interval * misses:
                self._terminate(
                    CloseCode.HEARTBEAT_TIMEOUT,
                    f"nothing heard from the peer for {silent:.1f}s ({misses} heartbeats): "
                    "declared dead",
                    by_peer=False,
                )
                return
            if seen[1] == old_out:
                self.ping(now)
                self._seen = (seen[0], self.bytes_out + len(self._out), seen[2])
        idle = self._idle_timeout
        if idle is not None and self.state is State.OPEN and now - self._active >= idle:
            self.close(now, CloseCode.IDLE_TIMEOUT, f"idle for {idle:g}s")
        self._tick = now + self._tick_period()

    def _tick_period(self) -> float:
        periods = [p for p in (self._interval, (self._idle_timeout or 0) / 4) if p]
        return min(periods)

    # ---- frame handling ----------------------------------------------------------------

    def _after_decode(self, now: float) -> None:
        decoder = self._decoder
        while decoder.frames:
            frames = decoder.frames
            decoder.frames = []
            self.control_in += len(frames)
            for index, frame in frames:
                if self.state is State.HANDSHAKE and index:
                    raise UnexpectedFrame(EARLY_MESSAGE)
                self._handle(frame, now)
                if self.state is State.CLOSED:
                    return
            decoder.decode_pending()
        if self.state is State.HANDSHAKE and decoder.messages:
            raise UnexpectedFrame(EARLY_MESSAGE)

    def _handle(self, frame: Frame, now: float) -> None:
        ftype = frame.type
        if ftype == FrameType.HELLO and self.role is Role.CLIENT:
            raise HandshakeError(
                "the peer sent our HELLO back: it is an echo server or a plain byte pipe, not "
                "an opensocket server (talk to it with raw=True / --raw)"
            )
        if ftype not in ALLOWED[self.step]:
            name = FrameType(ftype).name if ftype in FrameType._value2member_map_ else hex(ftype)
            raise UnexpectedFrame(f"unexpected {name} frame in state {self.step.name.lower()}")
        if ftype == FrameType.PING:
            self._send_control(FrameType.PONG, frame.payload[:64])
        elif ftype == FrameType.PONG:
            if len(frame.payload) == _STAMP.size:
                sent = _STAMP.unpack(frame.payload)[0]
                rtt = now - sent
                if math.isfinite(rtt):  # the stamp is the peer's echo: do not trust it
                    self.rtt = max(rtt, 0.0)
                    self._events.append(PongReceived(self.rtt, sent))
        elif ftype == FrameType.CLOSE:
            self._on_close(frame, now)
        elif ftype == FrameType.ERROR:
            code, message = decode_close(frame.payload)
            during = self.state is State.HANDSHAKE
            error = peer_error(code, message, during_handshake=during)
            self._terminate(code, message, by_peer=True, error=error)
        elif ftype == FrameType.HELLO:
            self._on_hello(frame.payload, now)
        elif ftype == FrameType.WELCOME:
            self._on_welcome(frame.payload, now)
        elif ftype == FrameType.AUTH:
            self._on_auth(frame.payload, now)
        else:
            self._open(now)

    def _on_close(self, frame: Frame, now: float) -> None:
        code, reason = decode_close(frame.payload)
        if self.state is State.CLOSING:
            self._terminate(self.close_code or code, self.close_reason, by_peer=False)
            return
        self._send_control(FrameType.CLOSE, self._close_body(code, ""))
        self._terminate(code, reason, by_peer=True)

    def _on_hello(self, body: bytes, now: float) -> None:
        self._hello = body
        hello = hs.load(body, "HELLO")
        opts = self.options
        offered = hello.get("auth")
        if opts.secret is not None and offered != "hmac-sha256":
            raise AuthenticationFailed(
                "this server requires a shared secret and the client offered none",
                CloseCode.AUTH_REQUIRED,
            )
        welcome, self.agreement = hs.negotiate(opts, hello, tls=self.tls)
        if opts.secret is not None:
            self._peer_nonce = hs.nonce_of(hello, "HELLO")
            welcome["nonce"] = self._nonce.hex()
            welcome["proof"] = hs.server_proof(
                opts.secret, self._peer_nonce, self._nonce, body
            ).hex()
        self._welcome = hs.dump(welcome)
        self._send_control(FrameType.WELCOME, self._welcome)
        if opts.secret is None:
            self._open(now)
        else:
            self.step = Step.AWAIT_AUTH

    def _on_welcome(self, body: bytes, now: float) -> None:
        welcome = hs.load(body, "WELCOME")
        self.agreement = hs.accept_welcome(self.options, welcome)
        secret = self.options.secret
        if secret is None:
            self._open(now)
            return
        if "proof" not in welcome:
            raise AuthenticationFailed(
                "the server did not authenticate itself, but we hold a shared secret: "
                "refusing to talk to a server that does not know it"
            )
        server_nonce = hs.nonce_of(welcome, "WELCOME")
        expected = hs.server_proof(secret, self._nonce, server_nonce, self._hello)
        hs.verify(expected, welcome.get("proof"), "server")
        proof = hs.client_proof(secret, self._nonce, server_nonce, self._hello, body)
        self._send_control(FrameType.AUTH, hs.dump({"proof": proof.hex()}))
        self.step = Step.AWAIT_AUTH_OK

    def _on_auth(self, body: bytes, now: float) -> None:
        secret = self.options.secret
        assert secret is not None
        auth = hs.load(body, "AUTH")
        expected = hs.client_proof(
            secret, self._peer_nonce, self._nonce, self._hello, self._welcome
        )
        hs.verify(expected, auth.get("proof"), "client")
        self._send_control(FrameType.AUTH_OK, b"")
        self._open(now)

    def _open(self, now: float) -> None:
        agreement = self.agreement
        assert agreement is not None
        self.state = State.OPEN
        self.step = Step.DONE
        self._deadline = None
        self._checksum = agreement.checksum
        self._decoder.require_checksum = agreement.checksum
        self._decoder.max_body = self.options.max_frame_size
        self.patterns = self.patterns or agreement.pattern is not None
        self._decoder.patterns = self.patterns
        self._peer_max = agreement.peer_max_frame_size
        self._interval = agreement.heartbeat
        self._heard = self._active = now
        # The transcript is only needed to compute the proofs: do not keep it per connection.
        self._hello = self._welcome = self._nonce = self._peer_nonce = b""
        self._seen = (self.bytes_in, self.bytes_out + len(self._out), 0)
        if self._interval or self._idle_timeout:
            self._tick = now + self._tick_period()
        self._events.append(
            HandshakeComplete(
                peer_name=agreement.peer_name,
                codec=agreement.codec,
                heartbeat=agreement.heartbeat,
                checksum=agreement.checksum,
                authenticated=agreement.authenticated,
                pattern=agreement.pattern,
                peer_pattern=agreement.peer_pattern,
            )
        )

    # ---- endings -----------------------------------------------------------------------

    def _send_control(self, ftype: int, body: bytes) -> None:
        encode_frame(self._out, ftype, body, checksum=True)
        self.control_out += 1

    def _close_body(self, code: int, reason: str) -> bytes:
        # The peer rejects any frame over its limit, a CLOSE or ERROR included.
        return encode_close(code, reason, min(MAX_REASON, self._peer_max - 2))

    def _fail(self, error: ProtocolError) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.HANDSHAKE and self._decoder.messages:
            # A message decoded before the bad bytes is the first violation on the wire.
            error = UnexpectedFrame(EARLY_MESSAGE)
        self._send_control(FrameType.ERROR, self._close_body(error.code, str(error)))
        self._terminate(error.code, str(error), by_peer=False, error=error)

    def _terminate(
        self, code: int, reason: str, *, by_peer: bool, error: OpenSocketError | None = None
    ) -> None:
        self.state = State.CLOSED
        self.step = Step.DONE
        self._deadline = self._tick = None
        self.close_code, self.close_reason = code, reason
        self.terminated = ConnectionTerminated(code, reason, by_peer, error)
        self._events.append(self.terminated)
