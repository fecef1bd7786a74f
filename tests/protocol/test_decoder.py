"""FrameDecoder: round trips, arbitrary splits, both buffer paths, and every size limit."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensocket.errors import FrameTooLarge, ProtocolError
from opensocket.protocol.decoder import MIN_READ, SCRATCH_SIZE, FrameDecoder, new_scratch
from opensocket.protocol.frame import (
    HEADER_SIZE,
    Flags,
    Frame,
    FrameType,
    encode_frame,
    frame_bytes,
)

from .helpers import chunks_of

FAST = settings(max_examples=60, deadline=None)

# A frame to encode: (type, payload, meta, checksum).
FrameSpec = tuple[int, bytes, bytes, bool]

frame_types = st.sampled_from([int(t) for t in FrameType]) | st.integers(0, 255)
frame_specs = st.tuples(
    frame_types,
    st.binary(max_size=300),
    st.binary(max_size=20),
    st.booleans(),
)
data_specs = st.tuples(
    st.just(int(FrameType.DATA)), st.binary(max_size=2000), st.just(b""), st.booleans()
)
cuts = st.lists(st.integers(0, 5000), max_size=20)


def encode(specs: list[FrameSpec]) -> bytes:
    out = bytearray()
    for ftype, payload, meta, checksum in specs:
        encode_frame(out, ftype, payload, checksum=checksum, meta=meta)
    return bytes(out)


def expected(specs: list[FrameSpec]) -> list[bytes | Frame]:
    """What decoding must give: plain DATA as bytes, everything else as Frame, in order."""
    out: list[bytes | Frame] = []
    for ftype, payload, meta, checksum in specs:
        if ftype == FrameType.DATA and not meta:
            out.append(payload)
        else:
            out.append(Frame(ftype, Flags.CHECKSUM if checksum else 0, meta, payload))
    return out


def drain(decoder: FrameDecoder) -> list[bytes | Frame]:
    """Take decoded output in wire order, resuming after control frames."""
    out: list[bytes | Frame] = []
    while decoder.frames or decoder.messages:
        taken = 0
        for index, frame in decoder.frames:
            out += decoder.messages[taken:index]
            out.append(frame)
            taken = index
        out += decoder.messages[taken:]
        decoder.messages, decoder.frames = [], []
        decoder.decode_pending()
    return out


def via_feed(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes | Frame]:
    out: list[bytes | Frame] = []
    for chunk in chunks:
        decoder.feed(chunk)
        out += drain(decoder)
    return out


def via_buffer(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes | Frame]:
    """Write into get_buffer() as a BufferedProtocol does (one read may be cut by the buffer)."""
    out: list[bytes | Frame] = []
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            buf = decoder.get_buffer(-1)
            count = min(len(buf), len(view))
            buf[:count] = view[:count]
            del buf
            decoder.buffer_updated(count)
            out += drain(decoder)
            view = view[count:]
    return out


Feed = Callable[[FrameDecoder, list[bytes]], list[bytes | Frame]]
DECODERS: dict[str, Callable[[], FrameDecoder]] = {
    "own buffer": lambda: FrameDecoder(1 << 20),
    "scratch": lambda: FrameDecoder(1 << 20, scratch=new_scratch()),
    "small scratch": lambda: FrameDecoder(1 << 20, scratch=bytearray(7)),
}


def decode_with(
    make: Callable[[], FrameDecoder], feed: Feed, chunks: list[bytes]
) -> list[bytes | Frame]:
    decoder = make()
    decoder.require_checksum = False
    out = feed(decoder, chunks)
    assert decoder.buffered == 0
    return out


@FAST
@given(st.binary(max_size=5000), st.booleans())
def test_data_round_trip(payload: bytes, checksum: bool) -> None:
    decoder = FrameDecoder()
    decoder.require_checksum = checksum
    decoder.feed(frame_bytes(FrameType.DATA, payload, checksum=checksum))
    assert decoder.messages == [payload]
    assert decoder.frames == []


@FAST
@given(frame_specs)
def test_every_frame_type_round_trips(spec: FrameSpec) -> None:
    decoder = FrameDecoder()
    decoder.require_checksum = False
    decoder.feed(encode([spec]))
    assert drain(decoder) == expected([spec])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(frame_specs, data_specs), max_size=8), cuts)
def test_any_split_gives_the_same_frames(specs: list[FrameSpec], cut: list[int]) -> None:
    data = encode(specs)
    want = expected(specs)
    for make in DECODERS.values():
        for feed in (via_feed, via_buffer):
            assert decode_with(make, feed, [data]) == want
            assert decode_with(make, feed, chunks_of(data, cut)) == want
    byte_by_byte = [data[i : i + 1] for i in range(len(data))]
    assert decode_with(DECODERS["scratch"], via_buffer, byte_by_byte) == want
    assert decode_with(DECODERS["own buffer"], via_feed, byte_by_byte) == want


@FAST
@given(st.lists(data_specs, max_size=5), st.binary(min_size=1, max_size=40), cuts)
def test_trailing_junk_gives_the_same_outcome_for_any_split(
    specs: list[FrameSpec], junk: bytes, cut: list[int]
) -> None:
    data = encode(specs) + junk
    splits = [[data], chunks_of(data, cut), [data[i : i + 1] for i in range(len(data))]]
    outcomes = set()
    for make in DECODERS.values():
        for feed in (via_feed, via_buffer):
            for chunks in splits:
                decoder = make()
                decoder.require_checksum = False
                got: list[bytes | Frame] = []
                error = None
                try:
                    for chunk in chunks:
                        got += feed(decoder, [chunk])
                except ProtocolError as exc:
                    error = (type(exc), str(exc))
                    got += decoder.messages  # decoded before the junk was seen
                assert got[: len(specs)] == expected(specs)
                outcomes.add((tuple(got), error))
    assert len(outcomes) == 1, outcomes


def test_large_frames_across_many_reads() -> None:
    """Frames larger than the scratch buffer and than one read, with and without scratch."""
    payloads = [b"a" * (SCRATCH_SIZE + 12345), b"b" * (3 * MIN_READ + 1), b"c"]
    data = b"".join(frame_bytes(FrameType.DATA, p) for p in payloads)
    for make in DECODERS.values():
        for size in (1000, MIN_READ, MIN_READ + 17, 3 * MIN_READ):
            chunks = [data[i : i + size] for i in range(0, len(data), size)]
            assert decode_with(make, via_buffer, chunks) == payloads


def test_scratch_is_released_when_idle() -> None:
    scratch = new_scratch()
    decoder = FrameDecoder(scratch=scratch)
    data = frame_bytes(FrameType.DATA, b"x" * 100)
    buf = decoder.get_buffer()
    assert buf.obj is scratch
    buf[:50] = data[:50]
    del buf
    decoder.buffer_updated(50)
    assert decoder.buffered == 50
    buf = decoder.get_buffer()
    assert buf.obj is not scratch
    buf[: len(data) - 50] = data[50:]
    del buf
    decoder.buffer_updated(len(data) - 50)
    assert decoder.messages == [b"x" * 100]
    assert decoder.buffered == 0
    assert decoder.get_buffer().obj is scratch


def test_scratch_shared_by_two_decoders() -> None:
    """One scratch for many connections: each keeps only its own cut tail."""
    scratch = bytearray(64)
    left, right = FrameDecoder(scratch=scratch), FrameDecoder(scratch=scratch)
    a = b"".join(frame_bytes(FrameType.DATA, bytes([i]) * i) for i in range(40))
    b = b"".join(frame_bytes(FrameType.DATA, bytes([i]) * (2 * i)) for i in range(30))
    got: dict[int, list[bytes | Frame]] = {0: [], 1: []}
    pos = [0, 0]
    for turn in range(10_000):
        side = turn % 2
        decoder, data = (left, a) if side == 0 else (right, b)
        if pos[side] >= len(data):
            if pos[1 - side] >= len(b if side == 0 else a):
                break
            continue
        buf = decoder.get_buffer()
        count = min(len(buf), 23, len(data) - pos[side])
        buf[:count] = data[pos[side] : pos[side] + count]
        del buf
        decoder.buffer_updated(count)
        pos[side] += count
        got[side] += drain(decoder)
    assert got[0] == [bytes([i]) * i for i in range(40)]
    assert got[1] == [bytes([i]) * (2 * i) for i in range(30)]


def test_own_buffer_compacts_instead_of_growing() -> None:
    decoder = FrameDecoder()
    frame = frame_bytes(FrameType.DATA, b"z" * 1000)
    stream = frame * 1000
    sizes = set()
    out: list[bytes | Frame] = []
    for i in range(0, len(stream), 1500):
        out += via_buffer(decoder, [stream[i : i + 1500]])
        if decoder._buf is not None:
            sizes.add(len(decoder._buf))
    assert out == [b"z" * 1000] * 1000
    assert max(sizes) <= 2 * 2 * MIN_READ


def test_size_limit_is_checked_from_the_header_alone() -> None:
    decoder = FrameDecoder(100)
    decoder.feed(frame_bytes(FrameType.DATA, b"x" * 100))
    assert decoder.messages == [b"x" * 100]
    header = frame_bytes(FrameType.DATA, b"x" * 101)[:HEADER_SIZE]
    with pytest.raises(FrameTooLarge, match="101 bytes; the limit is 100 bytes"):
        decoder.feed(header)


def test_buffer_size_never_trusts_an_unchecked_length() -> None:
    """A header left unchecked (decoding stopped after a control frame) cannot make the
    decoder allocate its claimed size."""
    decoder = FrameDecoder(1000)
    decoder.require_checksum = False
    huge = bytes.fromhex("4f530100 00000000 20000000 fffffff0")
    decoder.feed(frame_bytes(FrameType.PING, b"12345678") + huge)
    assert len(decoder.frames) == 1
    assert decoder.buffered == HEADER_SIZE
    assert len(decoder.get_buffer()) < 4 * MIN_READ
    with pytest.raises(FrameTooLarge):
        decoder.decode_pending()


def test_decode_pending_without_anything_pending() -> None:
    decoder = FrameDecoder(scratch=new_scratch())
    decoder.decode_pending()
    decoder.feed(frame_bytes(FrameType.PING, b"") + frame_bytes(FrameType.PING, b"1"))
    assert len(decoder.frames) == 1
    decoder.decode_pending()
    assert [f.payload for _, f in decoder.frames] == [b"", b"1"]
    assert decoder.buffered == 0
    assert decoder._buf is None  # the scratch decoder gives its own buffer back


@pytest.mark.parametrize("make", list(DECODERS.values()), ids=list(DECODERS))
def test_decoding_pauses_after_a_control_frame(make: Callable[[], FrameDecoder]) -> None:
    """Bytes after a control frame wait, however many reads bring them, until the caller has
    applied the frame (it may change the rules, or end the connection)."""
    decoder = make()
    big = frame_bytes(FrameType.DATA, b"d" * (3 * MIN_READ), checksum=False)
    decoder.feed(frame_bytes(FrameType.PING, b"") + big + b"\x00garbage")
    assert [f.type for _, f in decoder.frames] == [FrameType.PING]
    assert decoder.messages == []
    buf = decoder.get_buffer()
    buf[:12] = b"more garbage"
    del buf
    decoder.buffer_updated(12)  # still paused: nothing is decoded
    assert decoder.messages == []
    assert len(decoder.frames) == 1
    decoder.frames = []
    decoder.require_checksum = False  # what a WELCOME might have changed
    with pytest.raises(ProtocolError, match="where a frame should start"):
        decoder.decode_pending()
    assert decoder.messages == [b"d" * (3 * MIN_READ)]
