"""Messaging-pattern frames (0x21-0x3F) through the framed core: opt-in, both directions,
any split, checksums, sizes, batches, and the ``pattern`` negotiation in the handshake."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from opensocket.errors import (
    ChecksumMismatch,
    CloseCode,
    CodecError,
    ConfigError,
    ConnectionClosed,
    FrameTooLarge,
    HandshakeError,
    NegotiationFailed,
    UnexpectedFrame,
)
from opensocket.messaging.envelope import decode, decode_hello, encode, encode_hello
from opensocket.options import PATTERNS, ProtocolOptions
from opensocket.protocol import FramedConnection, FrameType, HandshakeComplete, State
from opensocket.protocol import handshake as hs
from opensocket.protocol.connection import JOIN_BELOW
from opensocket.protocol.decoder import new_scratch
from opensocket.protocol.frame import PATTERN_FIRST, PATTERN_LAST, Frame, frame_bytes

from ..messaging.test_envelope import HELLO_HEX, SESSION_ID, VECTORS
from .helpers import (
    Pair,
    client,
    decode_all,
    error_frame,
    feed_buffer,
    feed_receive,
    hello,
    raw_frame,
    server,
    state,
    terminated,
    welcome,
)

COMPATIBLE = {
    ("request", "reply"),
    ("reply", "request"),
    ("publish", "subscribe"),
    ("subscribe", "publish"),
    ("push", "pull"),
    ("pull", "push"),
    ("pair", "pair"),
    (None, None),
}
CHOICES: list[str | None] = [None, *PATTERNS]

# Frames mixing DATA (plain and with metadata) and pattern frames, as (kind, ...) items.
STREAM: list[tuple[Any, ...]] = [
    ("data", b"first"),
    ("frame", 0x22, b"\x01\x40" + bytes(7) + b"\x07", b"ping"),
    ("frame", 0x21, b"\x01\x00", b""),
    ("meta", b"\x09", b"with meta"),
    ("frame", 0x3F, b"", b"last type, no metadata"),
    ("data", b""),
    ("frame", 0x24, b"\x01\x80\x00\x01t", b"x" * 300),
]


def opts(pattern: str | None = None, **kw: Any) -> ProtocolOptions:
    """Options without heartbeats (no pings in the byte streams), with ``pattern``."""
    return ProtocolOptions(heartbeat=0, pattern=pattern, **kw)  # type: ignore[arg-type]


def pattern_pair(checksum: str = "on", **kw: Any) -> Pair:
    """An open request/reply pair with the given checksum setting on both sides."""
    return Pair(opts("request", checksum=checksum), opts("reply", checksum=checksum), **kw).open()


def send_stream(conn: FramedConnection, stream: list[tuple[Any, ...]]) -> None:
    for item in stream:
        if item[0] == "data":
            conn.send(item[1])
        elif item[0] != "meta":  # DATA with metadata has no send path of its own
            conn.send_frame(item[1], item[2], item[3])


def expected(stream: list[tuple[Any, ...]], flags: int) -> list[bytes | Frame]:
    out: list[bytes | Frame] = []
    for item in stream:
        if item[0] == "data":
            out.append(item[1])
        elif item[0] == "frame":
            out.append(Frame(item[1], flags, item[2], item[3]))
    return out


def wire(stream: list[tuple[Any, ...]], checksum: bool = True) -> bytes:
    """The stream encoded independently of the connection's send path."""
    parts = []
    for item in stream:
        if item[0] == "data":
            parts.append(frame_bytes(FrameType.DATA, item[1], checksum=checksum))
        elif item[0] == "meta":
            parts.append(frame_bytes(FrameType.DATA, item[2], checksum=checksum, meta=item[1]))
        else:
            parts.append(frame_bytes(item[1], item[3], checksum=checksum, meta=item[2]))
    return b"".join(parts)


# ---- both directions, checksums -----------------------------------------------------------


@pytest.mark.parametrize("checksum", ["on", "off"])
def test_frames_flow_both_ways_in_order_with_data(checksum: str) -> None:
    pair = pattern_pair(checksum)
    flags = 1 if checksum == "on" else 0
    send_stream(pair.client, STREAM)
    send_stream(pair.server, STREAM)
    c2s, s2c = pair.c2s(1.0), pair.s2c(1.0)
    plain = [item for item in STREAM if item[0] != "meta"]
    assert c2s == s2c == wire(plain, checksum == "on")  # the exact bytes, both directions
    assert pair.server.take_messages() == expected(STREAM, flags)
    assert pair.client.take_messages() == expected(STREAM, flags)
    count = len(plain)
    assert pair.client.messages_out == pair.server.messages_in == count
    assert pair.server.messages_out == pair.client.messages_in == count
    assert pair.client.frames_out == pair.client.control_out + count
    assert state(pair.client) is State.OPEN and state(pair.server) is State.OPEN


def test_pattern_frames_keep_their_place_around_control_frames() -> None:
    pair = pattern_pair()
    data = (
        frame_bytes(0x21, b"a", meta=b"\x01\x00")
        + frame_bytes(FrameType.PING, b"12345678")
        + frame_bytes(FrameType.DATA, b"b")
        + frame_bytes(0x23, b"c", meta=b"\x01\x44" + bytes(8))
    )
    pair.server.receive_data(data, 1.0)
    assert pair.server.take_messages() == [
        Frame(0x21, 1, b"\x01\x00", b"a"),
        b"b",
        Frame(0x23, 1, b"\x01\x44" + bytes(8), b"c"),
    ]
    pong = decode_all(pair.server.data_to_send())
    assert pong == [Frame(FrameType.PONG, 1, b"", b"12345678")]


def opened_server(checksum: str, scratch: bool) -> FramedConnection:
    kw: dict[str, Any] = {"scratch": new_scratch()} if scratch else {}
    conn = server(opts("reply", checksum=checksum), tls=True, **kw)
    conn.receive_data(hello(pattern="request", checksum=checksum == "on"), 0.0)
    assert conn.state is State.OPEN
    conn.data_to_send()
    conn.events()
    return conn


@pytest.mark.parametrize("checksum", ["on", "off"])
def test_every_split_through_both_input_paths_gives_the_same_messages(checksum: str) -> None:
    data = wire(STREAM, checksum == "on")
    flags = 1 if checksum == "on" else 0
    want = [
        item[1]
        if item[0] == "data"
        else Frame(FrameType.DATA if item[0] == "meta" else item[1], flags, *item[-2:])
        for item in STREAM
    ]
    splits = [[data[i : i + 1] for i in range(len(data))]]
    splits += [[data[:cut], data[cut:]] for cut in range(1, len(data))]
    for scratch, feed in itertools.product((False, True), (feed_receive, feed_buffer)):
        for chunks in splits:
            conn = opened_server(checksum, scratch)
            for chunk in chunks:
                feed(conn, chunk, 1.0)
            assert conn.take_messages() == want, (scratch, feed, len(chunks))
            assert conn.state is State.OPEN
            assert not conn.data_to_send()


def test_checksum_is_required_on_pattern_frames_when_negotiated() -> None:
    pair = pattern_pair("on")
    pair.server.receive_data(frame_bytes(0x21, b"x", checksum=False, meta=b"\x01\x00"), 1.0)
    end = terminated(pair.server)
    assert isinstance(end.error, ChecksumMismatch)
    assert pair.server.take_messages() == []
    assert error_frame(pair.server.data_to_send())[0] == end.code


def test_corrupted_pattern_frame_is_caught_by_its_checksum() -> None:
    pair = pattern_pair("on")
    data = bytearray(frame_bytes(0x22, b"payload", meta=b"\x01\x40" + bytes(8)))
    data[-1] ^= 0x01
    pair.server.receive_data(bytes(data), 1.0)
    assert isinstance(terminated(pair.server).error, ChecksumMismatch)


def test_unchecked_link_still_verifies_a_pattern_frame_that_carries_a_checksum() -> None:
    pair = pattern_pair("off", tls=True)
    good = frame_bytes(0x21, b"ok", meta=b"\x01\x00")
    bad = bytearray(good)
    bad[-1] ^= 0x01
    pair.server.receive_data(good, 1.0)
    assert pair.server.take_messages() == [Frame(0x21, 1, b"\x01\x00", b"ok")]
    pair.server.receive_data(bytes(bad), 1.0)
    assert isinstance(terminated(pair.server).error, ChecksumMismatch)


# ---- opt-in -------------------------------------------------------------------------------


@pytest.mark.parametrize("ftype", [PATTERN_FIRST, 0x2C, PATTERN_LAST])
def test_without_the_opt_in_pattern_frames_are_rejected_as_before(ftype: int) -> None:
    pair = Pair(opts(), opts()).open()
    pair.client.send(b"before")
    pair.c2s()
    pair.server.receive_data(frame_bytes(ftype, b"x", meta=b"\x01\x00"), 1.0)
    end = terminated(pair.server)
    assert isinstance(end.error, UnexpectedFrame)
    assert end.code == CloseCode.PROTOCOL_ERROR
    assert str(end.error) == f"unexpected {hex(ftype)} frame in state done"
    assert pair.server.take_messages() == [b"before"]


def test_without_the_opt_in_nothing_can_be_sent() -> None:
    pair = Pair(opts(), opts()).open()
    with pytest.raises(ConfigError, match="pattern frames are off on this connection"):
        pair.client.send_frame(0x21, b"\x01\x00", b"x")
    assert pair.client.pending_output == 0
    assert pair.client.messages_out == 0


def test_constructor_opt_in_works_without_negotiating_a_pattern() -> None:
    pair = Pair(opts(), opts(), patterns=True).open()
    assert pair.handshake("client").pattern is None
    pair.client.send_frame(0x2B, b"\x01\x00", b"\x00\x00\x00\x01")
    pair.c2s()
    assert pair.server.take_messages() == [Frame(0x2B, 1, b"\x01\x00", b"\x00\x00\x00\x01")]


def test_opt_in_on_one_side_only_still_rejects_on_the_other() -> None:
    pair = Pair(opts(), opts(), c_patterns=True).open()
    pair.client.send_frame(0x21, b"\x01\x00", b"x")
    pair.c2s()
    assert isinstance(terminated(pair.server).error, UnexpectedFrame)


def test_pattern_frames_are_rejected_during_the_handshake_even_when_opted_in() -> None:
    conn = server(opts("reply"))
    conn.receive_data(frame_bytes(0x22, b"x", meta=b"\x01\x40" + bytes(8)), 0.0)
    end = terminated(conn)
    assert isinstance(end.error, UnexpectedFrame)
    assert "in state await_hello" in str(end.error)


def test_nothing_is_sent_before_open_or_after_close() -> None:
    conn = client(opts("request"))
    with pytest.raises(HandshakeError, match="has not finished"):
        conn.send_frame(0x22, b"\x01\x40" + bytes(8), b"x")
    pair = pattern_pair()
    pair.client.close(1.0)
    with pytest.raises(ConnectionClosed):
        pair.client.send_frame(0x22, b"\x01\x40" + bytes(8), b"x")


# ---- sending: types, sizes, batches -------------------------------------------------------


@pytest.mark.parametrize("ftype", [0x00, 0x12, FrameType.DATA, 0x40, 0x80, 0xFF, -1, 256])
def test_types_outside_the_pattern_range_are_refused(ftype: int) -> None:
    pair = pattern_pair()
    with pytest.raises(ConfigError, match=r"is not a messaging-pattern type \(0x21-0x3f\)"):
        pair.client.send_frame(ftype, b"", b"x")
    assert pair.client.pending_output == 0


def test_the_peers_limit_applies_to_metadata_and_payload_together() -> None:
    pair = Pair(opts("push", max_frame_size=100), opts("pull", max_frame_size=100)).open()
    pair.client.send_frame(0x21, b"m" * 40, b"p" * 60)  # exactly the limit
    with pytest.raises(FrameTooLarge, match=r"a message of 101 bytes exceeds .* 100 bytes"):
        pair.client.send_frame(0x21, b"m" * 41, b"p" * 60)
    pair.c2s()
    assert pair.server.take_messages() == [Frame(0x21, 1, b"m" * 40, b"p" * 60)]


def test_a_received_pattern_frame_over_our_limit_is_refused() -> None:
    pair = Pair(opts("push"), opts("pull", max_frame_size=100)).open()
    pair.server.receive_data(frame_bytes(0x21, b"p" * 100, meta=b"\x01\x00"), 1.0)
    end = terminated(pair.server)
    assert isinstance(end.error, FrameTooLarge)
    assert end.code == CloseCode.TOO_LARGE


def test_metadata_over_the_16_bit_field_is_refused() -> None:
    pair = pattern_pair()
    with pytest.raises(FrameTooLarge, match="metadata of 65536 bytes exceeds 65535"):
        pair.client.send_frame(0x21, bytes(65536), b"")
    pair.client.send_frame(0x21, bytes(65535), b"p")
    pair.c2s()
    assert pair.server.take_messages() == [Frame(0x21, 1, bytes(65535), b"p")]


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ((0x21, b"", "text"), CodecError, "frame 2: a payload must be bytes-like, not str"),
        ((0x21, "meta", b""), CodecError, "frame 2: the metadata must be bytes-like, not str"),
        (("0x21", b"", b""), ConfigError, "frame 2: the frame type must be an int, not str"),
        ((33.0, b"", b""), ConfigError, "frame 2: the frame type must be an int, not float"),
        ((0x21, b"", b"x" * JOIN_BELOW + b"!"), CodecError, "frame 4: a payload"),
        ((0x20, b"", b""), ConfigError, "0x20 is not a messaging-pattern type"),
        ((0x21, b"", b"x" * (1 << 25)), FrameTooLarge, "exceeds the peer's maximum"),
    ],
)
@pytest.mark.parametrize("checksum", ["on", "off"])
def test_a_batch_is_queued_whole_or_not_at_all(
    bad: tuple[Any, ...], error: type[Exception], message: str, checksum: str
) -> None:
    pair = pattern_pair(checksum)
    good = (0x21, b"\x01\x00", b"ok")
    with pytest.raises(error, match=message):
        pair.client.send_frames([good, good, bad, good, (0x21, b"", [1])])  # type: ignore[list-item]
    assert pair.client.pending_output == 0
    assert pair.client.messages_out == 0
    pair.client.send_frames([good])
    pair.c2s()
    flags = 1 if checksum == "on" else 0
    assert pair.server.take_messages() == [Frame(0x21, flags, b"\x01\x00", b"ok")]
    assert state(pair.server) is State.OPEN


@pytest.mark.parametrize("size", [8, JOIN_BELOW])  # one join, and part by part
@pytest.mark.parametrize("checksum", ["on", "off"])
def test_batch_send_gives_the_same_bytes_as_single_frames(size: int, checksum: str) -> None:
    frames = [
        (0x21 + i % 12, b"\x01\x10" + i.to_bytes(8, "big"), bytes([i % 256]) * (size + i % 3))
        for i in range(300)
    ]
    batch, single = pattern_pair(checksum), pattern_pair(checksum)
    batch.client.send_frames(frames)
    batch.client.send_frames([])
    for frame in frames:
        single.client.send_frame(*frame)
    assert batch.client.messages_out == single.client.messages_out == 300
    data = bytes(batch.client.data_to_send())
    assert data == bytes(single.client.data_to_send())
    assert data == b"".join(
        frame_bytes(t, p, checksum=checksum == "on", meta=m) for t, m, p in frames
    )
    batch.server.receive_data(data, 1.0)
    flags = 1 if checksum == "on" else 0
    assert batch.server.take_messages() == [Frame(t, flags, m, p) for t, m, p in frames]
    assert batch.server.messages_in == 300


def test_payloads_of_any_buffer_type_are_framed_without_change() -> None:
    pair = pattern_pair()
    pair.client.send_frames(
        [(0x21, b"\x01\x00", bytearray(b"ba")), (0x21, b"\x01\x00", memoryview(b"mv"))]
    )
    pair.c2s()
    assert [m.payload for m in pair.server.take_messages()] == [b"ba", b"mv"]  # type: ignore[union-attr]


# ---- the messaging package's envelopes through the connection ---------------------------


@pytest.mark.parametrize("name", list(VECTORS))
def test_envelope_vectors_round_trip_through_the_connection(name: str) -> None:
    env, ftype, meta, payload, whole = VECTORS[name]
    pair = pattern_pair("on")
    pair.client.send_frame(*encode(env))
    sent = pair.c2s(1.0)
    assert sent.hex() == whole  # the documented frame, byte for byte
    (frame,) = pair.server.take_messages()
    assert isinstance(frame, Frame)
    assert (frame.type, frame.meta.hex(), frame.payload.hex()) == (ftype, meta, payload)
    assert decode(frame.type, frame.meta, frame.payload) == env


def test_session_hello_round_trips_through_the_connection() -> None:
    from opensocket.messaging.envelope import SessionHello

    hello_frame = encode_hello(SessionHello(SESSION_ID, 5, 9, 6))
    pair = pattern_pair("off", tls=True)
    pair.server.send_frame(*hello_frame)
    pair.s2c(1.0)
    (frame,) = pair.client.take_messages()
    assert isinstance(frame, Frame)
    assert frame.payload.hex() == HELLO_HEX
    assert frame.flags == 0
    assert decode_hello(decode(frame.type, frame.meta, frame.payload)) == SessionHello(
        SESSION_ID, 5, 9, 6
    )


# ---- negotiation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("mine", "theirs"), list(itertools.product(CHOICES, CHOICES)))
def test_negotiation_matrix(mine: str | None, theirs: str | None) -> None:
    pair = Pair(opts(mine), opts(theirs))
    pair.exchange()
    if (mine, theirs) in COMPATIBLE:
        assert state(pair.client) is State.OPEN and state(pair.server) is State.OPEN
        done = pair.handshake("client"), pair.handshake("server")
        assert (done[0].pattern, done[0].peer_pattern) == (mine, theirs)
        assert (done[1].pattern, done[1].peer_pattern) == (theirs, mine)
        assert pair.client.patterns is pair.server.patterns is (mine is not None)
        return
    server_end, client_end = pair.terminal("server"), pair.terminal("client")
    assert isinstance(server_end.error, NegotiationFailed)
    assert isinstance(client_end.error, NegotiationFailed)
    assert client_end.by_peer and not server_end.by_peer
    assert client_end.code == server_end.code == CloseCode.NEGOTIATION_FAILED == 4008
    names = {None: "no pattern (a plain link)"}
    text = str(client_end.error)
    assert f"the client has {names.get(mine, repr(mine))}" in text
    assert f"the server has {names.get(theirs, repr(theirs))}" in text


def test_plain_hello_and_welcome_carry_no_pattern_field() -> None:
    pair = Pair(opts(), opts()).open()
    hello_body, welcome_body = (
        decode_all(pair.wire[direction])[0].payload  # type: ignore[union-attr]
        for direction in ("c2s", "s2c")
    )
    assert "pattern" not in json.loads(hello_body)
    assert "pattern" not in json.loads(welcome_body)


def test_hello_and_welcome_carry_each_sides_pattern() -> None:
    pair = Pair(opts("subscribe"), opts("publish")).open()
    hello_body, welcome_body = (
        decode_all(pair.wire[direction])[0].payload  # type: ignore[union-attr]
        for direction in ("c2s", "s2c")
    )
    assert json.loads(hello_body)["pattern"] == "subscribe"
    assert json.loads(welcome_body)["pattern"] == "publish"
    done = pair.handshake("server")
    assert isinstance(done, HandshakeComplete)
    assert (done.pattern, done.peer_pattern) == ("publish", "subscribe")


def test_version_1_client_without_the_field_talks_to_a_plain_server_unchanged() -> None:
    conn = server(opts())
    conn.receive_data(hello(), 0.0)
    assert conn.state is State.OPEN
    (welcome_frame,) = decode_all(conn.data_to_send())
    assert "pattern" not in json.loads(welcome_frame.payload)  # type: ignore[union-attr]
    assert conn.patterns is False


def test_version_1_client_without_the_field_is_refused_by_a_pattern_server() -> None:
    conn = server(opts("reply"))
    conn.receive_data(hello(), 0.0)
    code, reason = error_frame(conn.data_to_send())
    assert code == CloseCode.NEGOTIATION_FAILED
    assert "the client has no pattern (a plain link), the server has 'reply'" in reason


def test_a_pattern_client_refuses_a_server_that_ignores_the_field() -> None:
    """A version 1 server that predates patterns answers without the field: refused."""
    conn = client(opts("request"))
    conn.data_to_send()
    conn.receive_data(welcome(), 0.0)
    end = terminated(conn)
    assert isinstance(end.error, NegotiationFailed)
    assert end.code == CloseCode.NEGOTIATION_FAILED
    assert "answered without a messaging pattern" in str(end.error)
    assert "connect to a 'reply' socket" in str(end.error)
    assert error_frame(conn.data_to_send())[0] == CloseCode.NEGOTIATION_FAILED


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (5, HandshakeError, "HELLO field 'pattern' is missing or has the wrong type"),
        (True, HandshakeError, "HELLO field 'pattern' is missing or has the wrong type"),
        ("dealer", NegotiationFailed, "HELLO names messaging pattern 'dealer'"),
    ],
)
def test_bad_pattern_fields_fail_the_handshake(
    value: object, error: type[Exception], message: str
) -> None:
    conn = server(opts("reply"))
    conn.receive_data(hello(pattern=value), 0.0)
    end = terminated(conn)
    assert isinstance(end.error, error)
    assert message in str(end.error)


def test_a_welcome_naming_an_incompatible_pattern_is_refused_by_the_client() -> None:
    conn = client(opts("push"))
    conn.data_to_send()
    conn.receive_data(welcome(pattern="subscribe"), 0.0)
    end = terminated(conn)
    assert isinstance(end.error, NegotiationFailed)
    assert "the client has 'push', the server has 'subscribe'" in str(end.error)


def test_pattern_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="unknown messaging pattern 'dealer'"):
        ProtocolOptions(pattern="dealer")  # type: ignore[arg-type]
    assert {hs.PEER_PATTERN[hs.PEER_PATTERN[p]] for p in PATTERNS} == set(PATTERNS)


def test_raw_pattern_frame_with_unknown_flags_is_still_a_protocol_error() -> None:
    pair = pattern_pair()
    pair.server.receive_data(raw_frame(0x21, b"\x01\x00x", flags=0x03, meta_len=2), 1.0)
    end = terminated(pair.server)
    assert "flags 0x03" in str(end.error)
