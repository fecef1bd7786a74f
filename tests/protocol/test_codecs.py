"""Payload codecs: round trips, precise errors, and the registry."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2, wrappers_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from opensocket import codecs
from opensocket.codecs import Codec, get_codec, protobuf_codec, register_codec
from opensocket.errors import CodecError, ConfigError, ProtocolError
from opensocket.options import ProtocolOptions

from .helpers import Pair

FAST = settings(max_examples=50, deadline=None)


@pytest.fixture(autouse=True)
def _private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Codecs registered here stay out of the process-wide registry."""
    monkeypatch.setattr(codecs, "_REGISTRY", dict(codecs._REGISTRY))


scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
json_values = st.recursive(
    scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
msgpack_values = st.recursive(
    scalars | st.floats(allow_nan=False) | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@FAST
@given(json_values)
def test_json_round_trip(value: Any) -> None:
    codec = get_codec("json")
    assert codec.loads(codec.dumps(value)) == value


@FAST
@given(msgpack_values)
def test_msgpack_round_trip(value: Any) -> None:
    codec = get_codec("msgpack")
    assert codec.loads(codec.dumps(value)) == value


def test_msgpack_keeps_bytes_and_text_apart() -> None:
    codec = get_codec("msgpack")
    assert codec.loads(codec.dumps({"b": b"\xff", "s": "\xff", 1: 2})) == {
        "b": b"\xff",
        "s": "\xff",
        1: 2,
    }


def test_json_is_compact_utf8() -> None:
    assert get_codec("json").dumps({"k": ["é", 1]}) == '{"k":["é",1]}'.encode()


@FAST
@given(st.text(max_size=100))
def test_protobuf_string_value_round_trip(text: str) -> None:
    codec = protobuf_codec(wrappers_pb2.StringValue)
    assert codec.name == "protobuf:google.protobuf.StringValue"
    message = wrappers_pb2.StringValue(value=text)
    assert codec.loads(codec.dumps(message)) == message


def test_protobuf_struct_round_trip() -> None:
    codec = protobuf_codec(struct_pb2.Struct, name="struct")
    message = struct_pb2.Struct()
    message.update({"name": "x", "n": 3.0, "list": [1.0, "two", None], "nested": {"ok": True}})
    assert codec.loads(codec.dumps(message)) == message
    assert get_codec("struct") is codec


def test_protobuf_errors() -> None:
    codec = protobuf_codec(wrappers_pb2.StringValue)
    with pytest.raises(
        CodecError, match=r"expected a google\.protobuf\.StringValue message, got Int32Value"
    ):
        codec.dumps(wrappers_pb2.Int32Value(value=1))
    with pytest.raises(CodecError, match=r"not valid protobuf:google\.protobuf\.StringValue"):
        codec.loads(b"\xff\xff\xff")
    with pytest.raises(ConfigError, match="is not a protobuf message class"):
        protobuf_codec(dict)


@pytest.mark.parametrize(
    ("name", "bad"),
    [("json", b"{not json"), ("json", b"\xff"), ("msgpack", b"\xc1"), ("msgpack", b"\x92\x01")],
)
def test_bad_payloads_raise_codec_error(name: str, bad: bytes) -> None:
    with pytest.raises(CodecError, match=f"a received payload is not valid {name}") as info:
        get_codec(name).loads(bad)
    assert isinstance(info.value, ProtocolError)
    assert info.value.code == 1007
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    ("name", "value"), [("json", {1, 2}), ("json", object()), ("msgpack", object())]
)
def test_unencodable_values_raise_codec_error(name: str, value: object) -> None:
    with pytest.raises(CodecError, match=f"cannot encode .* as {name}"):
        get_codec(name).dumps(value)


def test_a_failed_encode_leaves_the_codec_usable() -> None:
    """msgpack shares one Packer: a failure half-way must not leak bytes into the next."""
    codec = get_codec("msgpack")
    with pytest.raises(CodecError):
        codec.dumps([1, 2, object()])
    assert codec.loads(codec.dumps({"a": 1})) == {"a": 1}


def test_bytes_codec_passes_bytes_through() -> None:
    codec = get_codec("bytes")
    for value in (b"abc", bytearray(b"abc"), memoryview(b"abc")):
        assert codec.dumps(value) is value
    assert codec.loads(b"\x00\xff") == b"\x00\xff"
    with pytest.raises(CodecError, match="the bytes codec sends bytes, not str"):
        codec.dumps("text")


def test_unknown_codec() -> None:
    with pytest.raises(ConfigError, match=r"unknown payload codec 'yaml' \(known: .*json.*msgpack"):
        get_codec("yaml")


def test_registered_codec_is_negotiated() -> None:
    def upper_decode(data: bytes) -> str:
        return data.decode().lower()

    register_codec(Codec("shout", lambda text: text.upper().encode(), upper_decode))
    codec = get_codec("shout")
    assert codec.dumps("hi") == b"HI"
    assert codec.loads(b"HI") == "hi"
    pair = Pair(
        ProtocolOptions(codecs=("shout", "json")), ProtocolOptions(codecs=("json", "shout"))
    )
    assert pair.open().handshake("server").codec == "shout"


def test_codec_errors_raised_by_the_codec_itself_pass_through() -> None:
    def strict(obj: Any) -> bytes:
        raise CodecError("only ints")

    codec = Codec("strict", strict, None)
    with pytest.raises(CodecError, match=r"^only ints$"):
        codec.dumps(1)
