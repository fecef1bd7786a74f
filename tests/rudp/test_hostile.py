"""Hostile datagrams: dropped and counted, never an exception, never a state change."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from opensocket.rudp import RudpOptions, State
from opensocket.rudp.connection import RudpConnection
from opensocket.rudp.crypto import AeadProtection, seal_crc
from opensocket.rudp.wire import HEADER, MAGIC, VERSION, PacketType

from .helpers import QUIET, open_sim, received
from .sim import CLIENT, SERVER, Sim

SECRET = b"0123456789abcdef-shared"
SIM = open_sim(options=QUIET)


def capture(sim: Sim) -> list[bytes]:
    """Record every datagram the client sends from now on."""
    seen: list[bytes] = []
    sim.up.filter = lambda d: seen.append(d) or False  # type: ignore[func-returns-value]
    return seen


def total_drops(conn: RudpConnection) -> int:
    return sum(conn.stats.dropped.values())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes_to_server_and_client(data: bytes) -> None:
    before = len(SIM.server.connections)
    SIM.server.receive_datagram(data, ("10.1.1.1", 5), SIM.now)
    SIM.server.receive_datagram(data, CLIENT, SIM.now)
    SIM.client.receive_datagram(data, SERVER, SIM.now)
    assert len(SIM.server.connections) == before
    assert SIM.client.state is State.OPEN
    assert SIM.client.next_event() is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF))
def test_well_formed_header_with_garbage_inside(body: bytes, cid: int, pn: int) -> None:
    for ptype in PacketType:
        packet = seal_crc(bytearray(HEADER.pack(MAGIC, VERSION, ptype, cid, pn) + body))
        SIM.server.receive_datagram(packet, CLIENT, SIM.now)
        SIM.client.receive_datagram(packet, SERVER, SIM.now)
    assert SIM.client.state is State.OPEN


def test_truncated_and_bit_flipped_packets_are_dropped() -> None:
    sim = open_sim(options=QUIET)
    seen = capture(sim)
    sim.client.send(0, b"payload of a real packet")
    sim.flush()
    sim.run_for(0.1)
    assert sim.conn is not None
    packet = seen[0]
    drops = total_drops(sim.conn) + sum(sim.server.stats.dropped.values())
    for cut in range(len(packet)):
        sim.server.receive_datagram(packet[:cut], CLIENT, sim.now)
    for i in range(len(packet)):
        flipped = bytearray(packet)
        flipped[i] ^= 0x40
        sim.server.receive_datagram(bytes(flipped), CLIENT, sim.now)
    after = total_drops(sim.conn) + sum(sim.server.stats.dropped.values())
    assert after - drops == 2 * len(packet)
    sim.collect()
    assert received(sim.server_events) == [b"payload of a real packet"]


def test_forged_connection_id_and_spoofed_address() -> None:
    sim = open_sim(options=QUIET)
    seen = capture(sim)
    sim.client.send(0, b"x")
    sim.flush()
    sim.run_for(0.1)
    assert sim.conn is not None
    forged = bytearray(seen[0][:-4])
    HEADER.pack_into(forged, 0, MAGIC, VERSION, PacketType.DATA, sim.conn.local_cid ^ 1, 99)
    sim.server.receive_datagram(seal_crc(forged), CLIENT, sim.now)
    assert sim.server.stats.dropped["unknown connection id"] == 1
    sim.server.receive_datagram(seen[0], ("10.6.6.6", 1), sim.now)  # right id, wrong source
    assert sim.conn.stats.dropped["address"] == 1


def test_replayed_packets_are_dropped() -> None:
    sim = open_sim(options=QUIET)
    seen = capture(sim)
    for i in range(5):
        sim.client.send(0, bytes([i]))
        sim.flush()
    sim.run_for(0.2)
    assert sim.conn is not None
    for packet in seen:
        sim.server.receive_datagram(packet, CLIENT, sim.now)
    sim.collect()
    assert received(sim.server_events) == [bytes([i]) for i in range(5)]
    assert sim.conn.stats.dropped["replay"] == len(seen)


def test_wrong_key_is_dropped() -> None:
    sim = open_sim(options=replace(QUIET, secret=SECRET))
    assert sim.conn is not None
    stranger = AeadProtection(bytes(32), bytes(12), bytes(32), bytes(12))
    head = HEADER.pack(MAGIC, VERSION, PacketType.DATA, sim.conn.local_cid, 1000)
    packet = stranger.seal(bytearray(head + b"\x01"), 1000)
    sim.server.receive_datagram(packet, CLIENT, sim.now)
    assert sim.conn.stats.dropped["authentication"] == 1
    plain = seal_crc(
        bytearray(head + b"\x01" + bytes(40))
    )  # a plain-mode packet on a secure connection
    sim.server.receive_datagram(plain, CLIENT, sim.now)
    assert sim.conn.stats.dropped["authentication"] == 2
    assert sim.conn.state is State.OPEN


def test_initial_too_small_is_ignored() -> None:
    sim = Sim(options=RudpOptions())
    initial = bytearray(HEADER.pack(MAGIC, VERSION, PacketType.INITIAL, 0, 0) + bytes(100))
    sim.server.receive_datagram(seal_crc(initial), CLIENT, 0.0)
    assert sim.server.stats.dropped["initial too small"] == 1
    assert sim.server.datagrams_to_send(0.0) == []  # nothing sent back: no amplification


def test_a_peer_overrunning_the_flow_window_is_cut_off() -> None:
    opts = replace(QUIET, receive_window=64 * 1024, max_message=16 * 1024)
    sim = open_sim(options=opts, read_server=False)
    sim.client._peer_max_data = 10**9  # a peer that ignores our window
    for _ in range(20):
        sim.client.send(0, bytes(10_000))
    sim.flush()
    sim.run_for(2.0)
    assert sim.conn is not None
    assert sim.conn.state is State.CLOSED
    assert sim.conn.close_code == 1002
    assert sim.conn.stats.dropped["flow control violated"] == 1
