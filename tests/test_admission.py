"""Admission control with an explicit clock: access lists, caps, per-IP token buckets."""

from __future__ import annotations

import pytest

from opensocket.admission import Admission
from opensocket.errors import CloseCode, ConfigError
from opensocket.options import ServerLimits


def test_total_and_per_ip_caps_and_release() -> None:
    adm = Admission(ServerLimits(max_connections=3, max_connections_per_ip=2))
    assert adm.admit("10.0.0.1", 0) is None
    assert adm.admit("10.0.0.1", 0) is None
    refusal = adm.admit("10.0.0.1", 0)
    assert refusal is not None and refusal.code == CloseCode.CONNECTION_LIMIT
    assert "too many connections from 10.0.0.1" in refusal.reason
    assert adm.admit("10.0.0.2", 0) is None
    total = adm.admit("10.0.0.3", 0)
    assert total is not None and "server connection limit reached (3)" in total.reason
    adm.release("10.0.0.1")
    assert adm.admit("10.0.0.3", 0) is None
    assert adm.total == 3 and adm.per_ip == {"10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.3": 1}
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        adm.release(ip)
    assert adm.total == 0 and adm.per_ip == {}


def test_unix_peers_have_no_ip() -> None:
    adm = Admission(ServerLimits(max_connections_per_ip=1, deny=("0.0.0.0/0",)))
    assert adm.admit(None, 0) is None
    assert adm.admit(None, 0) is None  # no per-IP limit or ACL without an IP
    adm.release(None)
    assert adm.total == 1


def test_allow_and_deny_lists() -> None:
    adm = Admission(ServerLimits(allow=("127.0.0.0/8", "::1/128"), deny=("127.0.0.66/32",)))
    assert adm.admit("127.0.0.1", 0) is None
    assert adm.admit("::1", 0) is None
    assert adm.admit("::ffff:127.0.0.5", 0) is None  # IPv4-mapped on a dual-stack socket
    denied = adm.admit("127.0.0.66", 0)
    assert denied is not None and denied.code == CloseCode.ACCESS_DENIED
    assert "denied by the access list" in denied.reason
    outside = adm.admit("192.0.2.7", 0)
    assert outside is not None and "not in the allow list" in outside.reason


def test_rate_limit_token_bucket_refills_with_time() -> None:
    adm = Admission(ServerLimits(rate=2.0, burst=3))
    results = [adm.admit("127.0.0.1", 10.0) for _ in range(4)]
    assert results[:3] == [None, None, None]
    assert results[3] is not None and results[3].code == CloseCode.RATE_LIMITED
    assert adm.admit("127.0.0.2", 10.0) is None  # buckets are per IP
    assert adm.admit("127.0.0.1", 10.4) is not None  # 0.8 tokens: not yet
    assert adm.admit("127.0.0.1", 10.5) is None  # 1.0 token after 0.5 s at 2/s
    assert adm.admit("127.0.0.1", 10.5) is not None
    assert adm.admit("127.0.0.1", 100.0) is None  # refilled, capped at the burst


def test_bucket_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import opensocket.admission as admission

    monkeypatch.setattr(admission, "MAX_BUCKETS", 4)
    adm = Admission(ServerLimits(rate=1.0, burst=1, max_connections=100))
    for i in range(10):
        assert adm.admit(f"127.0.0.{i}", float(i * 10)) is None
    assert len(adm._buckets) <= 4


def test_bad_limits_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not an IP network"):
        ServerLimits(allow=("10.0.0.300/8",))
    with pytest.raises(ConfigError):
        ServerLimits(max_connections=0)
    with pytest.raises(ConfigError):
        ServerLimits(rate=0)
