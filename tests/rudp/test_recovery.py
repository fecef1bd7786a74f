"""RTT/RTO per RFC 6298, Karn's rule, fast retransmit and NewReno, on an explicit clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from opensocket.rudp import BbrLite, FixedWindow, NewReno
from opensocket.rudp.congestion import Pacer
from opensocket.rudp.recovery import LossRecovery, ReceivedRanges, RttEstimator, SentPacket

from .helpers import QUIET, open_sim, received

MSS = 1200


def test_rtt_estimator_follows_rfc6298() -> None:
    rtt = RttEstimator(initial_rtt=0.5, min_rto=0.001, max_rto=60)
    assert rtt.rto == pytest.approx(0.5 + 4 * 0.25)  # before any sample: from initial_rtt
    rtt.update(0.1, 0.0)
    assert (rtt.srtt, rtt.rttvar) == (pytest.approx(0.1), pytest.approx(0.05))
    assert rtt.rto == pytest.approx(0.1 + 4 * 0.05)
    rtt.update(0.2, 0.0)
    assert rtt.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.1)
    assert rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.2)
    assert rtt.min_rtt == pytest.approx(0.1)


def test_rto_is_clamped() -> None:
    rtt = RttEstimator(initial_rtt=0.001, min_rto=0.2, max_rto=1.0)
    rtt.update(0.001, 0.0)
    assert rtt.rto == 0.2
    rtt.update(10.0, 0.0)
    assert rtt.rto == 1.0


def _recovery() -> tuple[LossRecovery, list[int], NewReno]:
    lost: list[int] = []
    cc = NewReno(MSS)
    rec = LossRecovery(
        RttEstimator(0.1, 0.2, 10.0), cc, lambda p: lost.append(p.pn), lambda p: None
    )
    return rec, lost, cc


def test_karn_no_sample_from_a_retransmission_ack_of_the_original() -> None:
    rec, lost, _ = _recovery()
    rec.on_sent(SentPacket(0, 0.0, 100, True))
    assert rec.timer() == pytest.approx(0.0 + 0.3)  # RTO from initial_rtt 0.1: 0.1 + 4 * 0.05
    rec.on_timeout(0.3)
    assert lost == [0]
    assert rec.backoff == 1
    rec.on_sent(SentPacket(1, 0.3, 100, True))  # the data again, under a new number
    assert rec.timer() == pytest.approx(0.3 + 0.6)  # backed off: doubled
    # a late ack of the original transmission names packet 0: no sample, nothing acked
    assert rec.on_ack([(0, 0)], 0.0, 0.35) is False
    assert not rec.rtt.sampled
    # the ack of packet 1 measures exactly the retransmission's round trip
    assert rec.on_ack([(0, 1)], 0.0, 0.33) is True
    assert rec.rtt.latest == pytest.approx(0.03)
    assert rec.backoff == 0


def test_packet_threshold_declares_loss_three_later_acked() -> None:
    rec, lost, _ = _recovery()
    for pn in range(5):
        rec.on_sent(SentPacket(pn, pn * 0.001, 100, True))
    rec.on_ack([(1, 2)], 0.0, 0.05)
    assert lost == []  # only 2 later packets acked: 0 is not yet lost (reordering is allowed)
    assert rec.loss_time is not None  # but the time threshold is armed
    rec.on_ack([(1, 3)], 0.0, 0.051)
    assert lost == [0]  # the third later packet acked: the fast retransmit


def test_time_threshold_declares_loss() -> None:
    rec, lost, _ = _recovery()
    rec.on_sent(SentPacket(0, 0.0, 100, True))
    rec.on_sent(SentPacket(1, 0.001, 100, True))
    rec.on_ack([(1, 1)], 0.0, 0.05)
    due = rec.timer()
    assert due is not None
    assert due == pytest.approx(9 / 8 * (0.05 - 0.001))  # 9/8 of the RTT just measured
    rec.on_timeout(due)
    assert lost == [0]


def test_received_ranges_replay_window() -> None:
    ranges = ReceivedRanges()
    assert [ranges.add(pn) for pn in (0, 1, 2, 5, 4, 3, 3, 9)] == [True] * 6 + [False, True]
    assert ranges.ranges == [[0, 5], [9, 9]]
    assert ranges.contains(4)
    assert not ranges.contains(7)
    for pn in range(11, 400, 2):  # gaps everywhere: only the newest ranges are kept
        ranges.add(pn)
    assert ranges.floor > 0
    assert ranges.add(0) is False  # below the window: refused as too old


def test_newreno_slow_start_then_halving_once_per_episode() -> None:
    cc = NewReno(MSS)
    assert cc.cwnd == 10 * MSS
    cc.on_packets_acked(MSS, newest_sent=1.0, now=1.1)
    assert cc.cwnd == 11 * MSS  # slow start: one MSS per MSS acked
    cc.on_packets_lost(MSS, newest_sent=1.0, now=2.0)
    assert cc.cwnd == 11 * MSS // 2
    assert cc.ssthresh == cc.cwnd
    cc.on_packets_lost(MSS, newest_sent=1.5, now=2.1)  # sent before recovery began: same episode
    assert cc.cwnd == 11 * MSS // 2
    cc.on_packets_acked(MSS, newest_sent=1.9, now=2.2)  # no growth in recovery
    assert cc.cwnd == 11 * MSS // 2
    before = cc.cwnd
    cc.on_packets_acked(before, newest_sent=2.5, now=2.6)  # one window acked in avoidance
    assert cc.cwnd == before + MSS
    cc.on_packets_lost(MSS, newest_sent=3.0, now=3.1)  # a new episode halves again
    assert cc.cwnd == (before + MSS) // 2
    assert cc.loss_episodes == 2
    cc.on_rto(4.0)
    assert cc.cwnd == 2 * MSS


def test_fixed_window_ignores_loss() -> None:
    cc = FixedWindow(MSS, packets=8)
    cc.on_packets_lost(MSS, 1.0, 2.0)
    cc.on_rto(3.0)
    assert cc.cwnd == 8 * MSS


def test_rto_drop_one_datagram_assert_timer_and_retransmission() -> None:
    opts = replace(QUIET, min_rto=0.05)
    sim = open_sim(options=opts, delay=0.01)
    client = sim.client
    rto = client.recovery.rto
    assert rto == pytest.approx(client.rtt.srtt + 4 * client.rtt.rttvar)
    sim.up.drop_next = 1
    start = sim.now
    client.send(0, b"lost once")
    sim.flush()
    assert client.get_timer() == pytest.approx(start + rto)
    assert client.stats.retransmits == 0
    sim.run(lambda: client.stats.retransmits == 1, limit=start + rto + 1e-9)
    assert sim.now == pytest.approx(start + rto)
    assert client.recovery.backoff == 1
    assert client.get_timer() == pytest.approx(sim.now + 2 * rto)  # exponential backoff
    sim.run(lambda: received(sim.server_events) == [b"lost once"], limit=start + rto + 0.011)
    sim.run_for(0.05)
    assert client.recovery.backoff == 0  # the ack of the retransmission reset it
    assert client.rtt.latest == pytest.approx(0.02, abs=0.006)  # Karn: its own RTT, not + RTO


def test_fast_retransmit_before_the_rto() -> None:
    sim = open_sim(options=QUIET, delay=0.01)
    client = sim.client
    sim.up.drop_next = 1
    start = sim.now
    for i in range(6):
        client.send(0, bytes([i]) * 10)
        sim.flush()  # one packet each
    sim.run(lambda: client.stats.retransmits == 1, limit=start + 1)
    assert sim.now < start + client.recovery.rtt.rto / 2  # dup acks, not the timer
    sim.run(lambda: len(received(sim.server_events)) == 6, limit=start + 2)
    assert received(sim.server_events) == [bytes([i]) * 10 for i in range(6)]


RENO = replace(QUIET, congestion="newreno")


def test_slow_start_grows_the_window_on_a_clean_link() -> None:
    sim = open_sim(options=RENO, delay=0.01)
    for _ in range(200):
        sim.client.send(0, bytes(1000))
    sim.flush()
    sim.run(lambda: len(received(sim.server_events)) == 200, limit=10)
    stats = sim.client.get_stats()
    assert stats.cwnd > 10 * MSS + 100_000  # grew by the bytes acked: slow start
    assert stats.loss_episodes == 0
    assert stats.retransmits == 0


def test_loss_halves_the_window_once_per_episode() -> None:
    sim = open_sim(options=RENO, delay=0.01)
    client = sim.client
    cwnd = client.cc.cwnd
    sim.up.drop_next = 3  # a burst of three losses in one window: one episode
    for _ in range(20):
        client.send(0, bytes(1000))
    sim.flush()
    sim.run(lambda: len(received(sim.server_events)) == 20, limit=10)
    assert client.get_stats().loss_episodes == 1
    # halved once from what it had grown to (at most cwnd + the 20 packets): not twice
    assert cwnd // 2 <= client.cc.ssthresh <= (cwnd + 20 * 1100) // 2


def test_pacer_spreads_packets() -> None:
    pacer = Pacer(burst=3000)
    assert pacer.wait(0.0, None, 1200) is None  # no rate: no pacing
    for _ in range(2):
        assert pacer.wait(0.0, 1e6, 1200) is None
        pacer.spend(1200)
    due = pacer.wait(0.0, 1e6, 1200)  # 600 tokens left: 600 more bytes at 1 MB/s
    assert due == pytest.approx(0.0006)
    assert pacer.wait(due, 1e6, 1200) is None


def test_bbr_models_the_path_and_ignores_random_loss() -> None:
    cc = BbrLite(MSS)
    now = 0.0
    for _ in range(40):  # rounds of 100 ms RTT delivering 100 kB each: 1 MB/s
        cc.on_packet_sent(MSS, now)
        now += 0.1
        cc.on_packets_acked(100_000, newest_sent=now - 0.1, now=now)
    assert cc.filled
    assert cc.bandwidth == pytest.approx(1e6)
    assert cc.cwnd == pytest.approx(2 * 1e6 * 0.1, rel=1e-3)  # twice the bandwidth-delay product
    cc.on_packets_lost(50 * MSS, newest_sent=now, now=now)
    assert cc.cwnd == pytest.approx(2 * 1e6 * 0.1, rel=1e-3)
    rate = cc.pacing_rate(0.1)
    assert rate is not None
    assert 0.7e6 <= rate <= 1.3e6
    cc.on_rto(now)
    assert cc.cwnd == 4 * MSS


def bulk_time(congestion: str, loss: float) -> float:
    opts = replace(QUIET, congestion=congestion)
    sim = open_sim(options=opts, delay=0.02, bandwidth=2e6, loss=loss, seed=5)
    start = sim.now
    for _ in range(1500):
        sim.client.send(0, bytes(1000))
    sim.flush()
    sim.run(lambda: len(received(sim.server_events)) == 1500, limit=start + 200)
    return sim.now - start


def test_bbr_keeps_goodput_under_random_loss() -> None:
    # simulated time, so deterministic: at 5% loss BBR keeps over half its lossless goodput,
    # where NewReno reads every loss as congestion
    clean = bulk_time("bbr", 0.0)
    assert bulk_time("bbr", 0.05) < 2 * clean
    assert bulk_time("newreno", 0.05) > 2 * bulk_time("newreno", 0.0)
