"""The sans-IO fault engine: exact decisions with an explicit clock and a seeded RNG."""

from __future__ import annotations

import random

import pytest

from opensocket.errors import ConfigError
from opensocket.proxy.faults import (
    DatagramPipe,
    Fault,
    FaultSet,
    StreamPipe,
    fault_from_json,
    make_fault,
)


def stream(*faults: Fault, seed: int = 0, direction: str = "down") -> tuple[FaultSet, StreamPipe]:
    fs = FaultSet(seed)
    for fault in faults:
        fs.add(fault, 0.0)
    return fs, StreamPipe(fs, direction, 0.0)  # type: ignore[arg-type]


def drain(pipe: StreamPipe, now: float) -> bytes:
    return b"".join(pipe.poll(now))


# ---- building faults -----------------------------------------------------------------------


def test_make_fault_validates_and_round_trips_json() -> None:
    fault = make_fault("latency", delay=0.05, jitter=0.01, direction="down", probability=0.5)
    assert fault.to_json() == {
        "kind": "latency",
        "direction": "down",
        "probability": 0.5,
        "delay": 0.05,
        "jitter": 0.01,
    }
    assert fault_from_json(fault.to_json()) == fault
    cut = make_fault("reset", nbytes=10)
    assert fault_from_json(cut.to_json()) == cut


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("teleport", {}, "unknown fault kind"),
        ("latency", {"delay": -1}, "0 or more"),
        ("latency", {"delay": float("nan")}, "finite"),
        ("latency", {"rate": 1}, "takes no parameter rate"),
        ("loss", {"rate": 1.5}, "fraction"),
        ("loss", {"rate": 0.1, "probability": 2}, "fraction"),
        ("reset", {}, "needs nbytes"),
        ("close", {"nbytes": -3}, "whole number"),
        ("close", {"nbytes": 2.5}, "whole number"),
        ("corrupt", {"offset": 1, "xor": 0}, "1 to 255"),
        ("corrupt", {"offset": 1, "xor": 256}, "1 to 255"),
        ("bandwidth", {"rate": 0}, "above 0"),
        ("stall", {"direction": "left"}, "direction must be"),
        ("latency", {"delay": True}, "finite number"),
    ],
)
def test_bad_faults_are_refused_precisely(kind: str, params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_fault(kind, **params)


def test_fault_from_json_needs_a_kind() -> None:
    with pytest.raises(ConfigError, match="needs a 'kind'"):
        fault_from_json({"delay": 1})


def test_fault_set_ids_and_clear() -> None:
    fs = FaultSet(0)
    a = fs.add(make_fault("stall"), 0.0)
    b = fs.add(make_fault("loss", rate=0.1), 0.0)
    assert (a, b) == (1, 2)
    assert fs.clear(a) == [a]
    assert fs.clear(a) == []
    assert [fid for fid, _ in fs.items()] == [b]
    assert fs.clear() == [b]


# ---- streams -------------------------------------------------------------------------------


def test_no_fault_passes_through_at_once() -> None:
    _, pipe = stream()
    pipe.receive(b"hello", 1.0)
    assert pipe.poll(1.0) == [b"hello"]
    assert pipe.next_time(1.0) is None
    pipe.receive_eof(1.0)
    assert pipe.poll(1.0) == [] and pipe.action == "eof"


def test_latency_schedule_is_exact() -> None:
    _, pipe = stream(make_fault("latency", delay=0.25))
    pipe.receive(b"a", 1.0)
    pipe.receive(b"b", 1.5)
    assert pipe.poll(1.24) == []
    assert pipe.next_time(1.0) == 1.25
    assert pipe.poll(1.25) == [b"a"]
    assert pipe.next_time(1.25) == 1.75
    assert pipe.poll(1.74) == []
    assert pipe.poll(1.75) == [b"b"]


def test_jitter_is_seeded_and_never_reorders_a_stream() -> None:
    fault = make_fault("latency", delay=0.05, jitter=0.05)
    _fs, pipe = stream(fault, seed=11)
    dues = []
    for i in range(20):
        pipe.receive(bytes([i]), i * 0.001)
        dues.append(pipe._queue[-1].due)
    assert dues == sorted(dues)  # a later chunk never overtakes an earlier one
    rng = random.Random(11)
    first = max(0.0, 0.05 + rng.uniform(-0.05, 0.05))
    assert dues[0] == pytest.approx(first)
    assert drain(pipe, 1.0) == bytes(range(20))


def test_bandwidth_paces_with_a_token_bucket() -> None:
    _, pipe = stream(make_fault("bandwidth", rate=1000))  # burst: 512 bytes (the minimum)
    pipe.receive(b"x" * 2000, 0.0)
    assert len(drain(pipe, 0.0)) == 512
    assert pipe.next_time(0.0) == pytest.approx(0.512)
    assert len(drain(pipe, 0.512)) == 512
    assert len(drain(pipe, 1.0)) == 488
    assert len(drain(pipe, 10.0)) == 488
    assert pipe.offset_out == 2000


def test_stall_holds_until_cleared() -> None:
    fs, pipe = stream()
    stall = fs.add(make_fault("stall", direction="down"), 0.0)
    pipe.receive(b"held", 0.0)
    assert pipe.poll(5.0) == [] and pipe.next_time(5.0) is None
    assert pipe.held == 4
    fs.clear(stall)
    assert pipe.poll(5.0) == [b"held"] and pipe.held == 0


def test_stall_other_direction_does_not_hold() -> None:
    _fs, pipe = stream(make_fault("stall", direction="up"))
    pipe.receive(b"free", 0.0)
    assert pipe.poll(0.0) == [b"free"]


@pytest.mark.parametrize("kind", ["reset", "close"])
def test_cut_after_bytes_splits_the_chunk_that_crosses_it(kind: str) -> None:
    _, pipe = stream(make_fault(kind, nbytes=7))
    pipe.receive(b"abcd", 0.0)
    assert pipe.poll(0.0) == [b"abcd"] and pipe.action is None
    pipe.receive(b"efghij", 0.0)
    assert pipe.poll(0.0) == [b"efg"]
    assert pipe.action == kind
    pipe.receive(b"more", 0.0)
    assert pipe.poll(0.0) == []
    assert pipe.stats.discarded_bytes == 3 + 4


def test_cut_waits_for_delayed_bytes() -> None:
    _, pipe = stream(make_fault("reset", nbytes=3), make_fault("latency", delay=1.0))
    pipe.receive(b"abcdef", 0.0)
    assert pipe.poll(0.5) == [] and pipe.action is None
    assert pipe.poll(1.0) == [b"abc"] and pipe.action == "reset"


def test_reset_after_zero_bytes_cuts_at_once() -> None:
    _, pipe = stream(make_fault("reset", nbytes=0))
    assert pipe.poll(0.0) == [] and pipe.action == "reset"


def test_cut_after_seconds_cuts_where_the_stream_is() -> None:
    _, pipe = stream(make_fault("close", seconds=2.0))
    pipe.receive(b"early", 1.0)
    assert pipe.poll(1.0) == [b"early"]
    assert pipe.next_time(1.0) == 2.0
    assert pipe.poll(2.0) == [] and pipe.action == "close"
    pipe.receive(b"late", 2.5)
    assert pipe.poll(2.5) == []


def test_fault_added_after_the_offset_cuts_where_the_stream_is() -> None:
    fs, pipe = stream()
    pipe.receive(b"0123456789", 0.0)
    assert drain(pipe, 0.0) == b"0123456789"
    fs.add(make_fault("close", nbytes=5), 1.0)
    pipe.receive(b"abc", 1.0)
    assert pipe.poll(1.0) == [] and pipe.action == "close"


def test_seconds_count_from_when_the_fault_was_added() -> None:
    fs, pipe = stream()
    fs.add(make_fault("reset", seconds=1.0), 5.0)
    pipe.receive(b"x", 5.5)
    assert pipe.poll(5.5) == [b"x"] and pipe.next_time(5.5) == 6.0
    assert pipe.poll(6.0) == [] and pipe.action == "reset"


@pytest.mark.parametrize("split", [1, 3, 100])
def test_corrupt_hits_the_offset_whatever_the_split(split: int) -> None:
    _, pipe = stream(make_fault("corrupt", offset=5, xor=0x20))
    data = b"abcdefghij"
    for i in range(0, len(data), split):
        pipe.receive(data[i : i + split], 0.0)
    assert drain(pipe, 0.0) == b"abcdeFghij"
    assert pipe.stats.corrupted == 1


def test_corrupt_offset_already_passed_is_never_hit() -> None:
    fs, pipe = stream()
    pipe.receive(b"abcdef", 0.0)
    fs.add(make_fault("corrupt", offset=2), 0.0)
    pipe.receive(b"ghi", 0.0)
    assert drain(pipe, 0.0) == b"abcdefghi"


def test_probability_is_drawn_once_per_connection() -> None:
    fs = FaultSet(1)
    fs.add(make_fault("close", nbytes=1, probability=0.5), 0.0)
    outcomes = []
    for _ in range(40):
        pipe = StreamPipe(fs, "down", 0.0)
        for _ in range(3):
            pipe.receive(b"ab", 0.0)
        outcomes.append(drain(pipe, 0.0))
    assert set(outcomes) == {b"a", b"ababab"}  # each connection: always or never
    rng = random.Random(1)
    assert outcomes == [b"a" if rng.random() < 0.5 else b"ababab" for _ in range(40)]


def test_direction_filters_faults() -> None:
    fs = FaultSet(0)
    fs.add(make_fault("corrupt", offset=0, direction="up"), 0.0)
    up, down = StreamPipe(fs, "up", 0.0), StreamPipe(fs, "down", 0.0)
    up.receive(b"a", 0.0)
    down.receive(b"a", 0.0)
    assert (drain(up, 0.0), drain(down, 0.0)) == (b"\x9e", b"a")


# ---- datagrams -----------------------------------------------------------------------------


def dgram(*faults: Fault, seed: int = 0) -> tuple[FaultSet, DatagramPipe]:
    fs = FaultSet(seed)
    for fault in faults:
        fs.add(fault, 0.0)
    return fs, DatagramPipe(fs, "up", 0.0)


def test_loss_follows_the_seeded_rng_exactly() -> None:
    _, pipe = dgram(make_fault("loss", rate=0.3), seed=5)
    out = []
    for i in range(1000):
        pipe.receive(i.to_bytes(2, "big"), 0.0)
        out += pipe.poll(0.0)
    rng = random.Random(5)
    expected = [i.to_bytes(2, "big") for i in range(1000) if not rng.random() < 0.3]
    assert out == expected
    assert pipe.stats.dropped == 1000 - len(expected)


def test_duplicate_sends_twice() -> None:
    _, pipe = dgram(make_fault("duplicate", rate=1.0))
    pipe.receive(b"d", 0.0)
    assert pipe.poll(0.0) == [b"d", b"d"]
    assert pipe.stats.duplicated == 1


def test_reorder_swaps_with_the_next_datagram() -> None:
    fs, pipe = dgram()
    fid = fs.add(make_fault("reorder", rate=1.0, hold=0.5), 0.0)
    pipe.receive(b"1", 0.0)
    assert pipe.poll(0.0) == []  # held for the next one
    fs.clear(fid)
    pipe.receive(b"2", 0.1)
    assert pipe.poll(0.1) == [b"2", b"1"]
    assert pipe.stats.reordered == 1


def test_reordered_datagram_goes_out_after_its_hold() -> None:
    _, pipe = dgram(make_fault("reorder", rate=1.0, hold=0.5))
    pipe.receive(b"1", 0.0)
    assert pipe.next_time(0.0) == 0.5
    assert pipe.poll(0.5) == [b"1"]


def test_datagram_jitter_may_reorder_like_a_network() -> None:
    _, pipe = dgram(make_fault("latency", delay=0.05, jitter=0.05), seed=2)
    for i in range(50):
        pipe.receive(bytes([i]), 0.0)
    out = b"".join(pipe.poll(1.0))
    assert sorted(out) == list(range(50)) and list(out) != list(range(50))


def test_datagram_bandwidth_and_stall() -> None:
    fs, pipe = dgram(make_fault("bandwidth", rate=1000))
    for _ in range(3):
        pipe.receive(b"x" * 400, 0.0)
    assert len(pipe.poll(0.0)) == 2  # 512 tokens: two go out, the second overdraws
    assert pipe.next_time(0.0) == pytest.approx(0.289)
    assert pipe.poll(0.289) == [b"x" * 400]
    stall = fs.add(make_fault("stall"), 0.3)
    pipe.receive(b"y", 0.3)
    assert pipe.poll(9.0) == [] and pipe.next_time(9.0) is None
    fs.clear(stall)
    assert pipe.poll(9.0) == [b"y"]


def test_datagram_close_after_bytes_drops_the_rest() -> None:
    _, pipe = dgram(make_fault("close", nbytes=5))
    for data in (b"abc", b"de", b"f", b"g"):
        pipe.receive(data, 0.0)
    assert pipe.poll(0.0) == [b"abc", b"de"]
    assert pipe.closed and pipe.stats.dropped == 2


def test_datagram_corrupt_with_probability() -> None:
    _, pipe = dgram(make_fault("corrupt", offset=0, xor=1, probability=0.5), seed=3)
    for _ in range(100):
        pipe.receive(b"\x00", 0.0)
    out = pipe.poll(0.0)
    rng = random.Random(3)
    assert out == [b"\x01" if rng.random() < 0.5 else b"\x00" for _ in range(100)]


def test_clearing_latency_never_lets_new_bytes_overtake() -> None:
    fs, pipe = stream()
    fid = fs.add(make_fault("latency", delay=1.0), 0.0)
    pipe.receive(b"first", 0.0)
    fs.clear(fid)  # no fault left: the fast path
    pipe.receive(b"second", 0.5)
    assert pipe.poll(0.5) == []
    assert pipe.next_time(0.5) == 1.0
    assert pipe.poll(1.0) == [b"first", b"second"]
    pipe.receive(b"third", 1.5)
    assert pipe.poll(1.5) == [b"third"] and pipe.next_time(1.5) is None
    assert (pipe.offset_in, pipe.offset_out) == (16, 16)
