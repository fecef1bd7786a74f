"""Counters and their frozen snapshots."""

from __future__ import annotations

import dataclasses

import pytest

from opensocket.errors import HandshakeError
from opensocket.messaging.monitor import (
    Connected,
    Disconnected,
    HandshakeFailed,
    Reconnecting,
    StatsRecorder,
)


def test_counters_per_socket_and_peer() -> None:
    stats = StatsRecorder()
    stats.message_in(1, 10)
    stats.message_in(2, 5)
    stats.message_out(1, 7)
    stats.message_out(None, 3)
    stats.drop("drop-newest", 2, 4)
    stats.add("reconnects", 1)
    stats.add("resumes", 1, 2)
    snap = stats.snapshot()
    assert (snap.messages_in, snap.bytes_in, snap.messages_out, snap.bytes_out) == (2, 15, 2, 10)
    assert snap.dropped == 4 and snap.drops["drop-newest"] == 4
    assert snap.peers[1].reconnects == 1 and snap.peers[1].resumes == 2
    assert snap.peers[2].dropped == 4 and snap.peers[2].bytes_in == 5
    stats.message_in(1, 1)
    assert snap.messages_in == 2  # a snapshot does not move
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.messages_in = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.drops["x"] = 1  # type: ignore[index]
    stats.forget(1)
    assert 1 not in stats.snapshot().peers and stats.snapshot().messages_in == 3
    with pytest.raises(KeyError):
        stats.add("nonsense")


def test_monitor_events() -> None:
    error = HandshakeError("bad")
    events = [
        Connected(1, "tcp://127.0.0.1:5"),
        Disconnected(1, "tcp://127.0.0.1:5", "reset"),
        Reconnecting("tcp://127.0.0.1:5", 2, 0.4),
        HandshakeFailed("tcp://127.0.0.1:5", error),
    ]
    assert events[2].delay == 0.4 and events[3].error is error
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].peer = 2  # type: ignore[misc]
