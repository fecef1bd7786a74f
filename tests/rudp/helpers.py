"""Shared helpers of the reliable-UDP core tests."""

from __future__ import annotations

from opensocket.rudp import MessageReceived, RudpOptions, State

from .sim import Sim


def open_sim(**kw: object) -> Sim:
    """A Sim whose handshake has completed (and whose first RTT sample is in)."""
    sim = Sim(**kw)  # type: ignore[arg-type]
    sim.run(lambda: sim.client.state is State.OPEN and sim.conn is not None, limit=30)
    sim.run_for(0.2)
    return sim


def received(events: list[object], channel: int | None = None) -> list[bytes]:
    """Payloads of the MessageReceived events (on one channel, or all)."""
    return [
        e.data
        for e in events
        if isinstance(e, MessageReceived) and (channel is None or e.channel == channel)
    ]


QUIET = RudpOptions(keepalive_interval=None, idle_timeout=600.0)
