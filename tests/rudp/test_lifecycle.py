"""Keepalive, idle timeout, dead-peer detection, graceful close, flow control, send buffer."""

from __future__ import annotations

from dataclasses import replace

import pytest

from opensocket.errors import CloseCode, ConfigError, ConnectionClosedOK, FrameTooLarge
from opensocket.rudp import (
    ConnectionTerminated,
    RudpOptions,
    SendBufferFull,
    State,
    Writable,
)

from .helpers import QUIET, open_sim, received


def closed(events: list[object]) -> list[ConnectionTerminated]:
    return [e for e in events if isinstance(e, ConnectionTerminated)]


def test_keepalive_keeps_an_idle_connection_open() -> None:
    opts = RudpOptions(keepalive_interval=1.0, idle_timeout=3.0)
    sim = open_sim(options=opts)
    sent = sim.client.stats.packets_sent
    sim.run_for(30.0)
    assert sim.client.state is State.OPEN
    assert sim.conn is not None
    assert sim.conn.state is State.OPEN
    assert sim.client.stats.packets_sent - sent >= 25  # about one PING a second


def test_idle_timeout_when_the_peer_goes_silent() -> None:
    opts = RudpOptions(keepalive_interval=None, idle_timeout=2.0)
    sim = open_sim(options=opts)
    sim.down.loss = 1.0
    heard = sim.now
    sim.run(lambda: sim.client.state is State.CLOSED, limit=heard + 3)
    assert sim.now == pytest.approx(heard - 0.2 + 2.0, abs=0.25)
    assert closed(sim.client_events) == [
        ConnectionTerminated(CloseCode.IDLE_TIMEOUT, "no datagram from the peer", False)
    ]


def test_dead_peer_detected_after_max_retransmits() -> None:
    opts = replace(QUIET, max_retransmits=4, min_rto=0.1)
    sim = open_sim(options=opts)
    sim.up.loss = 1.0
    start = sim.now
    sim.client.send(0, b"into the void")
    sim.flush()
    sim.run(lambda: sim.client.state is State.CLOSED, limit=start + 30)
    assert closed(sim.client_events) == [
        ConnectionTerminated(CloseCode.HEARTBEAT_TIMEOUT, "the peer stopped acknowledging", False)
    ]
    assert sim.client.stats.retransmits == 4
    rto = 0.1
    assert sim.now <= start + rto * (1 + 2 + 4 + 8 + 16) + 1  # 5 backed-off RTOs


def test_graceful_close_delivers_queued_data_first() -> None:
    sim = open_sim(options=QUIET, loss=0.2, seed=4)
    for i in range(50):
        sim.client.send(0, i.to_bytes(2) * 300)
    sim.client.close(CloseCode.GOING_AWAY, "bye")
    with pytest.raises(ConnectionClosedOK):
        sim.client.send(0, b"too late")
    sim.flush()
    conn = sim.conn
    assert conn is not None
    sim.run(lambda: sim.client.state is State.CLOSED and conn.state is State.CLOSED, limit=60)
    assert received(sim.server_events) == [i.to_bytes(2) * 300 for i in range(50)]
    assert closed(sim.server_events) == [ConnectionTerminated(CloseCode.GOING_AWAY, "bye", True)]
    assert closed(sim.client_events) == [ConnectionTerminated(CloseCode.GOING_AWAY, "bye", False)]
    assert sim.server.connections == {}  # reaped


def test_close_times_out_when_the_peer_is_gone() -> None:
    sim = open_sim(options=replace(QUIET, close_timeout=2.0))
    sim.up.loss = 1.0
    start = sim.now
    sim.client.close()
    sim.flush()
    sim.run(lambda: sim.client.state is State.CLOSED, limit=start + 5)
    assert sim.now == pytest.approx(start + 2.0)
    assert closed(sim.client_events) == [ConnectionTerminated(1000, "", False)]


def test_flow_control_stops_a_sender_whose_receiver_does_not_read() -> None:
    opts = replace(QUIET, receive_window=64 * 1024, max_message=16 * 1024)
    sim = open_sim(options=opts, read_server=False)
    for _ in range(100):
        sim.client.send(0, bytes(10_000))
    sim.flush()
    sim.run_for(5.0)
    conn = sim.conn
    assert conn is not None
    unread = conn._unread + sum(r.buffered for r in conn._recv)
    assert 0 < unread <= 64 * 1024  # the receiver holds at most its window
    assert sim.client._data_sent <= 64 * 1024  # the sender stopped at the window
    assert sim.client.send_buffered > 900_000
    sim.read_server = True
    sim.collect()  # the application reads: the window opens (a FLOW frame goes out)
    sim.flush()
    sim.run(lambda: len(received(sim.server_events)) == 100, limit=sim.now + 30)


def test_send_buffer_limit_and_writable() -> None:
    opts = replace(QUIET, send_buffer=64 * 1024, max_message=16 * 1024)
    sim = open_sim(options=opts)
    for _ in range(6):
        sim.client.send(0, bytes(10_000))
    with pytest.raises(SendBufferFull):
        sim.client.send(0, bytes(10_000))
    sim.flush()
    sim.run(lambda: any(isinstance(e, Writable) for e in sim.client_events), limit=sim.now + 5)
    sim.client.send(0, bytes(10_000))


def test_send_checks_its_arguments() -> None:
    sim = open_sim(options=replace(QUIET, max_message=1000))
    with pytest.raises(FrameTooLarge):
        sim.client.send(0, bytes(1001))
    with pytest.raises(ConfigError):
        sim.client.send(3, b"no such channel")


def test_close_during_handshake_and_events_once() -> None:
    from opensocket.rudp import RudpConnection

    client = RudpConnection.connect(("10.0.0.2", 1), now=0.0)
    client.close(CloseCode.GOING_AWAY)
    client.close()
    assert client.state is State.CLOSED
    assert client.next_event() == ConnectionTerminated(CloseCode.GOING_AWAY, "", False)
    assert client.next_event() is None
    assert client.get_timer() is None
    assert client.datagrams_to_send(1.0) == []


def test_stats_are_filled() -> None:
    sim = open_sim(options=QUIET, loss=0.1, seed=2)
    for _ in range(100):
        sim.client.send(0, bytes(1000))
    sim.flush()
    sim.run(lambda: len(received(sim.server_events)) == 100, limit=30)
    stats = sim.client.get_stats()
    assert stats.srtt > 0.015
    assert stats.min_rtt is not None
    assert stats.min_rtt >= 0.02 - 1e-9
    assert stats.retransmits > 0
    assert stats.lost > 0
    assert stats.bytes_sent > 100_000
    assert stats.messages_sent == 100
    assert sim.conn is not None
    assert sim.conn.stats.messages_received == 100
