"""RudpOptions.redundancy: copies of small reliable messages, on the simulated link."""

from __future__ import annotations

import pytest

from opensocket.errors import ConfigError
from opensocket.rudp import RudpOptions

from .helpers import QUIET, open_sim, received

COPYING = RudpOptions(redundancy=2, keepalive_interval=None, idle_timeout=600.0)


def test_redundancy_is_validated() -> None:
    with pytest.raises(ConfigError, match="redundancy"):
        RudpOptions(redundancy=4)


@pytest.mark.parametrize("seed", range(4))
def test_exactly_once_with_copies_and_buffer_accounting(seed: int) -> None:
    sim = open_sim(options=COPYING, loss=0.1, duplicate=0.05, reorder=0.1, delay=0.02, seed=seed)
    assert sim.conn is not None
    small = [b"s%03d" % i for i in range(150)]
    big = bytes(range(256)) * 8  # 2 KiB: two fragments, never copied
    for i, message in enumerate(small):
        sim.client.send(0, message)
        sim.conn.send(2, message)
        if i % 50 == 0:
            sim.client.send(0, big)
        sim.flush()  # what a runtime does after send()
        sim.run_for(0.005)
    sim.run(lambda: sim.client.send_buffered == 0 and sim.conn.send_buffered == 0, limit=60)
    sim.run_for(1.0)
    got = received(sim.server_events, 0)
    assert [m for m in got if m != big] == small  # in order, exactly once
    assert got.count(big) == 3
    assert sorted(received(sim.client_events, 2)) == small  # unordered: exactly once
    stats = sim.client.get_stats()
    assert stats.redundant == 2 * len(small)  # small ones only, two copies each
    assert stats.bytes_in_flight == 0 and sim.client.send_buffered == 0  # released once


def test_a_lost_original_is_replaced_by_its_copy_within_milliseconds() -> None:
    sim = open_sim(options=COPYING, delay=0.02)
    sim.up.drop_next = 1  # the original goes, the copies follow a few ms apart
    sent_at = sim.now
    sim.client.send(0, b"event")
    sim.flush()
    sim.run(lambda: received(sim.server_events, 0) == [b"event"], limit=5)
    assert sim.now - sent_at <= 0.02 + 0.006  # one-way delay + one copy gap, no round trip
    assert sim.client.get_stats().retransmits == 0


def test_without_redundancy_nothing_is_copied() -> None:
    sim = open_sim(options=QUIET, delay=0.02)
    sim.up.drop_next = 1
    sim.client.send(0, b"event")
    sim.flush()
    sim.run(lambda: received(sim.server_events, 0) == [b"event"], limit=5)
    stats = sim.client.get_stats()
    assert stats.redundant == 0 and stats.retransmits == 1
