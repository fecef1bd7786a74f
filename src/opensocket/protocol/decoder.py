"""Incremental frame decoder: bytes split at any point in, frames out.

Buffers: while nothing is pending, a runtime may let the decoder read straight into a
shared scratch buffer (one per event loop), so an idle connection holds no receive buffer at
all; only the tail of a frame cut by a read is copied into the connection's own buffer, which
is dropped again once it drains. Complete DATA frames without metadata come out as plain
``bytes`` (the hot path); DATA with metadata and, when ``patterns`` is on, messaging-pattern
frames (0x21-0x3F) come out among the messages as ``Frame`` objects; every other frame comes
out as a ``Frame`` together with the number of messages that preceded it, so callers can keep
the order.
"""

from __future__ import annotations

from typing import Any, Final

from crc32c import crc32c

from ..errors import BadMagic, ChecksumMismatch, FrameTooLarge, ProtocolError, UnsupportedVersion
from ..options import DEFAULT_MAX_FRAME_SIZE
from .frame import (
    CHECKSUM,
    DATA,
    DATA_CHECKED,
    HEADER5,
    HEADER_SIZE,
    KNOWN_FLAGS,
    MAGIC,
    MAGIC_VERSION,
    PATTERN_FIRST,
    PATTERN_LAST,
    SUPPORTED_VERSIONS,
    Frame,
)

__all__ = ["FrameDecoder"]

MIN_READ: Final = 256 * 1024
SCRATCH_SIZE: Final = 256 * 1024


def new_scratch() -> bytearray:
    """A scratch receive buffer to share between the connections of one thread."""
    return bytearray(SCRATCH_SIZE)


HTTP_STARTS: Final = (b"GET ", b"POST", b"HEAD", b"PUT ", b"HTTP")


def _describe_garbage(head: bytes) -> ProtocolError:
    if head[:1] == b"\x16" and head[1:2] == b"\x03":
        return BadMagic(
            "the peer started a TLS handshake on a plaintext connection: use tls:// on both sides"
        )
    if head[:4] in HTTP_STARTS:
        return BadMagic("the peer is speaking HTTP, not the opensocket protocol")
    shown = head[:2].hex(" ")  # only what every split has seen, so the message is stable
    return BadMagic(
        f"the peer sent bytes {shown} where a frame should start (0x4f 0x53 'OS'): "
        "it does not speak the opensocket framed protocol (use --raw for plain streams)"
    )


def _mismatch(body_len: int) -> ChecksumMismatch:
    return ChecksumMismatch(
        f"checksum mismatch in a frame of {body_len} bytes: the data was corrupted in transit"
    )


def check_header_prefix(head: bytes) -> None:
    """Validate the first bytes of a header (magic, version, reserved) as soon as they arrive."""
    if len(head) >= 2 and int.from_bytes(head[:2], "big") != MAGIC:
        if len(head) < 4 and any(start.startswith(head) for start in HTTP_STARTS):
            return  # wait for 4 bytes, so the error says "HTTP" however the input was split
        raise _describe_garbage(head)
    if len(head) >= 3 and head[2] not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(
            f"the peer speaks protocol version {head[2]}, this side speaks "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}: upgrade the older side"
        )
    if len(head) >= 4 and head[3] != 0:
        raise ProtocolError(f"reserved header byte is {head[3]}, must be 0")


class FrameDecoder:
    """Decode frames; enforce the size limit, the magic, the version and checksums."""

    __slots__ = (
        "_buf",
        "_end",
        "_in_scratch",
        "_scratch",
        "_start",
        "frames",
        "max_body",
        "messages",
        "pattern_tuples",
        "patterns",
        "require_checksum",
    )

    def __init__(
        self, max_body: int = DEFAULT_MAX_FRAME_SIZE, *, scratch: bytearray | None = None
    ) -> None:
        self.max_body = max_body
        self.require_checksum = True
        self.patterns = False  # deliver messaging-pattern frames (0x21-0x3F) as messages
        # ... as (type, metadata, payload) tuples rather than Frame objects (a runtime that
        # feeds them to a messaging Bridge opts in: a tuple is several times cheaper)
        self.pattern_tuples = False
        # DATA payloads and Frames; pattern tuples too once ``pattern_tuples`` is on (typed
        # loosely so that callers who never opt in keep their bytes | Frame view)
        self.messages: list[Any] = []
        self.frames: list[tuple[int, Frame]] = []
        self._scratch = scratch
        self._buf: bytearray | None = None
        self._start = 0
        self._end = 0
        self._in_scratch = False

    @property
    def buffered(self) -> int:
        """Bytes held for a frame that is not complete yet."""
        return self._end - self._start

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Return writable memory for the next read; pass the count to ``buffer_updated``."""
        if self._start == self._end and self._scratch is not None:
            self._in_scratch = True
            return memoryview(self._scratch)
        self._in_scratch = False
        self._make_room()
        assert self._buf is not None
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Decode after ``nbytes`` were written into the buffer from ``get_buffer``.

        While a control frame waits in ``frames`` the bytes are only stored: decoding resumes
        with ``decode_pending`` once the connection has applied that frame.
        """
        paused = bool(self.frames)
        if self._in_scratch:
            self._in_scratch = False
            assert self._scratch is not None
            view = memoryview(self._scratch)
            pos = 0 if paused else self._decode(view, 0, nbytes)
            if pos < nbytes:
                self._keep(view[pos:nbytes])
            return
        self._end += nbytes
        if paused:
            return
        assert self._buf is not None
        self._start = self._decode(memoryview(self._buf), self._start, self._end)
        if self._start == self._end:
            self._start = self._end = 0
            if self._scratch is not None:
                self._buf = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Decode bytes that arrived some other way (copies them)."""
        view = memoryview(data).cast("B")
        while view:
            buf = self.get_buffer()
            count = min(len(buf), len(view))
            buf[:count] = view[:count]
            del buf
            self.buffer_updated(count)
            view = view[count:]

    def _needed(self) -> int:
        """Total size of the frame being assembled, when its header is in."""
        if self._buf is None or self._end - self._start < HEADER_SIZE:
            return HEADER_SIZE
        # Clamped: after a stop the connection may close before this header is checked.
        length = int.from_bytes(self._buf[self._start + 12 : self._start + 16], "big")
        return HEADER_SIZE + min(length, self.max_body)

    def _make_room(self) -> None:
        pending = self._end - self._start
        want = max(self._needed(), pending + MIN_READ)
        buf = self._buf
        if buf is not None and len(buf) >= want:
            if len(buf) - self._end < MIN_READ and self._start:
                view = memoryview(buf)
                view[:pending] = view[self._start : self._end]
                self._start, self._end = 0, pending
            if len(buf) - self._end > 0:
                return
        new = bytearray(want)
        if buf is not None and pending:
            new[:pending] = buf[self._start : self._end]
        self._buf, self._start, self._end = new, 0, pending

    def _keep(self, tail: memoryview) -> None:
        size = len(tail)
        header_in = size >= HEADER_SIZE
        need = HEADER_SIZE + int.from_bytes(tail[12:16], "big") if header_in else HEADER_SIZE
        self._buf = bytearray(max(size + MIN_READ, min(need, self.max_body + HEADER_SIZE)))
        self._buf[:size] = tail
        self._start, self._end = 0, size

    def _decode(self, view: memoryview, pos: int, end: int) -> int:
        unpack = HEADER5.unpack_from
        append = self.messages.append
        limit = self.max_body
        require = self.require_checksum
        patterns = self.patterns
        tuples = self.pattern_tuples
        while end - pos >= HEADER_SIZE:
            magic, crc, kind, meta_len, body_len = unpack(view, pos)
            if magic != MAGIC_VERSION:
                check_header_prefix(bytes(view[pos : pos + 4]))
            if body_len > limit:
                raise FrameTooLarge(
                    f"the peer sent a frame of {body_len} bytes; the limit is {limit} bytes"
                )
            stop = pos + HEADER_SIZE + body_len
            if stop > end:
                break
            if kind == DATA_CHECKED and not meta_len:
                # The hot path: one slice feeds both the CRC and the payload copy.
                frame = view[pos + 8 : stop]
                if crc32c(frame) != crc:
                    raise _mismatch(body_len)
                append(frame[8:].tobytes())
                pos = stop
                continue
            ftype, flags = kind >> 8, kind & 0xFF
            if (
                patterns
                and PATTERN_FIRST <= ftype <= PATTERN_LAST
                and (flags == CHECKSUM or not (flags or require))
                and meta_len <= body_len
            ):
                # The pattern hot path: no per-frame call into the general case below.
                if flags and crc32c(view[pos + 8 : stop]) != crc:
                    raise _mismatch(body_len)
                mid = pos + HEADER_SIZE + meta_len
                meta = view[pos + HEADER_SIZE : mid].tobytes()
                payload = view[mid:stop].tobytes()
                append((ftype, meta, payload) if tuples else Frame(ftype, flags, meta, payload))
                pos = stop
                continue
            if flags & CHECKSUM:
                if crc32c(view[pos + 8 : stop]) != crc:
                    raise _mismatch(body_len)
            elif require:
                raise ChecksumMismatch("a frame arrived without the checksum this link requires")
            start = pos + HEADER_SIZE
            if ftype == DATA and not meta_len and (flags == CHECKSUM or not flags):
                append(bytes(view[start:stop]))
                pos = stop
                continue
            pos = stop
            if self._slow_frame(view, ftype, flags, meta_len, body_len, start, stop):
                # A control frame can change what the next frames must look like (a
                # handshake frame: checksums, size limit) or end the connection (CLOSE,
                # ERROR, a frame not allowed now): let the connection apply it first, so
                # the outcome never depends on how the input was split into reads.
                return pos
        if 0 < end - pos < HEADER_SIZE:
            check_header_prefix(bytes(view[pos : min(end, pos + 4)]))
        return pos

    def _slow_frame(
        self,
        view: memoryview,
        ftype: int,
        flags: int,
        meta_len: int,
        body_len: int,
        start: int,
        stop: int,
    ) -> bool:
        if flags & ~KNOWN_FLAGS:
            raise ProtocolError(
                f"frame flags 0x{flags:02x} include bits this version does not support"
            )
        if meta_len > body_len:
            raise ProtocolError(f"metadata length {meta_len} exceeds body length {body_len}")
        meta = bytes(view[start : start + meta_len])
        frame = Frame(ftype, flags, meta, bytes(view[start + meta_len : stop]))
        if ftype == DATA or (self.patterns and PATTERN_FIRST <= ftype <= PATTERN_LAST):
            # Pattern frames are messages, in order with DATA; their checksum was already
            # checked by DATA's negotiated rule in ``_decode``.
            self.messages.append(frame)
            return False
        self.frames.append((len(self.messages), frame))
        return True

    def decode_pending(self) -> None:
        """Decode what is still buffered (after a control frame stopped decoding)."""
        if self._buf is None or self._start == self._end:
            return
        self._start = self._decode(memoryview(self._buf), self._start, self._end)
        if self._start == self._end:
            self._start = self._end = 0
            if self._scratch is not None:
                self._buf = None
