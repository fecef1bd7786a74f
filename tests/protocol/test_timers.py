"""Heartbeats and idle timeouts, driven by an explicit clock (get_timer/handle_timer)."""

from __future__ import annotations

import math
import struct

import pytest

from opensocket.errors import CloseCode
from opensocket.options import ProtocolOptions
from opensocket.protocol import FrameType, State
from opensocket.protocol.events import PongReceived
from opensocket.protocol.frame import Frame, frame_bytes

from .helpers import Pair, decode_all, state


def frames_of(data: bytes | bytearray) -> list[tuple[int, bytes]]:
    out = []
    for frame in decode_all(data):
        assert isinstance(frame, Frame)
        out.append((frame.type, frame.payload))
    return out


def beating(interval: float = 10.0, misses: int = 3) -> ProtocolOptions:
    return ProtocolOptions(heartbeat=interval, heartbeat_misses=misses)


def test_ping_is_sent_when_idle() -> None:
    pair = Pair(beating(), beating()).open()
    assert pair.client.get_timer() == 10.0
    pair.client.handle_timer(9.999)
    assert pair.client.data_to_send() == b""
    pair.client.handle_timer(10.0)
    assert frames_of(pair.client.data_to_send()) == [(FrameType.PING, struct.pack(">d", 10.0))]
    assert pair.client.get_timer() == 20.0


def test_traffic_replaces_pings() -> None:
    pair = Pair(beating(), beating()).open()
    for tick in range(1, 11):
        now = 10.0 * tick
        pair.client.send(b"busy")
        pair.server.send(b"ok")
        pair.client.handle_timer(now)
        pair.server.handle_timer(now)
        client_out, server_out = pair.client.data_to_send(), pair.server.data_to_send()
        assert decode_all(client_out) == [b"busy"]  # no PING: the message proves we live
        assert decode_all(server_out) == [b"ok"]
        pair.server.receive_data(client_out, now)
        pair.client.receive_data(server_out, now)
    assert pair.client.state is pair.server.state is State.OPEN


def test_an_answering_peer_keeps_the_connection_alive() -> None:
    pair = Pair(beating(), beating()).open()
    for step in range(1, 1001):  # 1000 s = 100 intervals, one second per step
        now = float(step)
        for conn in (pair.client, pair.server):
            timer = conn.get_timer()
            assert timer is not None
            if now >= timer:
                conn.handle_timer(now)
        pair.exchange(now)
    assert pair.client.state is pair.server.state is State.OPEN
    for side in ("client", "server"):
        rtts = [e.rtt for e in pair.events[side] if isinstance(e, PongReceived)]
        # Each side's PONG counts as its traffic for the next tick, so the two alternate:
        # every side pings every other interval.
        assert len(rtts) >= 49
        assert set(rtts) == {0.0}  # delivered within the same step


@pytest.mark.parametrize("misses", [1, 3, 5])
def test_a_silent_peer_is_declared_dead(misses: int) -> None:
    pair = Pair(beating(10.0, misses), beating(10.0, misses)).open(now=100.0)
    pair.client.events()
    times = []
    for _ in range(misses + 2):  # bounded: death comes after `misses` ticks
        timer = pair.client.get_timer()
        if timer is None:
            break
        times.append(timer)
        pair.client.handle_timer(timer)
    assert times == [100.0 + 10.0 * i for i in range(1, misses + 1)]
    pings = frames_of(pair.client.data_to_send())
    assert [t for t, _ in pings] == [FrameType.PING] * (misses - 1)
    event = pair.terminal("client")
    assert event.code == CloseCode.HEARTBEAT_TIMEOUT
    assert f"({misses} heartbeats): declared dead" in event.reason
    assert not event.by_peer
    assert pair.client.state is State.CLOSED
    assert pair.client.get_timer() is None


def test_late_bytes_restart_the_dead_peer_count() -> None:
    pair = Pair(beating(), beating()).open()
    pair.client.handle_timer(10.0)
    pair.client.handle_timer(20.0)
    pair.client.receive_data(frame_bytes(FrameType.PONG, b""), 25.0)
    for now in (30.0, 40.0, 50.0):
        pair.client.handle_timer(now)
        assert pair.client.state is State.OPEN
    pair.client.handle_timer(60.0)
    assert pair.terminal("client").code == CloseCode.HEARTBEAT_TIMEOUT


def test_pings_continue_while_output_is_pending() -> None:
    """Output still queued at a tick (a slow socket) must not suppress the next ping."""
    pair = Pair(beating(), beating())
    pair.c2s()  # the server opens with its WELCOME still queued
    pair.server.handle_timer(10.0)
    first = pair.server.data_to_send()
    assert [t for t, _ in frames_of(first)] == [FrameType.WELCOME, FrameType.PING]
    pair.server.handle_timer(20.0)
    assert [t for t, _ in frames_of(pair.server.data_to_send())] == [FrameType.PING]


def test_pong_gives_the_round_trip() -> None:
    pair = Pair(beating(0), beating(0)).open()
    pair.client.ping(5.0)
    pair.c2s(5.0)
    pair.s2c(5.25)
    (event,) = [e for e in pair.client.events() if isinstance(e, PongReceived)]
    assert event.rtt == 0.25
    assert pair.client.rtt == 0.25


@pytest.mark.parametrize(
    "payload",
    [b"", b"1234", struct.pack(">d", math.nan), struct.pack(">d", -math.inf), b"123456789"],
)
def test_pongs_without_a_usable_stamp_are_ignored(payload: bytes) -> None:
    pair = Pair().open()
    pair.client.events()
    pair.client.receive_data(frame_bytes(FrameType.PONG, payload), 1.0)
    assert pair.client.events() == []
    assert pair.client.rtt is None
    assert pair.client.state is State.OPEN


def test_pong_from_the_future_gives_zero() -> None:
    pair = Pair().open()
    pair.client.receive_data(frame_bytes(FrameType.PONG, struct.pack(">d", 99.0)), 1.0)
    assert pair.client.rtt == 0.0


def test_ping_payload_is_echoed_up_to_64_bytes() -> None:
    pair = Pair().open()
    payload = bytes(range(100))
    pair.server.receive_data(frame_bytes(FrameType.PING, payload), 1.0)
    assert frames_of(pair.server.data_to_send()) == [(FrameType.PONG, payload[:64])]


def test_no_heartbeat_no_timer() -> None:
    pair = Pair(beating(0), beating(0)).open()
    assert pair.client.get_timer() is None
    pair.client.handle_timer(1e9)
    assert pair.client.data_to_send() == b""
    assert pair.client.state is State.OPEN


def idle_pair(idle: float, heartbeat: float = 0.0) -> Pair:
    return Pair(beating(heartbeat), beating(heartbeat), s_idle_timeout=idle).open()


def run_server_timer(pair: Pair, until: float) -> None:
    """Fire the server's timer whenever due, up to ``until`` (bounded)."""
    for _ in range(1000):
        timer = pair.server.get_timer()
        if timer is None or timer > until:
            return
        pair.server.handle_timer(timer)


def test_idle_timeout_closes_gracefully() -> None:
    pair = idle_pair(60.0)
    assert pair.server.get_timer() == 15.0  # checked four times per timeout
    run_server_timer(pair, 59.0)
    assert pair.server.state is State.OPEN
    pair.server.handle_timer(60.0)
    assert state(pair.server) is State.CLOSING
    timer = pair.server.get_timer()
    assert timer is not None
    assert timer > 60.0  # not a stale tick that fires at once
    pair.exchange(60.0)
    server_end, client_end = pair.terminal("server"), pair.terminal("client")
    assert server_end.code == client_end.code == CloseCode.IDLE_TIMEOUT
    assert server_end.reason == client_end.reason == "idle for 60s"
    assert client_end.by_peer
    assert not server_end.by_peer
    assert server_end.error is None


def test_messages_keep_an_idle_timeout_away() -> None:
    pair = idle_pair(60.0)
    for step in range(1, 21):  # 400 s, a message every 20 s
        now = 20.0 * step
        pair.client.send(b"still here")
        pair.exchange(now)
        assert pair.server.take_messages() == [b"still here"]
        run_server_timer(pair, now)
        assert pair.server.state is State.OPEN


def test_heartbeats_do_not_count_as_activity() -> None:
    pair = idle_pair(30.0, heartbeat=10.0)
    assert pair.server.get_timer() == 7.5
    for step in range(1, 5):
        now = 7.5 * step
        for conn in (pair.client, pair.server):
            if (timer := conn.get_timer()) is not None and timer <= now:
                conn.handle_timer(now)
        pair.exchange(now)
    assert pair.terminal("server").code == CloseCode.IDLE_TIMEOUT


def test_timer_in_closing_is_the_earlier_of_tick_and_deadline() -> None:
    pair = Pair(beating(2.0), beating(2.0)).open()
    pair.client.close(1.0)
    assert pair.client.get_timer() == 2.0  # the heartbeat tick comes before 1 + 5 s
    pair.client.handle_timer(2.0)
    assert pair.client.get_timer() == 4.0
