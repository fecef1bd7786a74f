"""FramedConnection as a whole: any split of the input, through either input path, with or
without a scratch buffer, gives the same messages, events and output."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from opensocket.options import ProtocolOptions
from opensocket.protocol import FramedConnection, FrameType, State
from opensocket.protocol.connection import encode_close
from opensocket.protocol.decoder import new_scratch
from opensocket.protocol.events import ConnectionTerminated, Event
from opensocket.protocol.frame import Frame, frame_bytes

from .helpers import Pair, chunks_of, client, feed_buffer, feed_receive, hello, server, welcome

payloads = st.binary(max_size=200)
items = st.one_of(
    st.tuples(st.just("data"), payloads),
    st.tuples(st.just("meta"), st.binary(min_size=1, max_size=10), payloads),
    st.tuples(st.just("ping"), st.binary(max_size=80)),
    st.tuples(st.just("pong"), st.floats(0, 10) | st.binary(max_size=10)),
    st.tuples(st.just("close"), st.integers(1000, 4999), st.text(max_size=20)),
    st.tuples(st.just("error"), st.integers(1000, 4999), st.text(max_size=20)),
    st.tuples(st.just("junk"), st.binary(min_size=1, max_size=20)),
    st.tuples(st.just("nocrc"), payloads),
)


def encode(item: tuple[Any, ...]) -> bytes:
    kind = item[0]
    if kind == "data":
        return frame_bytes(FrameType.DATA, item[1])
    if kind == "meta":
        return frame_bytes(FrameType.DATA, item[2], meta=item[1])
    if kind == "ping":
        return frame_bytes(FrameType.PING, item[1])
    if kind == "pong":
        stamp = struct.pack(">d", item[1]) if isinstance(item[1], float) else item[1]
        return frame_bytes(FrameType.PONG, stamp)
    if kind in ("close", "error"):
        ftype = FrameType.CLOSE if kind == "close" else FrameType.ERROR
        return frame_bytes(ftype, encode_close(item[1], item[2]))
    if kind == "nocrc":
        return frame_bytes(FrameType.DATA, item[1], checksum=False)
    return bytes(item[1])


def outcome(conn: FramedConnection) -> tuple[Any, ...]:
    """Everything observable, with errors compared by type and message."""

    def norm(event: Event) -> Any:
        if isinstance(event, ConnectionTerminated):
            error = event.error
            return (event.code, event.reason, event.by_peer, type(error), str(error))
        return event

    return (
        tuple(conn.take_messages()),
        tuple(norm(e) for e in conn.events()),
        bytes(conn.data_to_send()),
        conn.state,
        conn.close_code,
    )


Make = Callable[[], FramedConnection]


def makers(role: str, scratch: bool) -> Make:
    def make() -> FramedConnection:
        kw: dict[str, Any] = {"scratch": new_scratch()} if scratch else {}
        if role == "server":
            return server(ProtocolOptions(heartbeat=0), **kw)
        conn = client(ProtocolOptions(heartbeat=0), **kw)
        conn.data_to_send()
        return conn

    return make


def run(
    make: Make, feed: Callable[[FramedConnection, bytes, float], None], chunks: list[bytes]
) -> tuple[Any, ...]:
    conn = make()
    for chunk in chunks:
        feed(conn, chunk, 3.0)
    return outcome(conn)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["server", "client"]),
    st.lists(items, max_size=8),
    st.lists(st.integers(0, 3000), max_size=12),
)
def test_any_split_any_path_same_outcome(
    role: str, stream: list[tuple[Any, ...]], cuts: list[int]
) -> None:
    opening = hello() if role == "server" else welcome()
    data = opening + b"".join(encode(item) for item in stream)
    splits = [[data], chunks_of(data, cuts)]
    if len(data) < 1500:
        splits.append([data[i : i + 1] for i in range(len(data))])
    results = set()
    for scratch in (False, True):
        for feed in (feed_receive, feed_buffer):
            for chunks in splits:
                results.add(run(makers(role, scratch), feed, chunks))
    assert len(results) == 1, results
    ((messages, _, _, state, _),) = results
    expected = []
    for item in stream:
        if item[0] in ("close", "error", "junk", "nocrc"):
            break
        if item[0] == "data":
            expected.append(item[1])
        elif item[0] == "meta":
            expected.append(Frame(FrameType.DATA, 1, item[1], item[2]))
    else:
        assert state is State.OPEN
    assert list(messages[: len(expected)]) == expected


def test_messages_flow_both_ways_in_order() -> None:
    pair = Pair().open()
    for i in range(100):
        pair.client.send(b"c%d" % i)
        pair.server.send(b"s%d" % i)
    pair.client.send_many([b"x", b"y"])
    pair.exchange(1.0)
    assert pair.server.take_messages() == [b"c%d" % i for i in range(100)] + [b"x", b"y"]
    assert pair.client.take_messages() == [b"s%d" % i for i in range(100)]
    assert pair.server.take_messages() == []
    assert pair.client.messages_out == pair.server.messages_in == 102
    assert pair.client.bytes_out == pair.server.bytes_in
    assert pair.server.bytes_out == pair.client.bytes_in


def test_handshake_and_first_messages_in_one_read() -> None:
    """WELCOME and DATA in one read: the frame after WELCOME is checked by the new rules."""
    opts = ProtocolOptions(checksum="off")
    pair = Pair(opts, opts, tls=True)
    pair.c2s()
    pair.server.send(b"first")
    pair.server.send(b"second")
    data = pair.server.data_to_send()
    assert data.count(b"OS\x01\x00\x00\x00\x00\x00\x20\x00") == 2  # DATA frames without CRC
    pair.client.receive_data(data, 0.0)
    assert pair.client.state is State.OPEN
    assert pair.client.take_messages() == [b"first", b"second"]


def test_authenticated_handshake_then_data_in_one_read() -> None:
    from .helpers import SECRET

    opts = ProtocolOptions(secret=SECRET, max_frame_size=100_000)
    pair = Pair(opts, opts)
    pair.c2s()
    pair.s2c()
    pair.c2s()  # the server opens on AUTH and may send at once
    pair.server.send(b"z" * 50_000)
    pair.s2c()
    assert pair.client.take_messages() == [b"z" * 50_000]


def test_pending_output_and_buffered_counts() -> None:
    pair = Pair().open()
    pair.client.send(b"12345")
    assert pair.client.pending_output == 16 + 5
    pair.client.data_to_send()
    assert pair.client.pending_output == 0
    data = frame_bytes(FrameType.DATA, b"abc")
    pair.server.receive_data(data[:10], 1.0)
    assert pair.server._decoder.buffered == 10
    pair.server.receive_data(data[10:], 1.0)
    assert pair.server.take_messages() == [b"abc"]


def test_one_big_receive_after_welcome_uses_the_new_rules() -> None:
    """receive_data copies large input in several steps; none may decode past the WELCOME."""
    opts = ProtocolOptions(checksum="off")
    pair = Pair(opts, opts, tls=True)
    pair.c2s()
    pair.server.send(b"x" * 300_000)
    pair.s2c()
    assert pair.client.take_messages() == [b"x" * 300_000]


def test_one_big_receive_after_close_delivers_nothing_more() -> None:
    pair = Pair().open()
    data = frame_bytes(FrameType.CLOSE, encode_close(1000, "")) + frame_bytes(
        FrameType.DATA, b"y" * 300_000
    )
    pair.client.receive_data(data, 1.0)
    assert pair.client.state is State.CLOSED
    assert pair.client.take_messages() == []


def test_send_while_closing_raises_with_our_close_code() -> None:
    import pytest

    from opensocket.errors import ConnectionClosedError

    pair = Pair().open()
    pair.client.close(1.0, 4000, "leaving")
    with pytest.raises(ConnectionClosedError) as info:
        pair.client.send(b"x")
    assert (info.value.code, info.value.reason, info.value.by_peer) == (4000, "leaving", False)
