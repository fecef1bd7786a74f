"""The pattern envelope, byte for byte (docs: /work/notes/docs-messaging.md, section 1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensocket.errors import MalformedEnvelope, ProtocolError
from opensocket.messaging.envelope import (
    RULES,
    Envelope,
    Kind,
    MetaFlags,
    SessionHello,
    SessionStatus,
    decode,
    decode_credit,
    decode_hello,
    encode,
    encode_credit,
    encode_hello,
)
from opensocket.protocol.decoder import FrameDecoder
from opensocket.protocol.frame import frame_bytes

# name: (envelope, frame type, meta hex, payload hex, whole checksummed frame hex)
VECTORS = {
    "request": (
        Envelope(Kind.REQUEST, b"ping", id=7, flags=MetaFlags.RETRYABLE),
        0x22,
        "01420000000000000007",
        "70696e67",
        "4f530100903b31832201000a0000000e0142000000000000000770696e67",
    ),
    "reply_error": (
        Envelope(Kind.REPLY, b"no", id=7, flags=MetaFlags.ERROR),
        0x23,
        "01440000000000000007",
        "6e6f",
        "4f530100888d39512301000a0000000c014400000000000000076e6f",
    ),
    "publish": (
        Envelope(Kind.PUBLISH, b"21.5", topic=b"temp/paris"),
        0x24,
        "0180000a74656d702f7061726973",
        "32312e35",
        "4f5301007afa41072401000e000000120180000a74656d702f706172697332312e35",
    ),
    "sessioned_message": (
        Envelope(Kind.MESSAGE, b"hi", seq=3, ack=2),
        0x21,
        "013000000000000000030000000000000002",
        "6869",
        "4f5301004230d21b21010012000000140130000000000000000300000000000000026869",
    ),
    "ack": (
        Envelope(Kind.ACK, ack=0x0102030405060708),
        0x28,
        "01200102030405060708",
        "",
        "4f53010094cab7042801000a0000000a01200102030405060708",
    ),
    "done": (
        Envelope(Kind.DONE, id=42, seq=9),
        0x2C,
        "01500000000000000009000000000000002a",
        "",
        "4f530100b77706482c0100120000001201500000000000000009000000000000002a",
    ),
    "credit": (
        Envelope(Kind.CREDIT, encode_credit(100), seq=1),
        0x2B,
        "01100000000000000001",
        "00000064",
        "4f530100901057472b01000a0000000e0110000000000000000100000064",
    ),
}

SESSION_ID = bytes(range(16))
HELLO_HEX = "000102030405060708090a0b0c0d0e0f000000000000000500000000000000090000000000000006"


@pytest.mark.parametrize("name", list(VECTORS))
def test_vector_bytes(name: str) -> None:
    env, ftype, meta, payload, whole = VECTORS[name]
    frame = encode(env)
    assert (frame[0], frame[1].hex(), frame[2].hex()) == (ftype, meta, payload)
    assert frame_bytes(*frame[::2], meta=frame[1]).hex() == whole


@pytest.mark.parametrize("name", list(VECTORS))
def test_vector_decodes_back(name: str) -> None:
    env, ftype, meta, payload, whole = VECTORS[name]
    assert decode(ftype, bytes.fromhex(meta), bytes.fromhex(payload)) == env
    decoder = FrameDecoder(1 << 20)
    decoder.feed(bytes.fromhex(whole))
    ((_, frame),) = decoder.frames  # the framed layer hands it up as a typed frame
    assert decode(frame.type, frame.meta, frame.payload) == env


def test_session_hello_vectors() -> None:
    hello = SessionHello(SESSION_ID, 5, 9, 6)
    assert encode_hello(hello) == (0x29, b"\x01\x00", bytes.fromhex(HELLO_HEX))
    answer = SessionHello(SESSION_ID, 5, 9, 6, SessionStatus.RESUMED)
    assert encode_hello(answer) == (0x2A, b"\x01\x00", bytes.fromhex("01" + HELLO_HEX))
    for item in (hello, answer):
        assert decode_hello(decode(*encode_hello(item))) == item


def test_credit_body() -> None:
    assert decode_credit(decode(*encode(Envelope(Kind.CREDIT, encode_credit(7))))) == 7
    with pytest.raises(MalformedEnvelope, match="grants nothing"):
        decode_credit(Envelope(Kind.CREDIT, encode_credit(0)))
    with pytest.raises(MalformedEnvelope, match="expected 4"):
        decode_credit(Envelope(Kind.CREDIT, b"\x01"))


BAD = [
    (0x20, "0100", "", "not a messaging frame"),
    (0x3F, "0100", "", "not a messaging frame"),
    (0x21, "01", "", "at least 2"),
    (0x21, "0200", "", "version 2"),
    (0x22, "0100", "", "requires flags 0x40"),
    (0x24, "0104", "", "does not allow flags 0x04"),
    (0x21, "011000", "", "ends inside a u64"),
    (0x24, "018000", "", "ends inside the topic length"),
    (0x24, "0180000461", "", "5 bytes, its flags announce 8"),
    (0x21, "0100ff", "", "its flags announce 2"),
    (0x25, "0180000161", "78", "empty payload"),
    (0x28, "0100", "", "requires flags 0x20"),
]


@pytest.mark.parametrize(("ftype", "meta", "payload", "message"), BAD)
def test_invalid_envelopes(ftype: int, meta: str, payload: str, message: str) -> None:
    with pytest.raises(MalformedEnvelope, match=message) as info:
        decode(ftype, bytes.fromhex(meta), bytes.fromhex(payload))
    assert isinstance(info.value, ProtocolError)
    assert info.value.code == 1002


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00" * 39, "expected 40"),
        (
            bytes(16) + bytes.fromhex("000000000000000000000000000000010000000000000005"),
            "first_held 5",
        ),
        (bytes(16) + bytes(24), "first_held 0"),
    ],
)
def test_invalid_session_hello(body: bytes, message: str) -> None:
    with pytest.raises(MalformedEnvelope, match=message):
        decode_hello(Envelope(Kind.SESSION, body))


def test_invalid_session_ok_status() -> None:
    with pytest.raises(MalformedEnvelope, match="status 9"):
        decode_hello(
            Envelope(Kind.SESSION_OK, b"\x09" + bytes(16) + bytes(16) + (1).to_bytes(8, "big"))
        )
    with pytest.raises(MalformedEnvelope, match="not a session frame"):
        decode_hello(Envelope(Kind.ACK, ack=1))


topics = st.none() | st.binary(max_size=300)
ints = st.none() | st.integers(0, 2**64 - 1)


@given(
    kind=st.sampled_from([Kind.MESSAGE, Kind.REQUEST, Kind.REPLY, Kind.PUBLISH]),
    payload=st.binary(max_size=200),
    seq=ints,
    ack=ints,
    ident=st.integers(0, 2**64 - 1),
    topic=st.binary(max_size=300),
)
@settings(max_examples=200, deadline=None)
def test_round_trip(
    kind: Kind, payload: bytes, seq: int | None, ack: int | None, ident: int, topic: bytes
) -> None:
    rule = RULES[kind]
    env = Envelope(
        kind,
        payload,
        id=ident if rule.allowed & MetaFlags.HAS_ID else None,
        topic=topic if rule.allowed & MetaFlags.HAS_TOPIC else None,
        seq=seq,
        ack=ack,
    )
    assert decode(*encode(env)) == env


@given(ftype=st.integers(0, 255), meta=st.binary(max_size=64), payload=st.binary(max_size=64))
@settings(max_examples=500, deadline=None)
def test_fuzz_only_protocol_errors(ftype: int, meta: bytes, payload: bytes) -> None:
    try:
        env = decode(ftype, meta, payload)
        if env.kind in (Kind.SESSION, Kind.SESSION_OK):
            decode_hello(env)
        elif env.kind is Kind.CREDIT:
            decode_credit(env)
    except ProtocolError:
        pass


@given(meta=st.binary(min_size=2, max_size=40).map(lambda b: b"\x01" + b[1:]))
@settings(max_examples=300, deadline=None)
def test_fuzz_valid_version_meta(meta: bytes) -> None:
    for kind in Kind:
        try:
            assert encode(decode(kind, meta, b""))[1] == meta  # what decodes re-encodes exactly
        except ProtocolError:
            pass
