"""End-to-end delivery guarantees over the seeded lossy simulated link."""

from __future__ import annotations

import random

import pytest

from opensocket.rudp import ConnectionTerminated, MessageReceived, RudpOptions, State

from .sim import Sim

ORDERED, SEQUENCED, UNORDERED = 0, 1, 2


def messages(seed: int, count: int, big: int) -> list[bytes]:
    """Messages whose first 8 bytes say their index; some are larger than a datagram."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        size = rng.choice((8, 100, 1000, 3000, big))
        out.append(i.to_bytes(8) + rng.randbytes(size))
    return out


def received(events: list[object], channel: int) -> list[bytes]:
    return [e.data for e in events if isinstance(e, MessageReceived) and e.channel == channel]


def run_exchange(sim: Sim, count: int, big: int = 6000) -> None:
    """Both sides send on every channel; then the client closes; check every guarantee."""
    sim.run(lambda: sim.conn is not None and sim.client.state is State.OPEN, limit=30)
    assert sim.conn is not None
    sent = {}
    for side, conn in (("c", sim.client), ("s", sim.conn)):
        for channel in (ORDERED, UNORDERED, SEQUENCED):
            msgs = messages(sim.seed * 100 + channel * 2 + (side == "s"), count, big)
            sent[side, channel] = msgs
            for msg in msgs:
                conn.send(channel, msg)
    sim.flush()

    def all_reliable_in() -> bool:
        return all(
            len(received(events, ch)) == count
            for events in (sim.server_events, sim.client_events)
            for ch in (ORDERED, UNORDERED)
        )

    sim.run(all_reliable_in, limit=300)
    sim.client.close()
    sim.flush()
    conn = sim.conn
    sim.run(lambda: sim.client.state is State.CLOSED and conn.state is State.CLOSED, limit=400)
    for side, events in (("c", sim.server_events), ("s", sim.client_events)):
        assert received(events, ORDERED) == sent[side, ORDERED]
        got = received(events, UNORDERED)
        assert sorted(got) == sorted(sent[side, UNORDERED])
        assert len(set(got)) == count
        seq = [int.from_bytes(m[:8]) for m in received(events, SEQUENCED)]
        assert seq == sorted(set(seq)), "a stale or duplicate sequenced message was delivered"
        for m in received(events, SEQUENCED):
            assert m == sent[side, SEQUENCED][int.from_bytes(m[:8])]
    closed = [e for e in sim.client_events if isinstance(e, ConnectionTerminated)]
    assert closed == [ConnectionTerminated(1000, "", False)]
    assert [e for e in sim.server_events if isinstance(e, ConnectionTerminated)] == [
        ConnectionTerminated(1000, "", True)
    ]


CASES = [(loss, seed) for loss in (0.0, 0.01, 0.05, 0.1) for seed in range(6)]
CASES += [(0.2, seed) for seed in range(4)] + [(0.3, seed) for seed in range(3)]


@pytest.mark.parametrize(("loss", "seed"), CASES)
def test_exactly_once_over_a_lossy_link(loss: float, seed: int) -> None:
    # a generous close_timeout: at 30% loss the last acks may need several backed-off RTOs
    opts = RudpOptions(close_timeout=30.0)
    sim = Sim(
        seed=seed, options=opts, loss=loss, duplicate=0.05, reorder=0.1, delay=0.02, jitter=0.005
    )
    run_exchange(sim, count=30)
    # bounded simulated time: handshake, transfer and close well within the limits above
    assert sim.now < 60


@pytest.mark.parametrize("seed", range(3))
def test_bandwidth_limited_link_with_queue_drops(seed: int) -> None:
    sim = Sim(seed=seed, loss=0.02, delay=0.02, bandwidth=200_000.0)
    run_exchange(sim, count=40, big=20_000)
    assert sim.now < 60


@pytest.mark.parametrize("loss", [0.0, 0.1, 0.3])
def test_large_messages_fragmented_under_loss(loss: float) -> None:
    opts = RudpOptions(max_message=300_000)
    sim = Sim(seed=7, options=opts, loss=loss, reorder=0.2, delay=0.01)
    sim.run(lambda: sim.client.state is State.OPEN and sim.conn is not None, limit=30)
    rng = random.Random(3)
    big = [rng.randbytes(n) for n in (1300, 65_000, 299_999, 5)]
    for msg in big:
        sim.client.send(ORDERED, msg)
    sim.flush()
    sim.run(lambda: len(received(sim.server_events, ORDERED)) == len(big), limit=200)
    assert received(sim.server_events, ORDERED) == big


def test_a_stalled_channel_does_not_block_another() -> None:
    sim = Sim(seed=1, delay=0.01)
    sim.run(lambda: sim.client.state is State.OPEN and sim.conn is not None)
    sim.up.drop_next = 1  # the first ordered message is lost
    sim.client.send(ORDERED, b"first")
    sim.flush()
    sim.client.send(ORDERED, b"second")
    sim.client.send(UNORDERED, b"other channel")
    sim.flush()
    sim.run(lambda: received(sim.server_events, UNORDERED) == [b"other channel"], limit=0.1)
    assert received(sim.server_events, ORDERED) == []  # held behind the gap, as it must be
    sim.run(lambda: received(sim.server_events, ORDERED) == [b"first", b"second"], limit=2)


def test_unreliable_sequenced_drops_stale() -> None:
    sim = Sim(seed=2, delay=0.01, reorder=0.5, jitter=0.02)
    sim.run(lambda: sim.client.state is State.OPEN and sim.conn is not None)
    for i in range(200):
        sim.client.send(SEQUENCED, i.to_bytes(4))
        sim.flush()
        sim.run_for(0.002)
    sim.run_for(1.0)
    got = [int.from_bytes(m) for m in received(sim.server_events, SEQUENCED)]
    assert got == sorted(set(got))
    assert got[-1] == 199
    assert sim.conn is not None
    assert sim.conn.stats.dropped["stale"] > 0  # reordering made some stale, and they went


@pytest.mark.parametrize(("loss", "seed"), [(0.05, 0), (0.1, 1), (0.2, 2)])
def test_exactly_once_with_aead(loss: float, seed: int) -> None:
    opts = RudpOptions(close_timeout=30.0, secret=b"0123456789abcdef-shared")
    sim = Sim(seed=seed, options=opts, loss=loss, duplicate=0.05, reorder=0.1, delay=0.02)
    run_exchange(sim, count=20)
    assert sim.client.get_stats().dropped["authentication"] == 0  # loss, not forgery
