"""Every malformed input gives its documented error, and the peer is told with an ERROR frame.

Each case is fed whole, one byte at a time, with trailing junk, and through
get_buffer/buffer_updated (with a scratch buffer): the outcome must not change.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from opensocket.errors import (
    BadMagic,
    ChecksumMismatch,
    CloseCode,
    FrameTooLarge,
    HandshakeError,
    NegotiationFailed,
    ProtocolError,
    UnexpectedFrame,
    UnsupportedVersion,
)
from opensocket.options import ProtocolOptions
from opensocket.protocol import FramedConnection, FrameType, State
from opensocket.protocol.decoder import new_scratch
from opensocket.protocol.frame import frame_bytes

from .helpers import (
    Pair,
    client,
    error_frame,
    feed_buffer,
    hello,
    hello_body,
    raw_frame,
    server,
    terminated,
    welcome,
    welcome_body,
)


def tls_client_hello() -> bytes:
    """The first flight of a real TLS client (no socket: a memory BIO)."""
    ctx = ssl.create_default_context()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="x.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x40]) + data[index + 1 :]


Maker = Callable[[], FramedConnection]


def fresh_server() -> FramedConnection:
    return server()


def fresh_client() -> FramedConnection:
    conn = client()
    conn.data_to_send()
    return conn


def open_server() -> FramedConnection:
    pair = Pair(sopts=ProtocolOptions(max_frame_size=1000)).open()
    pair.server.events()
    return pair.server


def open_client() -> FramedConnection:
    pair = Pair().open()
    pair.client.events()
    return pair.client


@dataclass
class Case:
    id: str
    make: Maker
    data: bytes
    error: type[ProtocolError]
    code: int
    message: str


def _field_cases() -> list[Case]:
    cases = []
    hello_fields: dict[str, list[object]] = {
        "versions": ["1", 1],
        "codecs": ["bytes", {"a": 1}],
        "heartbeat": ["15", True],
        "max_frame": [1.5, True, "big"],
        "checksum": [1, "yes"],
        "name": [5, ["x"]],
    }
    for key, values in hello_fields.items():
        body = json.loads(hello_body())
        del body[key]
        cases.append(
            Case(
                f"hello-missing-{key}",
                fresh_server,
                frame_bytes(FrameType.HELLO, json.dumps(body).encode()),
                HandshakeError,
                CloseCode.HANDSHAKE_FAILED,
                f"HELLO field '{key}' is missing or has the wrong type",
            )
        )
        for value in values:
            cases.append(
                Case(
                    f"hello-{key}-{value!r}",
                    fresh_server,
                    hello(**{key: value}),
                    HandshakeError,
                    CloseCode.HANDSHAKE_FAILED,
                    f"HELLO field '{key}' is missing or has the wrong type",
                )
            )
    welcome_fields: dict[str, list[object]] = {
        "version": ["1", True],
        "codec": [1, ["bytes"]],
        "heartbeat": ["x", False],
        "max_frame": ["x", 2.0],
        "checksum": ["yes", 0],
        "name": [7],
    }
    for key, values in welcome_fields.items():
        for value in values:
            cases.append(
                Case(
                    f"welcome-{key}-{value!r}",
                    fresh_client,
                    welcome(**{key: value}),
                    HandshakeError,
                    CloseCode.HANDSHAKE_FAILED,
                    f"WELCOME field '{key}' is missing or has the wrong type",
                )
            )
    return cases


def _number_cases() -> list[Case]:
    cases = []
    for text in ("NaN", "Infinity", "-Infinity", "1" + "0" * 400):
        body = hello_body().replace(b'"heartbeat":15.0', b'"heartbeat":' + text.encode())
        cases.append(
            Case(
                f"hello-heartbeat-{text[:10]}",
                fresh_server,
                frame_bytes(FrameType.HELLO, body),
                HandshakeError,
                CloseCode.HANDSHAKE_FAILED,
                "HELLO field 'heartbeat' must be a finite number",
            )
        )
        body = welcome_body().replace(b'"heartbeat":15.0', b'"heartbeat":' + text.encode())
        cases.append(
            Case(
                f"welcome-heartbeat-{text[:10]}",
                fresh_client,
                frame_bytes(FrameType.WELCOME, body),
                HandshakeError,
                CloseCode.HANDSHAKE_FAILED,
                "WELCOME field 'heartbeat' must be a finite number",
            )
        )
    return cases


HELLO = hello()
DATA = frame_bytes(FrameType.DATA, b"payload")
GARBAGE = bytes(range(32))

CASES = [
    # Not the opensocket protocol at all.
    Case("garbage", fresh_server, GARBAGE, BadMagic, 4001, "the peer sent bytes 00 01 where"),
    Case("tls", fresh_server, tls_client_hello(), BadMagic, 4001, "started a TLS handshake"),
    Case("http-get", fresh_server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", BadMagic, 4001, "HTTP"),
    Case("http-post", fresh_server, b"POST /x HTTP/1.1\r\n\r\n", BadMagic, 4001, "HTTP"),
    Case("http-reply", fresh_client, b"HTTP/1.1 400 Bad Request\r\n\r\n", BadMagic, 4001, "HTTP"),
    Case("garbage-open", open_server, GARBAGE, BadMagic, 4001, "where a frame should start"),
    # Header fields.
    Case(
        "version",
        fresh_server,
        raw_frame(FrameType.HELLO, hello_body(), head=b"OS\x02\x00"),
        UnsupportedVersion,
        4002,
        "the peer speaks protocol version 2, this side speaks 1",
    ),
    Case(
        "reserved",
        fresh_server,
        raw_frame(FrameType.HELLO, hello_body(), head=b"OS\x01\x07"),
        ProtocolError,
        CloseCode.PROTOCOL_ERROR,
        "reserved header byte is 7, must be 0",
    ),
    Case(
        "unknown-flags",
        fresh_server,
        raw_frame(FrameType.HELLO, hello_body(), flags=0x03),
        ProtocolError,
        CloseCode.PROTOCOL_ERROR,
        "frame flags 0x03 include bits",
    ),
    Case(
        "unknown-flags-data",
        open_server,
        raw_frame(FrameType.DATA, b"x", flags=0x05),
        ProtocolError,
        CloseCode.PROTOCOL_ERROR,
        "frame flags 0x05",
    ),
    Case(
        "meta-over-body",
        fresh_server,
        raw_frame(FrameType.HELLO, b"{}", meta_len=5),
        ProtocolError,
        CloseCode.PROTOCOL_ERROR,
        "metadata length 5 exceeds body length 2",
    ),
    Case(
        "meta-over-body-data",
        open_server,
        raw_frame(FrameType.DATA, b"abc", meta_len=4),
        ProtocolError,
        CloseCode.PROTOCOL_ERROR,
        "metadata length 4 exceeds body length 3",
    ),
    # Sizes.
    Case(
        "handshake-too-large",
        fresh_server,
        frame_bytes(FrameType.HELLO, b" " * 4097),
        FrameTooLarge,
        CloseCode.TOO_LARGE,
        "the peer sent a frame of 4097 bytes; the limit is 4096 bytes",
    ),
    Case(
        "data-too-large",
        open_server,
        frame_bytes(FrameType.DATA, b"x" * 1001),
        FrameTooLarge,
        CloseCode.TOO_LARGE,
        "a frame of 1001 bytes; the limit is 1000 bytes",
    ),
    # Checksums.
    Case("bad-crc", fresh_server, _flip(HELLO, 40), ChecksumMismatch, 4003, "checksum mismatch"),
    Case("bad-crc-type", open_server, _flip(DATA, 8), ChecksumMismatch, 4003, "checksum mismatch"),
    Case(
        "bad-crc-length",
        open_server,
        DATA[:15] + b"\x06" + DATA[16:],
        ChecksumMismatch,
        4003,
        "corrupted",
    ),
    Case("bad-crc-data", open_server, _flip(DATA, 20), ChecksumMismatch, 4003, "checksum mismatch"),
    Case("bad-crc-field", open_server, _flip(DATA, 5), ChecksumMismatch, 4003, "checksum mismatch"),
    Case(
        "no-crc-handshake",
        fresh_server,
        raw_frame(FrameType.HELLO, hello_body(), flags=0),
        ChecksumMismatch,
        4003,
        "a frame arrived without the checksum this link requires",
    ),
    Case(
        "no-crc-open",
        open_server,
        frame_bytes(FrameType.DATA, b"x", checksum=False),
        ChecksumMismatch,
        4003,
        "without the checksum",
    ),
    # Frames in the wrong state.
    Case("data-first", fresh_server, DATA, UnexpectedFrame, 1002, "before the handshake completed"),
    Case(
        "data-then-hello", fresh_server, DATA + HELLO, UnexpectedFrame, 1002, "before the handshake"
    ),
    Case(
        "meta-data-first",
        fresh_server,
        frame_bytes(FrameType.DATA, b"x", meta=b"m"),
        UnexpectedFrame,
        1002,
        "before the handshake",
    ),
    Case("data-to-client", fresh_client, DATA, UnexpectedFrame, 1002, "before the handshake"),
    Case(
        "welcome-to-server",
        fresh_server,
        welcome(),
        UnexpectedFrame,
        1002,
        "unexpected WELCOME frame in state await_hello",
    ),
    Case(
        "auth-to-server",
        fresh_server,
        frame_bytes(FrameType.AUTH, b"{}"),
        UnexpectedFrame,
        1002,
        "unexpected AUTH frame",
    ),
    Case(
        "ping-in-handshake",
        fresh_server,
        frame_bytes(FrameType.PING, b"12345678"),
        UnexpectedFrame,
        1002,
        "unexpected PING frame",
    ),
    Case(
        "pong-in-handshake",
        fresh_client,
        frame_bytes(FrameType.PONG, b""),
        UnexpectedFrame,
        1002,
        "unexpected PONG frame",
    ),
    Case(
        "hello-to-client",
        fresh_client,
        HELLO,
        HandshakeError,
        4004,
        "the peer sent our HELLO back: it is an echo server",
    ),
    Case(
        "auth-ok-early",
        fresh_client,
        frame_bytes(FrameType.AUTH_OK),
        UnexpectedFrame,
        1002,
        "unexpected AUTH_OK frame",
    ),
    Case(
        "hello-when-open",
        open_server,
        HELLO,
        UnexpectedFrame,
        1002,
        "unexpected HELLO frame in state done",
    ),
    Case(
        "welcome-when-open",
        open_client,
        welcome(),
        UnexpectedFrame,
        1002,
        "unexpected WELCOME frame in state done",
    ),
    Case(
        "type-0x05",
        fresh_server,
        frame_bytes(5, b""),
        UnexpectedFrame,
        1002,
        "unexpected 0x5 frame",
    ),
    Case(
        "type-0x30",
        open_server,
        frame_bytes(0x30, b"x"),
        UnexpectedFrame,
        1002,
        "unexpected 0x30 frame",
    ),
    Case(
        "type-0xff",
        open_client,
        frame_bytes(0xFF, b""),
        UnexpectedFrame,
        1002,
        "unexpected 0xff frame",
    ),
    Case(
        "short-close",
        open_server,
        frame_bytes(FrameType.CLOSE, b"\x03"),
        ProtocolError,
        1002,
        "must start with a 2-byte code",
    ),
    Case(
        "short-error",
        open_client,
        frame_bytes(FrameType.ERROR, b"\x03"),
        ProtocolError,
        1002,
        "2-byte code",
    ),
    # Handshake bodies.
    Case(
        "hello-not-json",
        fresh_server,
        frame_bytes(FrameType.HELLO, b"hello"),
        HandshakeError,
        4004,
        "HELLO body is not valid JSON",
    ),
    Case(
        "hello-not-utf8",
        fresh_server,
        frame_bytes(FrameType.HELLO, b'{"\xff":1}'),
        HandshakeError,
        4004,
        "HELLO body is not valid JSON",
    ),
    Case(
        "hello-deep",
        fresh_server,
        frame_bytes(FrameType.HELLO, b"[" * 4000),
        HandshakeError,
        4004,
        "not valid JSON",
    ),
    Case(
        "hello-list",
        fresh_server,
        frame_bytes(FrameType.HELLO, b"[1]"),
        HandshakeError,
        4004,
        "HELLO body must be a JSON object",
    ),
    Case(
        "hello-empty",
        fresh_server,
        frame_bytes(FrameType.HELLO, b""),
        HandshakeError,
        4004,
        "not valid JSON",
    ),
    Case(
        "welcome-not-json",
        fresh_client,
        frame_bytes(FrameType.WELCOME, b"{"),
        HandshakeError,
        4004,
        "WELCOME body is not valid JSON",
    ),
    Case(
        "welcome-string",
        fresh_client,
        frame_bytes(FrameType.WELCOME, b'"hi"'),
        HandshakeError,
        4004,
        "must be a JSON object",
    ),
    Case(
        "hello-max-frame",
        fresh_server,
        hello(max_frame=63),
        HandshakeError,
        4004,
        "the client's maximum frame size 63 is below 64 bytes",
    ),
    Case(
        "welcome-max-frame",
        fresh_client,
        welcome(max_frame=0),
        HandshakeError,
        4004,
        "the server's maximum frame size 0 is below 64 bytes",
    ),
    Case(
        "hello-versions",
        fresh_server,
        hello(versions=[2, 3]),
        NegotiationFailed,
        4008,
        "no common protocol version: client speaks [2, 3], server speaks [1]",
    ),
    Case(
        "hello-versions-nested",
        fresh_server,
        hello(versions=[[1], {"a": 1}]),
        NegotiationFailed,
        4008,
        "no common protocol version",
    ),
    Case(
        "hello-versions-bool",
        fresh_server,
        hello(versions=[True]),
        NegotiationFailed,
        4008,
        "no common protocol version",
    ),
    Case(
        "hello-codecs",
        fresh_server,
        hello(codecs=["nope", 5]),
        NegotiationFailed,
        4008,
        "no common payload codec: client offered nope, 5; server accepts bytes",
    ),
    Case(
        "welcome-version",
        fresh_client,
        welcome(version=2),
        NegotiationFailed,
        4008,
        "the server chose version 2 / codec 'bytes', not offered",
    ),
    Case(
        "welcome-codec",
        fresh_client,
        welcome(codec="json"),
        NegotiationFailed,
        4008,
        "codec 'json', not offered",
    ),
    *_field_cases(),
    *_number_cases(),
]


def _outcome(conn: FramedConnection) -> tuple[type, int, str, tuple[int, str], State]:
    event = terminated(conn)
    assert event.error is not None
    assert not event.by_peer
    code, reason = error_frame(conn.data_to_send())
    return type(event.error), event.code, str(event.error), (code, reason), conn.state


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input(case: Case) -> None:
    outcomes = set()
    junk = b"\x00junk after the error" * 3
    feeds = [
        [case.data],
        [case.data[i : i + 1] for i in range(len(case.data))],
        [case.data + junk],
        [case.data, junk],
    ]
    for chunks in feeds:
        conn = case.make()
        for chunk in chunks:
            conn.receive_data(chunk, 1.0)
        outcomes.add(_outcome(conn))
        conn = case.make()
        conn._decoder._scratch = new_scratch()
        for chunk in chunks:
            feed_buffer(conn, chunk, 1.0)
        outcomes.add(_outcome(conn))
    assert len(outcomes) == 1, outcomes
    ((cls, code, message, sent, state),) = outcomes
    assert cls is case.error
    assert code == case.code
    assert case.message in message
    assert sent == (case.code, message), "the ERROR frame must carry the code and the message"
    assert state is State.CLOSED


def test_oversize_is_rejected_from_the_header_alone() -> None:
    """Only the 16 header bytes arrive: the body is never waited for (nor buffered)."""
    conn = open_server()
    conn.receive_data(frame_bytes(FrameType.DATA, b"x" * 5000)[:16], 1.0)
    assert isinstance(terminated(conn).error, FrameTooLarge)
    conn = fresh_server()
    conn.receive_data(frame_bytes(FrameType.HELLO, b" " * 100_000)[:16], 1.0)
    assert isinstance(terminated(conn).error, FrameTooLarge)


def test_limit_is_inclusive() -> None:
    conn = open_server()
    conn.receive_data(frame_bytes(FrameType.DATA, b"x" * 1000), 1.0)
    assert conn.take_messages() == [b"x" * 1000]
    assert conn.state is State.OPEN


@pytest.mark.parametrize("prefix", [b"G", b"GE", b"GET", b"PO", b"HT", b"\x16"])
def test_a_partial_signature_waits_for_more(prefix: bytes) -> None:
    """Too few bytes to tell HTTP or TLS from garbage: wait rather than guess."""
    conn = fresh_server()
    conn.receive_data(prefix, 1.0)
    assert conn.state is State.HANDSHAKE
    assert conn.events() == []


def test_early_garbage_is_rejected_before_a_whole_header() -> None:
    conn = fresh_server()
    conn.receive_data(b"\x00\x00", 1.0)
    assert isinstance(terminated(conn).error, BadMagic)
    conn = fresh_server()
    conn.receive_data(b"OS\x09", 1.0)
    assert isinstance(terminated(conn).error, UnsupportedVersion)


@pytest.mark.parametrize("pending", [1, 15, 16, 22])
def test_truncated_frame_then_eof(pending: int) -> None:
    conn = open_server()
    conn.receive_data(DATA[:pending], 1.0)
    conn.receive_data(b"", 1.0)
    event = terminated(conn)
    assert event.code == CloseCode.ABNORMAL
    assert event.by_peer
    assert isinstance(event.error, ProtocolError)
    assert f"{pending} bytes into a frame" in event.reason
    assert conn.data_to_send() == b""  # the peer is gone: nothing to tell it


def test_truncated_frame_then_eof_via_buffer() -> None:
    conn = open_server()
    feed_buffer(conn, DATA[:-1], 1.0)
    conn.receive_eof(1.0)
    assert "truncated" in str(terminated(conn).error)


def test_errors_of_a_peer_reach_the_other_side() -> None:
    """The ERROR frame a violation produces ends the peer with a matching error."""
    pair = Pair().open()
    pair.client.receive_data(frame_bytes(FrameType.DATA, b"x", checksum=False), 1.0)
    pair.c2s(1.0)
    event = pair.terminal("server")
    assert event.by_peer
    assert event.code == CloseCode.CHECKSUM_MISMATCH
    assert isinstance(event.error, ProtocolError)
    assert event.error.code == CloseCode.CHECKSUM_MISMATCH
    assert "without the checksum" in str(event.error)
