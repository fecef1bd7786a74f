"""The UDP accounting and the result schema helpers, on synthetic input (no sockets)."""

from __future__ import annotations

import time

import pytest

from opensocket.errors import ConfigError
from opensocket.tools._bench_flows import _pace, gso_batch
from opensocket.tools._bench_proto import BenchParams, StreamReport, latency_summary, parse_size
from opensocket.tools._bench_server import new_cookie
from opensocket.tools._bench_udp import HEADER_SIZE, UdpReceiver, pack_header, unpack_header

MS = 1_000_000


def feed(arrivals: list[tuple[int, int, int]]) -> UdpReceiver:
    rx = UdpReceiver()
    for seq, sent, arrival in arrivals:
        rx.datagram(seq, sent, arrival, 100)
    return rx


def test_header_round_trip_exact_bytes() -> None:
    buf = bytearray(32)
    pack_header(buf, 3, 7, 0x0102030405060708)
    assert bytes(buf[:HEADER_SIZE]) == (
        b"\x00\x00\x00\x03" + b"\x00" * 4 + b"\x00" * 7 + b"\x07" + bytes(range(1, 9))
    )
    assert unpack_header(buf) == (3, 7, 0x0102030405060708)
    with pytest.raises(ValueError, match="at least 24 bytes"):
        unpack_header(buf[:23])


def test_in_order_no_loss_no_jitter() -> None:
    rx = feed([(i, i * MS, i * MS + 5 * MS) for i in range(1, 11)])
    totals = rx.totals(sent=10)
    assert (totals.received, totals.expected, totals.lost, totals.out_of_order) == (10, 10, 0, 0)
    assert totals.jitter_ms == 0.0
    assert totals.bytes == 1000


def test_gap_counts_lost() -> None:
    rx = feed([(1, 0, 0), (2, 0, 0), (5, 0, 0), (6, 0, 0)])
    totals = rx.totals()
    assert (totals.expected, totals.lost, totals.out_of_order) == (6, 2, 0)
    assert totals.lost_percent == pytest.approx(100 * 2 / 6)


def test_late_datagram_is_out_of_order_and_fills_a_gap() -> None:
    rx = feed([(1, 0, 0), (3, 0, 0), (2, 0, 0), (4, 0, 0)])
    totals = rx.totals()
    assert (totals.received, totals.lost, totals.out_of_order) == (4, 0, 1)


def test_tail_loss_known_only_from_the_sender_count() -> None:
    rx = feed([(1, 0, 0), (2, 0, 0)])
    assert rx.totals().lost == 0
    totals = rx.totals(sent=5)
    assert (totals.expected, totals.lost) == (5, 3)


def test_jitter_rfc3550() -> None:
    # transits 10, 12, 9 ms: D = 2 then 3; J = 2/16 = 0.125, then 0.125 + (3 - 0.125)/16
    rx = feed([(1, 0, 10 * MS), (2, 100 * MS, 112 * MS), (3, 200 * MS, 209 * MS)])
    expected = 0.125 + (3 - 0.125) / 16
    assert rx.totals().jitter_ms == pytest.approx(expected)


def test_constant_clock_offset_does_not_change_jitter() -> None:
    base = [(1, 0, 10 * MS), (2, 100 * MS, 112 * MS), (3, 200 * MS, 209 * MS)]
    shifted = [(s, t, a + 123_456_789_000) for s, t, a in base]
    assert feed(shifted).totals().jitter_ms == pytest.approx(feed(base).totals().jitter_ms)


def test_parse_size_units() -> None:
    assert parse_size("128K", "-l") == 131072
    assert parse_size("1m", "-l") == 1024 * 1024
    assert parse_size("100M", "-b", rate=True) == 100e6
    assert parse_size("0", "-b", rate=True) == 0
    with pytest.raises(ConfigError, match="-l 'lots'"):
        parse_size("lots", "-l")


def test_params_defaults_and_validation() -> None:
    assert BenchParams().length == 128 * 1024
    assert BenchParams(protocol="udp").length == 1400
    assert BenchParams(mode="rtt").length == 64
    with pytest.raises(
        ConfigError, match=r"UDP datagram size\) must be 24 to 65507 bytes \(got 10\)"
    ):
        BenchParams(protocol="udp", length=10)
    with pytest.raises(ConfigError, match="-R does not apply"):
        BenchParams(mode="rtt", reverse=True)
    with pytest.raises(ConfigError, match=r"-P/--parallel must be 1 to 128 \(got 0\)"):
        BenchParams(streams=0)
    assert BenchParams(interval=0).interval == 0  # -i 0: no interval reports
    params = BenchParams(protocol="udp", streams=3, duration=2.5, bitrate=1e6)
    assert BenchParams.from_dict(params.to_dict()) == params
    with pytest.raises(ConfigError, match=r"params\.streams"):
        BenchParams.from_dict({**params.to_dict(), "streams": "3"})
    with pytest.raises(ConfigError, match=r"params\.reverse"):
        BenchParams.from_dict({**params.to_dict(), "reverse": 1})


def test_cookies_never_look_like_a_framed_connection() -> None:
    # the server tells data streams from framed ones ("OS" magic, TLS record 0x16) by byte 0
    firsts = {new_cookie()[0] for _ in range(2000)}
    assert ord("O") not in firsts and 0x16 not in firsts
    assert len(firsts) > 100  # still random


def test_latency_percentiles_nearest_rank() -> None:
    summary = latency_summary([float(x) for x in range(100, 0, -1)])
    assert summary is not None
    assert (summary["p50_ms"], summary["p90_ms"], summary["p99_ms"]) == (50.0, 90.0, 99.0)
    assert (summary["min_ms"], summary["max_ms"], summary["count"]) == (1.0, 100.0, 100)
    assert latency_summary([]) is None


def test_pacing_past_the_deadline_does_not_sleep() -> None:
    report = StreamReport(0, bytes=10_000)
    now = time.monotonic()
    _pace(report, now, 1.0, now - 1.0)  # due far ahead, deadline already passed: no error


def test_gso_batch_sizes() -> None:
    assert gso_batch(1400, 0) == 46  # 64 KiB of 1400-byte datagrams
    assert gso_batch(100, 0) == 64  # the kernel's segment limit
    assert gso_batch(40_000, 0) == 1
    assert gso_batch(1400, 1e6) == 1  # 1 Mbit/s: one datagram at a time, evenly paced
    assert gso_batch(1000, 80e6) == 10  # bursts of at most a millisecond
