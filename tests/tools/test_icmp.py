"""The sans-IO ping core: exact bytes, checksums, matching, iputils statistics. No sockets."""

from __future__ import annotations

import struct

import pytest

from opensocket.tools._icmp import (
    EchoTracker,
    PingError,
    PingReply,
    PingStats,
    PingTimeout,
    build_echo,
    checksum,
    format_ms,
    make_payload,
    parse_icmp,
)

COOKIE = b"\xc0\x0c\x1e\x5e\xa1\x5a\x17\x00"
MS = 1_000_000  # ns


def reference_checksum(data: bytes) -> int:
    """RFC 1071 done the slow, obvious way: big-endian 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytes.fromhex("0001f203f4f5f6f7"), 0x220D),  # RFC 1071, section 3 (sum 0xddf2)
        (b"", 0xFFFF),
        (b"\xff\xff", 0x0000),
        (b"\x01", 0xFEFF),  # odd length: padded with a zero byte
        (bytes.fromhex("0800000012340001") + b"abcd", 0x2104),
    ],
)
def test_checksum_vectors(data: bytes, expected: int) -> None:
    assert checksum(data) == expected
    assert reference_checksum(data) == expected


@pytest.mark.parametrize("size", [0, 1, 2, 3, 63, 64, 65, 1499, 9000])
def test_checksum_matches_the_reference_at_any_length(size: int) -> None:
    data = bytes((i * 37 + 11) & 0xFF for i in range(size))
    assert checksum(data) == reference_checksum(data)
    assert checksum(memoryview(bytearray(data))) == reference_checksum(data)


def test_echo_request_exact_bytes() -> None:
    packet = build_echo(0x1234, 1, b"abcd")
    assert packet == bytes.fromhex("080021041234000161626364")
    assert checksum(packet) == 0  # a valid packet sums to zero


def test_identifier_and_sequence_wrap_to_16_bits() -> None:
    packet = build_echo(0x11234, 0x10002, b"")
    assert packet[4:8] == bytes.fromhex("12340002")
    assert checksum(packet) == 0


def test_icmpv6_echo_leaves_the_checksum_to_the_kernel() -> None:
    assert build_echo(0xBEEF, 7, b"xy", v6=True) == bytes.fromhex("80000000beef0007") + b"xy"


def test_payload_layout() -> None:
    sent = 0x0102030405060708
    full = make_payload(20, sent, COOKIE)
    assert full == bytes.fromhex("0102030405060708") + COOKIE + bytes([16, 17, 18, 19])
    assert make_payload(56, sent, COOKIE)[16:] == bytes(range(16, 56))
    assert make_payload(0, sent, COOKIE) == b""
    assert make_payload(5, sent, COOKIE) == bytes.fromhex("0102030405")
    assert len(make_payload(300, sent, COOKIE)) == 300
    assert make_payload(300, sent, COOKIE)[256] == 0  # the pattern wraps at a byte


def reply_for(request: bytes, *, v6: bool = False, ttl: int = 64, ip: bool = True) -> bytes:
    """What the kernel sends back: type changed, checksum recomputed, an IPv4 header first."""
    body = bytearray(request)
    body[0] = 129 if v6 else 0
    body[2:4] = b"\0\0"
    if not v6:
        body[2:4] = struct.pack("!H", checksum(body))
    if v6 or not ip:
        return bytes(body)
    header = bytes([0x45, 0, 0, 20 + len(body), 0, 0, 0x40, 0, ttl, 1, 0, 0]) + bytes(8)
    return header + bytes(body)


def tracker(**kw: object) -> EchoTracker:
    values: dict[str, object] = {"ident": 0x4242, "cookie": COOKIE, **kw}
    return EchoTracker(**values)  # type: ignore[arg-type]


def test_a_reply_is_matched_with_its_rtt_ttl_and_size() -> None:
    t = tracker()
    seq, request = t.icmp_request(1_000 * MS)
    assert seq == 1
    event = t.receive_icmp(reply_for(request, ttl=63), 1_000 * MS + 45_678, ip_header=True)
    assert event == PingReply(1, 45, 64, 63, False, "")
    assert t.outstanding == []


def test_every_parse_input_fed_whole_truncated_and_with_trailing_bytes() -> None:
    t = tracker()
    _, request = t.icmp_request(0)
    packet = reply_for(request)
    for cut in range(len(packet)):
        assert tracker().receive_icmp(packet[:cut], 5, ip_header=True) is None
    # trailing bytes break the checksum: the packet is not ours as sent
    assert t.receive_icmp(packet + b"\0\1", 5, ip_header=True) is None
    assert parse_icmp(packet, ip_header=True) is not None


def test_second_answer_is_a_duplicate() -> None:
    t = tracker()
    _, request = t.icmp_request(0)
    first = t.receive_icmp(reply_for(request), 10_000, ip_header=True)
    second = t.receive_icmp(reply_for(request), 20_000, ip_header=True)
    assert isinstance(first, PingReply)
    assert not first.duplicate
    assert isinstance(second, PingReply)
    assert second.duplicate
    assert second.rtt_us == 20


def test_other_processes_icmp_is_ignored() -> None:
    t = tracker()
    _, request = t.icmp_request(0)
    reply = bytearray(reply_for(request, ip=False))
    other_ident = bytearray(reply)
    other_ident[4:6] = b"\x99\x99"
    other_ident[2:4] = b"\0\0"
    other_ident[2:4] = struct.pack("!H", checksum(other_ident))
    assert t.receive_icmp(bytes(other_ident), 5) is None
    # same identifier (16 bits collide) but another session's cookie
    other_cookie = tracker(cookie=b"x" * 8)
    _, theirs = other_cookie.icmp_request(0)
    assert t.receive_icmp(reply_for(theirs, ip=False), 5) is None
    assert t.receive_icmp(request, 5) is None  # our own request, looped back on a raw socket
    corrupted = bytearray(reply)
    corrupted[-1] ^= 0xFF
    assert t.receive_icmp(bytes(corrupted), 5) is None
    assert t.receive_icmp(bytes(reply), 5) is not None


def test_unreachable_quoting_our_request_is_an_error() -> None:
    t = tracker()
    _, request = t.icmp_request(0)
    inner_ip = bytes([0x45]) + bytes(19)
    body = bytearray(bytes([3, 1, 0, 0, 0, 0, 0, 0]) + inner_ip + request[:8])
    body[2:4] = struct.pack("!H", checksum(body))
    event = t.receive_icmp(bytes(body), 9, address="10.0.0.1")
    assert event == PingError(1, "Destination Host Unreachable", "10.0.0.1")
    assert t.receive_icmp(bytes(body), 9) is None  # answered already


def test_icmpv6_reply_and_unreachable() -> None:
    t = tracker(v6=True)
    _, first = t.icmp_request(0)
    _, second = t.icmp_request(0)
    event = t.receive_icmp(reply_for(first, v6=True), 2_000)
    assert event == PingReply(1, 2, 64, None, False, "")
    unreachable = bytes([1, 3, 0, 0, 0, 0, 0, 0]) + bytes(40) + second[:8]
    assert t.receive_icmp(unreachable, 3_000) == PingError(
        2, "Destination unreachable: Address unreachable", ""
    )


def test_unprivileged_sockets_skip_the_identifier_check() -> None:
    t = tracker(check_ident=False)
    _, request = t.icmp_request(0)
    rewritten = bytearray(reply_for(request, ip=False))
    rewritten[4:6] = b"\x00\x07"  # the kernel's port number replaces our identifier
    rewritten[2:4] = b"\0\0"
    rewritten[2:4] = struct.pack("!H", checksum(rewritten))
    assert isinstance(t.receive_icmp(bytes(rewritten), 1_000), PingReply)


def test_timeouts_expire_in_order_and_late_replies_are_ignored() -> None:
    t = tracker(timeout_ns=100 * MS)
    _, first = t.icmp_request(0)
    t.icmp_request(50 * MS)
    assert t.next_deadline() == 100 * MS
    assert t.expire(99 * MS) == []
    assert t.expire(100 * MS) == [PingTimeout(1)]
    assert t.next_deadline() == 150 * MS
    assert t.receive_icmp(reply_for(first), 120 * MS, ip_header=True) is None
    assert t.expire(150 * MS) == [PingTimeout(2)]
    assert t.next_deadline() is None


def test_sequence_numbers_past_65535_still_match() -> None:
    t = tracker(next_seq=65535)
    seqs = []
    for _ in range(3):
        seq, request = t.icmp_request(0)
        seqs.append(seq)
        event = t.receive_icmp(reply_for(request), 1_000, ip_header=True)
        assert isinstance(event, PingReply)
        assert event.seq == seq
    assert seqs == [65535, 65536, 65537]


def test_udp_probe_round_trip() -> None:
    t = tracker(size=24)
    seq, datagram = t.udp_request(7 * MS)
    assert datagram[:8] == b"OSPG\0\0\0\1"
    assert len(datagram) == 8 + 24
    assert t.receive_udp(b"junk" + datagram[4:], 8 * MS) is None
    assert t.receive_udp(datagram[:7], 8 * MS) is None
    assert t.receive_udp(datagram, 8 * MS) == PingReply(seq, 1000, 32, None, False, "")


def test_tcp_answers_and_failures() -> None:
    t = tracker()
    a = t.tcp_request(0)
    b = t.tcp_request(0)
    assert t.answer_tcp(a, 3_000, address="::1") == PingReply(a, 3, 0, None, False, "::1")
    assert t.fail(b, "closed", 4_000) == PingError(b, "closed", "", 4)
    assert t.fail(b, "again", 5_000) is None
    assert t.answer_tcp(99, 5_000) is None


@pytest.mark.parametrize(
    ("rtts", "line"),
    [
        # figures printed by iputils ping 20221126 on this machine for these per-reply times
        ([39, 40, 45], "rtt min/avg/max/mdev = 0.039/0.041/0.045/0.002 ms"),
        ([189, 45], "rtt min/avg/max/mdev = 0.045/0.117/0.189/0.072 ms"),
        ([453, 261], "rtt min/avg/max/mdev = 0.261/0.357/0.453/0.096 ms"),
        ([1500], "rtt min/avg/max/mdev = 1.500/1.500/1.500/0.000 ms"),
    ],
)
def test_summary_is_computed_as_iputils_does(rtts: list[int], line: str) -> None:
    stats = PingStats(transmitted=len(rtts))
    for seq, rtt in enumerate(rtts, 1):
        stats.add(PingReply(seq, rtt))
    assert stats.summary_lines(31) == [
        f"{len(rtts)} packets transmitted, {len(rtts)} received, 0% packet loss, time 31ms",
        line,
    ]


def test_summary_with_loss_duplicates_and_errors() -> None:
    stats = PingStats(transmitted=3)
    stats.add(PingReply(1, 100))
    stats.add(PingReply(1, 300, duplicate=True))
    stats.add(PingError(2, "Destination Host Unreachable"))
    stats.add(PingTimeout(3))
    assert stats.summary_lines(2003) == [
        "3 packets transmitted, 1 received, +1 duplicates, +1 errors, 66.6667% packet loss, "
        "time 2003ms",
        "rtt min/avg/max/mdev = 0.100/0.200/0.300/0.100 ms",  # duplicates count in the times
    ]
    assert stats.as_dict()["rtt_ms"] == {"min": 0.1, "avg": 0.2, "max": 0.3, "mdev": 0.1}
    assert PingStats().summary_lines(0) == ["0 packets transmitted, 0 received"]


def test_summary_without_replies_has_null_rtt() -> None:
    stats = PingStats(transmitted=2)
    stats.add(PingTimeout(1))
    stats.add(PingError(2, "Destination Port Unreachable"))
    summary = stats.as_dict()
    assert "rtt_ms" in summary  # JSON consumers read the key without testing for it
    assert summary["rtt_ms"] is None
    assert summary["loss_percent"] == 100.0


@pytest.mark.parametrize(
    ("us", "text"),
    [(45, "0.045"), (999, "0.999"), (1000, "1.00"), (1234, "1.23"), (9994, "9.99"),
     (9995, "10.0"), (12345, "12.3"), (99949, "99.9"), (99950, "100"), (123456, "123")],
)  # fmt: skip
def test_reply_times_are_printed_as_iputils_prints_them(us: int, text: str) -> None:
    assert format_ms(us) == text


def test_the_send_time_can_be_taken_after_building() -> None:
    t = tracker()
    seq, request = t.icmp_request(1_000)  # the payload carries the build time
    t.mark_sent(seq, 9_000)  # the runtime's clock reading right before sendto
    t.mark_sent(99, 9_000)  # unknown probes are ignored
    event = t.receive_icmp(reply_for(request), 10_000, ip_header=True)
    assert isinstance(event, PingReply)
    assert event.rtt_us == 1
    assert 99 not in t.sent
