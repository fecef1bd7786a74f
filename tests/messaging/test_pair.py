"""Pair / peer sockets: both directions, several peers, over sessions across a cut."""

from __future__ import annotations

import pytest

from opensocket.messaging.bridge import Bridge
from opensocket.messaging.hwm import HighWaterMark, Outcome, Policy
from opensocket.messaging.pair import Pair
from opensocket.messaging.session import SessionOptions

from .helpers import Net, counter_ids


def test_both_directions_and_choosing_a_peer() -> None:
    net = Net()
    a, b, c = Pair(), Pair(), Pair()
    pb, _ = net.join(a, b)
    net.join(b, c)
    a.send(b"to b", 0)
    with pytest.raises(ValueError, match="2 peers are connected"):
        b.send(b"?", 0)
    with pytest.raises(ValueError, match="peer 99 is not connected"):
        b.send(b"?", 0, peer=99)
    b_to_a = next(p for p in b.peers if (id(b), p) in net.links and net.links[(id(b), p)][0] is a)
    b.send(b"to a", 0, peer=b_to_a)
    net.pump()
    assert [env.payload for _, env in b.take()] == [b"to b"]
    assert [env.payload for _, env in a.take()] == [b"to a"]
    assert a.stats.snapshot().peers[pb].messages_in == 1


def test_inbox_mark() -> None:
    pair = Pair(HighWaterMark(1, policy=Policy.DROP_NEWEST))
    other = Pair()
    net = Net()
    net.join(other, pair)
    assert other.send(b"1", 0) is Outcome.QUEUED
    other.send(b"2", 0)
    net.pump()
    assert pair.paused == set()  # a drop policy keeps reading: the inbox drops, counted
    assert len(pair.take()) == 1 and pair.stats.snapshot().drops["drop-newest"] == 1
    assert any(e.count == 1 for e in pair.events())


def test_over_a_session_the_peer_survives_a_cut() -> None:
    ids = counter_ids()
    left, right = Pair(), Pair()
    client = Bridge(left, sessions=SessionOptions(), new_id=ids)
    server = Bridge(right, sessions=SessionOptions(), new_id=ids)

    def move(link: int) -> None:
        for _ in range(10):
            out = [(server, f) for lk, f in client.frames_to_send(0) if lk == link]
            out += [(client, f) for lk, f in server.frames_to_send(0) if lk == link]
            if not out:
                return
            for bridge, frame in out:
                bridge.receive(link, frame, 0)

    peer = client.connected(1, 0)
    server.accepted(1, 0)
    move(1)
    left.send(b"one", 0)
    client.disconnected(1, 0)
    server.disconnected(1, 0)
    left.send(b"two", 0)  # queued in the core while the session has no link
    client.connected(2, 0, peer=peer)
    server.accepted(2, 0)
    move(2)
    assert [env.payload for _, env in right.take()] == [b"one", b"two"]
    assert list(left.peers) == [peer]
