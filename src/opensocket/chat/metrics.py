"""Hub counters and their Prometheus text exposition (format 0.0.4), sans I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = ["ChatCounters", "render_metrics"]

PREFIX: Final = "opensocket_chat_"


@dataclass(slots=True)
class ChatCounters:
    """Running counts of one hub; ``rooms``/``users``/``backplane_up`` are gauges."""

    connections_total: dict[str, int] = field(default_factory=dict)
    connections_open: dict[str, int] = field(default_factory=dict)
    refused_total: int = 0
    commands_in: int = 0
    messages_in: int = 0
    events_out: int = 0
    bytes_out: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    kicks: int = 0
    bans: int = 0
    remote_in: int = 0
    remote_out: int = 0
    remote_bad: int = 0
    ghosts: int = 0
    rooms: int = 0
    users: int = 0
    backplane_up: int = 1


# (metric name, type, help, ChatCounters attribute, label name for dict-valued attributes)
FAMILIES: Final = (
    (
        "connections_total",
        "counter",
        "Connections accepted, by protocol.",
        "connections_total",
        "protocol",
    ),
    ("connections", "gauge", "Connections open now, by protocol.", "connections_open", "protocol"),
    (
        "refused_total",
        "counter",
        "Connections refused at connect (banned IP).",
        "refused_total",
        "",
    ),
    ("rooms", "gauge", "Rooms that exist now (cluster-wide with a backplane).", "rooms", ""),
    ("users", "gauge", "Registered users connected to this hub.", "users", ""),
    ("commands_in_total", "counter", "Commands received.", "commands_in", ""),
    (
        "messages_in_total",
        "counter",
        "Room, action and private messages accepted.",
        "messages_in",
        "",
    ),
    ("messages_out_total", "counter", "Events delivered (one per recipient).", "events_out", ""),
    ("bytes_out_total", "counter", "Event bytes delivered (all recipients).", "bytes_out", ""),
    ("errors_total", "counter", "Error events sent, by code.", "errors", "code"),
    ("drops_total", "counter", "Clients dropped by the runtime, by reason.", "drops", "reason"),
    ("kicks_total", "counter", "Operator kicks applied on this hub.", "kicks", ""),
    ("bans_total", "counter", "Operator bans issued on this hub.", "bans", ""),
    ("backplane_in_total", "counter", "Envelopes received from other nodes.", "remote_in", ""),
    ("backplane_out_total", "counter", "Envelopes published to other nodes.", "remote_out", ""),
    ("backplane_bad_total", "counter", "Envelopes that failed to parse.", "remote_bad", ""),
    (
        "backplane_ghosts_total",
        "counter",
        "Users removed from rooms because their hub stopped without saying so.",
        "ghosts",
        "",
    ),
    ("backplane_up", "gauge", "1 while the backplane is reachable, else 0.", "backplane_up", ""),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(counters: ChatCounters) -> str:
    """The counters as a Prometheus text page (HELP and TYPE for every family)."""
    lines: list[str] = []
    for name, kind, help_text, attr, label in FAMILIES:
        full = PREFIX + name
        lines.append(f"# HELP {full} {help_text}")
        lines.append(f"# TYPE {full} {kind}")
        value = getattr(counters, attr)
        if isinstance(value, dict):
            lines.extend(f'{full}{{{label}="{_escape(k)}"}} {value[k]}' for k in sorted(value))
        else:
            lines.append(f"{full} {value}")
    return "\n".join(lines) + "\n"
