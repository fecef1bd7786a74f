"""The public names of opensocket.proxy and opensocket.testing stay as documented."""

from __future__ import annotations

import opensocket.proxy
import opensocket.testing


def test_proxy_exports() -> None:
    assert sorted(opensocket.proxy.__all__) == sorted(
        [
            "DIRECTIONS",
            "KINDS",
            "BackgroundProxy",
            "Fault",
            "FaultId",
            "FaultMethods",
            "FaultSet",
            "Proxy",
            "ProxyStats",
            "make_fault",
        ]
    )
    for name in opensocket.proxy.__all__:
        assert getattr(opensocket.proxy, name) is not None


def test_testing_exports() -> None:
    assert sorted(opensocket.testing.__all__) == [
        "BackgroundProxy",
        "BackgroundServer",
        "Proxy",
        "free_tcp_port",
        "free_udp_port",
    ]
    assert opensocket.testing.Proxy is opensocket.proxy.Proxy
    assert opensocket.testing.BackgroundServer.__name__ == "BackgroundServer"


def test_fault_methods_match_on_both_proxies() -> None:
    methods = [m for m in vars(opensocket.proxy.FaultMethods) if not m.startswith("_")]
    assert sorted(methods) == [
        "add",
        "add_latency",
        "close_after",
        "corrupt",
        "duplicate",
        "limit_bandwidth",
        "loss",
        "reorder",
        "reset_after",
        "stall",
    ]
    for cls in (opensocket.proxy.Proxy, opensocket.proxy.BackgroundProxy):
        for name in ("clear", "list_faults", "stats", "url", "start", "close"):
            assert hasattr(cls, name), (cls, name)
