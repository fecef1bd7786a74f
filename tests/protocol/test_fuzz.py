"""Fuzzing: whatever a peer sends, no exception escapes the core; failures become one
ConnectionTerminated whose error is a ProtocolError (or a ConnectionRejected the peer sent)."""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opensocket.errors import ConnectionRejected, ProtocolError
from opensocket.options import ProtocolOptions
from opensocket.protocol import FramedConnection, FrameType, State
from opensocket.protocol.decoder import new_scratch
from opensocket.protocol.events import ConnectionTerminated

from .helpers import SECRET, Pair, chunks_of, client, feed_buffer, hello, raw_frame, server, welcome

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

OPTIONS = [
    ProtocolOptions(heartbeat=1.0, max_frame_size=256),
    ProtocolOptions(secret=SECRET, codecs=("json", "bytes"), checksum="off"),
]


def start(kind: str, opts: ProtocolOptions, scratch: bool) -> FramedConnection:
    """A connection in some state, waiting for bytes from the fuzzer."""
    kw: dict[str, Any] = {"scratch": new_scratch()} if scratch else {}
    if kind == "server":
        return server(opts, **kw)
    if kind == "client":
        conn = client(opts, **kw)
        conn.data_to_send()
        return conn
    pair = Pair(opts, opts)
    pair.open()
    conn = pair.server if kind == "open-server" else pair.client
    conn.events()
    conn.data_to_send()
    return conn


def check(conn: FramedConnection, feed: Callable[[], None]) -> None:
    feed()  # must not raise
    conn.handle_timer(5.0)
    conn.receive_eof(6.0)
    conn.handle_timer(1e6)
    ends = [e for e in conn.events() if isinstance(e, ConnectionTerminated)]
    assert len(ends) == 1
    assert conn.state is State.CLOSED
    error = ends[0].error
    assert error is None or isinstance(error, ProtocolError | ConnectionRejected), repr(error)
    conn.take_messages()
    conn.data_to_send()


kinds = st.sampled_from(["server", "client", "open-server", "open-client"])


@FUZZ
@given(
    kinds,
    st.sampled_from(OPTIONS),
    st.booleans(),
    st.binary(max_size=400),
    st.lists(st.integers(0, 400), max_size=8),
)
def test_arbitrary_bytes(
    kind: str, opts: ProtocolOptions, scratch: bool, data: bytes, cuts: list[int]
) -> None:
    conn = start(kind, opts, scratch)

    def feed() -> None:
        for chunk in chunks_of(data, cuts):
            if scratch:
                feed_buffer(conn, chunk, 1.0)
            else:
                conn.receive_data(chunk, 1.0)

    check(conn, feed)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["bytes", "json", "hmac-sha256", "00" * 16, "ff" * 32]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "versions",
    "codecs",
    "heartbeat",
    "max_frame",
    "checksum",
    "name",
    "auth",
    "nonce",
    "version",
    "codec",
    "proof",
]
handshake_bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=10).map(
        lambda d: json.dumps(d).encode()
    ),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=100),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Frames that pass the header and checksum checks, so deeper code is reached."""
    ftype = draw(st.sampled_from([int(t) for t in FrameType]) | st.integers(0, 255))
    if ftype in (FrameType.HELLO, FrameType.WELCOME, FrameType.AUTH):
        body = draw(handshake_bodies)
    elif ftype in (FrameType.PING, FrameType.PONG):
        body = draw(st.floats().map(lambda f: struct.pack(">d", f)) | st.binary(max_size=70))
    else:
        body = draw(st.binary(max_size=40))
    flags = draw(st.sampled_from([1, 1, 1, 0, 3, 5, 0x81]))
    meta_len = draw(st.sampled_from([0, 0, 0, 1, len(body), len(body) + 1]))
    return raw_frame(ftype, body, flags=flags, meta_len=min(meta_len, 0xFFFF))


@FUZZ
@given(kinds, st.sampled_from(OPTIONS), st.lists(frames(), max_size=6), st.booleans())
def test_well_framed_nonsense(
    kind: str, opts: ProtocolOptions, stream: list[bytes], lead: bool
) -> None:
    conn = start(kind, opts, scratch=False)
    opening = hello() if kind == "server" else welcome() if kind == "client" else b""
    data = (opening if lead else b"") + b"".join(stream)

    def feed() -> None:
        conn.receive_data(data, 1.0)

    check(conn, feed)


@settings(max_examples=100, deadline=None)
@given(handshake_bodies, st.booleans())
def test_handshake_bodies(body: bytes, secret: bool) -> None:
    opts = ProtocolOptions(secret=SECRET if secret else None, codecs=("bytes", "json"))
    for conn, ftype in ((server(opts), FrameType.HELLO), (client(opts), FrameType.WELCOME)):
        conn.data_to_send()
        frame = raw_frame(ftype, body)
        check(conn, functools.partial(conn.receive_data, frame, 1.0))
