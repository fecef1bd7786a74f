"""The pattern hot paths: tuples out of the decoder, frames framed once for many connections,
and the cached headers giving the same bytes as the reference encoder."""

from __future__ import annotations

import itertools

import pytest

from opensocket.errors import ChecksumMismatch, ConfigError, FrameTooLarge
from opensocket.protocol import State
from opensocket.protocol.frame import Frame, frame_bytes
from opensocket.protocol.patterns import encode_frames, pattern_parts

from .helpers import feed_buffer, feed_receive, terminated
from .test_patterns import STREAM, opened_server, pattern_pair, wire


def as_tuples(stream: list[tuple[object, ...]]) -> list[object]:
    out: list[object] = []
    for item in stream:
        if item[0] == "data":
            out.append(item[1])
        elif item[0] == "frame":
            out.append((item[1], item[2], item[3]))
        else:  # DATA with metadata stays a Frame
            out.append(Frame(0x20, 1, item[1], item[2]))  # type: ignore[arg-type]
    return out


def test_tuples_come_out_in_order_for_every_split() -> None:
    data = wire(STREAM)
    want = as_tuples(STREAM)
    cuts = [[data[:cut], data[cut:]] for cut in range(1, len(data))]
    cuts.append([data[i : i + 1] for i in range(len(data))])
    for scratch, feed in itertools.product((False, True), (feed_receive, feed_buffer)):
        for chunks in cuts:
            conn = opened_server("on", scratch)
            conn.deliver_pattern_tuples()
            for chunk in chunks:
                feed(conn, chunk, 1.0)
            assert conn.take_messages() == want, (scratch, feed, len(chunks))
            assert conn.state is State.OPEN


def test_tuples_can_be_switched_off_again() -> None:
    conn = opened_server("on", False)
    conn.deliver_pattern_tuples()
    conn.receive_data(frame_bytes(0x21, b"a", meta=b"\x01\x00"), 1.0)
    conn.deliver_pattern_tuples(False)
    conn.receive_data(frame_bytes(0x21, b"b", meta=b"\x01\x00"), 1.0)
    assert conn.take_messages() == [(0x21, b"\x01\x00", b"a"), Frame(0x21, 1, b"\x01\x00", b"b")]


def test_the_fast_path_still_checks_every_checksum() -> None:
    conn = opened_server("on", False)
    conn.deliver_pattern_tuples()
    good = frame_bytes(0x21, b"fine", meta=b"\x01\x00")
    bad = bytearray(frame_bytes(0x21, b"corrupt", meta=b"\x01\x00"))
    bad[-1] ^= 0x40
    conn.receive_data(good + bytes(bad), 1.0)
    assert isinstance(terminated(conn).error, ChecksumMismatch)


def test_metadata_longer_than_the_body_is_refused() -> None:
    conn = opened_server("off", False)
    data = bytearray(frame_bytes(0x21, b"ab", checksum=False, meta=b"\x01\x00"))
    data[10:12] = (9).to_bytes(2, "big")  # meta length 9 in a 4-byte body
    conn.receive_data(bytes(data), 1.0)
    assert "exceeds body length" in str(terminated(conn).error)


@pytest.mark.parametrize("checksum", [True, False])
def test_cached_headers_give_the_reference_bytes(checksum: bool) -> None:
    frames = [
        (0x21, b"\x01\x00", b"abc"),
        (0x21, b"\x01\x00", b"abc"),  # a cache hit
        (0x22, b"\x01\x40" + bytes(7) + b"\x05", b"numbered"),  # never cached
        (0x24, b"\x01\x80\x00\x01t", b"x" * 100),
        (0x21, bytearray(b"\x01\x00"), memoryview(b"views")),
    ]
    parts, total = pattern_parts(frames, checksum=checksum, limit=1 << 20)  # type: ignore[arg-type]
    want = b"".join(
        frame_bytes(t, bytes(p), checksum=checksum, meta=bytes(m)) for t, m, p in frames
    )
    assert b"".join(parts) == want
    assert total == sum(len(m) + len(p) for _, m, p in frames)


def test_encoded_frames_go_out_on_several_connections_unchanged() -> None:
    pairs = [pattern_pair("on"), pattern_pair("on")]
    frames = [(0x21, b"\x01\x00", b"one"), (0x24, b"\x01\x80\x00\x01t", b"two")]
    batch = encode_frames(frames, checksum=True)
    assert batch.count == 2 and batch.largest == len(b"\x01\x80\x00\x01t") + 3
    for pair in pairs:
        pair.client.send_encoded(batch)
        pair.client.send_frames(frames)
        assert pair.c2s(1.0) == batch.data * 2
        assert pair.server.take_messages() == [Frame(t, 1, m, p) for t, m, p in frames] * 2
        assert pair.client.messages_out == 4


def test_encoded_frames_are_checked_against_each_connection() -> None:
    unchecked = pattern_pair("off")
    assert not unchecked.client.checksums
    batch = encode_frames([(0x21, b"\x01\x00", b"x")], checksum=True)
    with pytest.raises(ConfigError, match="framed with checksums"):
        unchecked.client.send_encoded(batch)
    small = pattern_pair("on")
    small.client._peer_max = 100  # as if the peer had announced a 100-byte limit
    big = encode_frames([(0x21, b"\x01\x00", b"x" * 200)], checksum=True)
    with pytest.raises(FrameTooLarge, match="maximum frame size of 100"):
        small.client.send_encoded(big)
    assert not small.client.data_to_send()
    with pytest.raises(ConfigError, match="not a messaging-pattern type"):
        encode_frames([(0x20, b"", b"data")], checksum=True)
