"""Wire format: the documented test vector, ACK range encoding, options and exports."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import opensocket.rudp as rudp
from opensocket.errors import ConfigError
from opensocket.rudp import ChannelKind, MessageReceived, RudpConnection, RudpOptions
from opensocket.rudp.crypto import seal_crc
from opensocket.rudp.recovery import ReceivedRanges
from opensocket.rudp.wire import (
    HEADER,
    MAGIC,
    VERSION,
    PacketType,
    decode_ack,
    encode_ack,
)

PEER = ("10.0.0.1", 4000)
# docs/rudp.md, "Test vector": a client's PING (pn 0), then the server's reply 5 ms later
PING = bytes.fromhex("52 55 01 04 01 02 03 04 00 00 00 00 01 71 4d ee a2")
REPLY = bytes.fromhex(
    "52 55 01 04 0a 0b 0c 0d 00 00 00 00"  # header: DATA to cid 0x0a0b0c0d, pn 0
    "02 00 00 00 00 02 71 00 00 00 00 00"  # ACK largest 0, delay 625 x 8 us, no extra ranges
    "03 00 00 00 00 00 00 00 05 68 65 6c 6c 6f"  # MSG channel 0, seq 0, 5 bytes "hello"
    "9b a3 f6 25"  # CRC-32C of everything before
)


def test_vector() -> None:
    conn = RudpConnection.accepted(
        RudpOptions(), PEER, 0x01020304, 0x0A0B0C0D, bytes(16), 65536, 0.0
    )
    ping = seal_crc(bytearray(HEADER.pack(MAGIC, VERSION, PacketType.DATA, 0x01020304, 0) + b"\1"))
    assert ping == PING
    conn.receive_datagram(PING, PEER, 0.0)
    conn.send(0, b"hello")
    out = conn.datagrams_to_send(0.005)
    assert [d for d, _ in out][1:] == [REPLY]  # after the ACCEPT, whose nonce is random
    assert out[0][0][:12] == bytes.fromhex("52 55 01 03 0a 0b 0c 0d 00 00 00 00")


def test_vector_is_understood_by_a_client() -> None:
    client = RudpConnection.connect(PEER, now=0.0)
    client.local_cid = 0x0A0B0C0D
    client._open(0.0)
    client._next_pn = 1  # it sent the PING
    client.receive_datagram(REPLY, PEER, 0.01)
    assert client.next_event() is not None  # Connected
    assert client.next_event() == MessageReceived(0, b"hello")


@given(st.sets(st.integers(0, 5000), min_size=1, max_size=300))
def test_ack_ranges_round_trip(pns: set[int]) -> None:
    ranges = ReceivedRanges()
    for pn in sorted(pns, key=lambda p: (p * 7919) % 5003):  # out of order
        ranges.add(pn)
    frame = encode_ack(ranges.ranges, 0.001)
    decoded, delay, end = decode_ack(memoryview(frame), 0)
    assert end == len(frame)
    assert delay == pytest.approx(0.001, abs=8e-6)
    covered = {pn for lo, hi in decoded for pn in range(lo, hi + 1)}
    assert covered <= pns  # never acks what was not received
    newest = sorted(pns)[-1]
    assert newest in covered
    assert len(decoded) == min(len(ranges.ranges), 33)


@pytest.mark.parametrize(
    "kw",
    [
        {"max_datagram": 100},
        {"max_datagram": 70000},
        {"max_message": 0},
        {"channels": ()},
        {"channels": ("bogus",)},
        {"idle_timeout": 0},
        {"keepalive_interval": -1},
        {"min_rto": 0},
        {"max_ack_delay": 1.0},
        {"max_retransmits": 0},
        {"receive_window": 10},
        {"send_buffer": 10},
        {"secret": b"short"},
        {"congestion": "bbr9"},
    ],
)
def test_options_are_validated(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RudpOptions(**kw)  # type: ignore[arg-type]


def test_channel_kinds_by_name() -> None:
    opts = RudpOptions(channels=("reliable-ordered", "unreliable-sequenced", 3))  # type: ignore[arg-type]
    assert opts.channels == (
        ChannelKind.RELIABLE_ORDERED,
        ChannelKind.UNRELIABLE_SEQUENCED,
        ChannelKind.RELIABLE_UNORDERED,
    )


def test_exports() -> None:
    for name in rudp.__all__:
        assert getattr(rudp, name) is not None
    assert {"RudpConnection", "RudpServer", "RudpOptions", "MessageReceived"} <= set(rudp.__all__)
