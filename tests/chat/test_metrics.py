"""The Prometheus page: parse it back and check every family and value."""

from __future__ import annotations

import re

from opensocket.chat import ChatCounters, render_metrics

from .helpers import TOKEN, Harness

SAMPLE = re.compile(r'^([a-z_]+)(?:\{([a-z_]+)="((?:[^"\\]|\\.)*)"\})? (-?\d+(?:\.\d+)?)$')


def parse(text: str) -> tuple[dict[str, tuple[str, str]], dict[tuple[str, str], float]]:
    """Families {name: (type, help)} and samples {(name, label value): value}."""
    assert text.endswith("\n")
    families: dict[str, list[str]] = {}
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[7:].split(" ", 1)
            families[name] = [help_text]
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in ("counter", "gauge")
            assert name in families, "TYPE before HELP"
            families[name].insert(0, kind)
        else:
            match = SAMPLE.match(line)
            assert match, f"not a valid sample line: {line!r}"
            name, _, label, value = match.groups()
            assert name in families, f"sample without HELP/TYPE: {name}"
            samples[(name, label or "")] = float(value)
    return {k: (v[0], v[1]) for k, v in families.items()}, samples


def test_metrics_page_after_activity() -> None:
    h = Harness(rate=1.0, burst=3)
    h.login("a", "alice")
    h.connect("w", protocol="websocket")
    h.cmd("w", "hello", nick="webby")
    h.join("a", "r")
    h.cmd("a", "say", room="r", text="hi")
    h.cmd("a", "say", room="r", text="too fast")
    h.send("w", b"\xff")
    h.cmd("a", "ban", nick="nobody", token=TOKEN)  # rate limited too: nothing banned
    h.hub.record_drop("slow")
    h.hub.record_drop("slow")
    families, samples = parse(render_metrics(h.hub.metrics()))
    assert families["opensocket_chat_connections_total"][0] == "counter"
    assert families["opensocket_chat_rooms"] == (
        "gauge",
        "Rooms that exist now (cluster-wide with a backplane).",
    )
    assert samples[("opensocket_chat_connections_total", "native")] == 1
    assert samples[("opensocket_chat_connections_total", "websocket")] == 1
    assert samples[("opensocket_chat_connections", "websocket")] == 1
    assert samples[("opensocket_chat_rooms", "")] == 1
    assert samples[("opensocket_chat_users", "")] == 2
    assert samples[("opensocket_chat_messages_in_total", "")] == 1
    assert samples[("opensocket_chat_commands_in_total", "")] == 7
    assert samples[("opensocket_chat_errors_total", "rate_limited")] == 2
    assert samples[("opensocket_chat_errors_total", "invalid_utf8")] == 1
    assert samples[("opensocket_chat_drops_total", "slow")] == 2
    assert samples[("opensocket_chat_bans_total", "")] == 0
    assert samples[("opensocket_chat_backplane_up", "")] == 1
    assert samples[("opensocket_chat_backplane_ghosts_total", "")] == 0
    assert samples[("opensocket_chat_messages_out_total", "")] == h.hub.counters.events_out
    for name, (kind, _) in families.items():
        assert name.startswith("opensocket_chat_")
        assert name.endswith("_total") == (kind == "counter")


def test_label_values_are_escaped() -> None:
    counters = ChatCounters(drops={'a "quoted"\\path\nx': 3}, backplane_up=0)
    families, samples = parse(render_metrics(counters))
    assert samples[("opensocket_chat_drops_total", 'a \\"quoted\\"\\\\path\\nx')] == 3
    assert samples[("opensocket_chat_backplane_up", "")] == 0
    assert len(families) == 18
