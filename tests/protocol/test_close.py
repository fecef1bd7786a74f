"""Closing: the graceful sequence both ways, timeouts, EOFs, and one terminal event only."""

from __future__ import annotations

import pytest

from opensocket.errors import (
    ChecksumMismatch,
    CloseCode,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    WriteTimeout,
)
from opensocket.options import ProtocolOptions
from opensocket.protocol import FramedConnection, FrameType, State
from opensocket.protocol.connection import encode_close
from opensocket.protocol.events import ConnectionTerminated
from opensocket.protocol.frame import Frame, frame_bytes

from .helpers import SECRET, Pair, decode_all, feed_buffer, state, terminated

QUIET = ProtocolOptions(heartbeat=0)


def close_frames(data: bytes | bytearray) -> list[tuple[int, int, str]]:
    out = []
    for frame in decode_all(data):
        assert isinstance(frame, Frame)
        code = int.from_bytes(frame.payload[:2], "big")
        out.append((frame.type, code, frame.payload[2:].decode()))
    return out


@pytest.mark.parametrize("initiator", ["client", "server"])
def test_graceful_close(initiator: str) -> None:
    pair = Pair(QUIET, QUIET).open()
    closer = getattr(pair, initiator)
    other = pair.server if initiator == "client" else pair.client
    closer.close(1.0, CloseCode.GOING_AWAY, "bye")
    assert closer.state is State.CLOSING
    assert closer.get_timer() == 1.0 + closer.options.close_timeout
    sent = closer.data_to_send()
    assert close_frames(sent) == [(FrameType.CLOSE, 1001, "bye")]
    other.receive_data(sent, 1.0)
    assert other.state is State.CLOSED
    reply = other.data_to_send()
    assert close_frames(reply) == [(FrameType.CLOSE, 1001, "")]
    closer.receive_data(reply, 1.0)
    assert state(closer) is State.CLOSED
    mine = terminated(closer)
    theirs = terminated(other)
    assert (mine.code, mine.reason, mine.by_peer, mine.error) == (1001, "bye", False, None)
    assert (theirs.code, theirs.reason, theirs.by_peer, theirs.error) == (1001, "bye", True, None)
    assert closer.get_timer() is other.get_timer() is None
    for conn in (closer, other):
        with pytest.raises(ConnectionClosedOK):
            conn.send(b"late")


def test_messages_in_flight_during_a_close_are_delivered() -> None:
    pair = Pair(QUIET, QUIET).open()
    pair.server.send(b"one")
    pair.client.close(1.0)
    pair.server.send(b"two")
    pair.s2c(1.0)  # DATA reaches the client while it is CLOSING
    assert pair.client.take_messages() == [b"one", b"two"]
    pair.c2s(1.0)
    pair.s2c(1.0)
    assert pair.client.state is pair.server.state is State.CLOSED


def test_ping_is_answered_while_closing() -> None:
    pair = Pair(QUIET, QUIET).open()
    pair.client.close(1.0)
    pair.client.data_to_send()
    pair.client.receive_data(frame_bytes(FrameType.PING, b"12345678"), 1.0)
    (frame,) = decode_all(pair.client.data_to_send())
    assert isinstance(frame, Frame)
    assert frame.type == FrameType.PONG
    pair.client.ping(1.5)
    assert pair.client.pending_output == 24


def test_simultaneous_close() -> None:
    pair = Pair(QUIET, QUIET).open()
    pair.client.close(1.0, 1000, "client done")
    pair.server.close(1.0, 4010, "server done")
    pair.exchange(1.0)
    client_end, server_end = pair.terminal("client"), pair.terminal("server")
    assert (client_end.code, client_end.reason, client_end.by_peer) == (1000, "client done", False)
    assert (server_end.code, server_end.reason, server_end.by_peer) == (4010, "server done", False)


def test_close_timeout_when_the_peer_never_answers() -> None:
    pair = Pair(QUIET, ProtocolOptions(heartbeat=0, close_timeout=2.5)).open()
    pair.server.close(10.0)
    assert pair.server.get_timer() == 12.5
    pair.server.handle_timer(12.49)
    assert pair.server.state is State.CLOSING
    pair.server.handle_timer(12.5)
    event = terminated(pair.server)
    assert event.code == CloseCode.NORMAL
    assert event.reason == "the peer did not answer our close in time"
    assert not event.by_peer
    assert pair.server.get_timer() is None


def test_close_timeout_keeps_the_callers_reason() -> None:
    pair = Pair(QUIET, QUIET).open()
    pair.client.close(0.0, 4000, "maintenance")
    pair.client.handle_timer(5.0)
    event = terminated(pair.client)
    assert (event.code, event.reason) == (4000, "maintenance")


def test_eof_while_closing_ends_normally() -> None:
    pair = Pair(QUIET, QUIET).open()
    pair.client.close(1.0, 1000, "bye")
    pair.client.receive_data(b"", 1.0)
    event = terminated(pair.client)
    assert (event.code, event.reason, event.by_peer, event.error) == (1000, "bye", False, None)


def test_eof_without_close_is_abnormal() -> None:
    pair = Pair(QUIET, QUIET).open()
    pair.client.receive_eof(1.0)
    event = terminated(pair.client)
    assert event.code == CloseCode.ABNORMAL
    assert event.by_peer
    assert event.error is None
    with pytest.raises(ConnectionClosedError) as info:
        pair.client.send(b"x")
    assert info.value.code == CloseCode.ABNORMAL
    assert info.value.by_peer


def test_eof_during_the_handshake() -> None:
    pair = Pair()
    pair.client.receive_eof(0.0)
    event = terminated(pair.client)
    assert isinstance(event.error, HandshakeError)
    assert "closed the connection during the handshake" in str(event.error)
    assert event.code == CloseCode.ABNORMAL


@pytest.mark.parametrize("closer", ["client", "server"])
def test_close_during_the_handshake(closer: str) -> None:
    opts = ProtocolOptions(secret=SECRET)
    pair = Pair(opts, opts)
    conn = getattr(pair, closer)
    conn.close(0.5, CloseCode.GOING_AWAY, "changed my mind")
    assert conn.state is State.CLOSED
    mine = terminated(conn)
    assert (mine.code, mine.reason, mine.by_peer) == (1001, "changed my mind", False)
    assert close_frames(conn.data_to_send())[-1] == (FrameType.CLOSE, 1001, "changed my mind")
    other = pair.server if closer == "client" else pair.client
    other.receive_data(frame_bytes(FrameType.CLOSE, encode_close(1001, "changed my mind")), 0.5)
    theirs = terminated(other)
    assert (theirs.code, theirs.by_peer, theirs.error) == (1001, True, None)
    with pytest.raises(ConnectionClosedOK):
        other.send(b"x")


def test_send_before_the_handshake_completes() -> None:
    pair = Pair()
    with pytest.raises(HandshakeError, match="has not finished yet"):
        pair.client.send(b"early")


def test_send_after_an_error_carries_the_cause() -> None:
    pair = Pair(QUIET, QUIET).open()
    pair.server.receive_data(frame_bytes(FrameType.DATA, b"x", checksum=False), 1.0)
    with pytest.raises(ConnectionClosedError) as info:
        pair.server.send(b"x")
    assert info.value.code == CloseCode.CHECKSUM_MISMATCH
    assert isinstance(info.value.__cause__, ChecksumMismatch)


def test_runtime_failure() -> None:
    pair = Pair(QUIET, QUIET).open()
    pair.client.fail(WriteTimeout("the peer stopped reading"), CloseCode.SLOW_CONSUMER)
    event = terminated(pair.client)
    assert event.code == CloseCode.SLOW_CONSUMER
    assert isinstance(event.error, WriteTimeout)
    with pytest.raises(ConnectionClosedError) as info:
        pair.client.send(b"x")
    assert isinstance(info.value.__cause__, WriteTimeout)


def _poke(conn: FramedConnection) -> None:
    """Everything that could produce a second terminal event."""
    conn.receive_data(frame_bytes(FrameType.CLOSE, encode_close(1000, "")), 50.0)
    conn.receive_data(b"garbage garbage", 50.0)
    feed_buffer(conn, frame_bytes(FrameType.ERROR, encode_close(1002, "x")), 50.0)
    conn.receive_eof(50.0)
    conn.receive_data(b"", 50.0)
    conn.handle_timer(1e9)
    conn.close(50.0)
    conn.fail(WriteTimeout("again"))
    conn.reject(CloseCode.POLICY, "again")
    conn.ping(50.0)


@pytest.mark.parametrize(
    "ending",
    ["close", "peer-close", "error", "peer-error", "eof", "timeout", "dead", "fail", "reject"],
)
def test_the_terminal_event_is_emitted_exactly_once(ending: str) -> None:
    pair = Pair(ProtocolOptions(heartbeat=1.0), ProtocolOptions(heartbeat=1.0)).open()
    conn, peer = pair.client, pair.server
    conn.events()
    if ending == "close":
        conn.close(1.0)
        pair.c2s(1.0)
        pair.s2c(1.0)
    elif ending == "peer-close":
        peer.close(1.0)
        pair.s2c(1.0)
    elif ending == "error":
        conn.receive_data(b"\x00" * 16, 1.0)
    elif ending == "peer-error":
        conn.receive_data(frame_bytes(FrameType.ERROR, encode_close(1011, "oops")), 1.0)
    elif ending == "eof":
        conn.receive_eof(1.0)
    elif ending == "timeout":
        conn.close(1.0)
        conn.handle_timer(6.0)
    elif ending == "dead":
        for now in (1.0, 2.0, 3.0):
            conn.handle_timer(now)
    elif ending == "fail":
        conn.fail(WriteTimeout("stuck"))
    else:
        conn.reject(CloseCode.POLICY, "no")
    assert conn.state is State.CLOSED
    conn.data_to_send()
    _poke(conn)
    events = [e for e in conn.events() if isinstance(e, ConnectionTerminated)]
    assert len(events) == 1
    assert conn.terminated is events[0]
    assert conn.data_to_send() == b""
    assert conn.get_timer() is None
    assert conn.take_messages() == []


@pytest.mark.parametrize("split", ["whole", "bytes"])
def test_nothing_after_the_peers_close_counts(split: str) -> None:
    """DATA or garbage after a CLOSE is ignored, however the bytes were split."""
    pair = Pair(QUIET, QUIET).open()
    data = (
        frame_bytes(FrameType.DATA, b"before")
        + frame_bytes(FrameType.CLOSE, encode_close(1000, "bye"))
        + frame_bytes(FrameType.DATA, b"after")
        + b"garbage"
    )
    chunks = [data] if split == "whole" else [data[i : i + 1] for i in range(len(data))]
    for chunk in chunks:
        pair.server.receive_data(chunk, 1.0)
    assert pair.server.take_messages() == [b"before"]
    event = terminated(pair.server)
    assert (event.code, event.reason, event.by_peer, event.error) == (1000, "bye", True, None)


def test_close_without_a_code() -> None:
    pair = Pair(QUIET, QUIET).open()
    pair.server.receive_data(frame_bytes(FrameType.CLOSE, b""), 1.0)
    assert terminated(pair.server).code == CloseCode.NO_CODE
    assert close_frames(pair.server.data_to_send()) == [(FrameType.CLOSE, 1005, "")]


def test_long_reasons_are_cut_at_a_character_boundary() -> None:
    pair = Pair(QUIET, QUIET).open()
    pair.client.close(1.0, 1000, "é" * 600)  # 1200 bytes of UTF-8
    ((_, code, reason),) = close_frames(pair.client.data_to_send())  # decodes strictly
    assert code == 1000
    assert reason == "é" * 512


def test_close_twice_is_a_no_op() -> None:
    pair = Pair(QUIET, QUIET).open()
    pair.client.close(1.0, 1000, "first")
    pair.client.close(2.0, 4000, "second")
    assert close_frames(pair.client.data_to_send()) == [(FrameType.CLOSE, 1000, "first")]
    assert pair.client.get_timer() == 6.0


@pytest.mark.parametrize("code", [0, 999, 5000, 70000])
def test_close_code_out_of_range_is_refused_before_anything_is_sent(code: int) -> None:
    from opensocket.errors import ConfigError

    pair = Pair().open()
    with pytest.raises(ConfigError, match="outside 1000-4999"):
        pair.client.close(1.0, code)
    assert state(pair.client) is State.OPEN
    assert pair.client.data_to_send() == b""
