"""In-memory links for the messaging cores: sessions over a cuttable link, patterns over a
small network. Everything moves through the real wire encoding (encode -> decode)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from opensocket.messaging._base import PatternCore
from opensocket.messaging.envelope import Envelope, Kind, WireFrame, decode, encode
from opensocket.messaging.events import Event
from opensocket.messaging.session import Session, SessionOptions, SessionStore


def counter_ids() -> Callable[[], bytes]:
    """Deterministic session ids: 1, 2, 3, ... as 16 bytes."""
    numbers = itertools.count(1)
    return lambda: next(numbers).to_bytes(16, "big")


def wire(env: Envelope) -> Envelope:
    """Send an envelope through its wire form."""
    return decode(*encode(env))


@dataclass
class Side:
    """What one end of a session link saw."""

    received: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


class SessionLink:
    """A connecting Session and an accepting SessionStore joined by a link that can be cut.

    ``pump(budget)`` moves frames both ways until nothing moves, or until ``budget`` frames
    were delivered (then the link may be cut with frames still in flight: they are lost).
    """

    def __init__(self, options: SessionOptions | None = None) -> None:
        ids = counter_ids()
        self.options = options or SessionOptions()
        self.client = Session(connecting=True, options=self.options, new_id=ids)
        self.store = SessionStore(self.options, new_id=ids)
        self.server: Session | None = None
        self.now = 0.0
        self.up = False
        self.fresh = False  # the next client frame opens the session on a new link
        self.c2s: list[WireFrame] = []
        self.s2c: list[WireFrame] = []
        self.at_client = Side()
        self.at_server = Side()
        self.delivered = 0

    def connect(self) -> None:
        self.up = self.fresh = True
        self.client.link_up(self.now)

    def cut(self) -> None:
        self.up = False
        self.c2s.clear()
        self.s2c.clear()
        self.client.link_down(self.now)
        if self.server is not None:
            self.server.link_down(self.now)
        self.collect()

    def send_client(self, payload: bytes) -> None:
        self.client.send(Envelope(Kind.MESSAGE, payload), self.now)

    def send_server(self, payload: bytes) -> None:
        assert self.server is not None
        self.server.send(Envelope(Kind.MESSAGE, payload), self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for session in (self.client, self.server):
            if session is not None:
                timer = session.get_timer()
                if timer is not None and timer <= self.now:
                    session.handle_timer(self.now)
        self.collect()

    def collect(self) -> None:
        for session, side in ((self.client, self.at_client), (self.server, self.at_server)):
            if session is None:
                continue
            side.received.extend(env.payload for env in session.take_messages())
            side.events.extend(session.events())

    def _gather(self) -> None:
        if not self.up:
            return
        self.c2s.extend(self.client.frames_to_send())
        if self.server is not None and not self.fresh:
            self.s2c.extend(self.server.frames_to_send())

    def pump(self, budget: int | None = None) -> bool:
        """Move frames; return False if the budget ran out first."""
        self._gather()
        while self.up and (self.c2s or self.s2c):
            if budget is not None and budget <= 0:
                return False
            if self.c2s:
                self._to_server(self.c2s.pop(0))
            else:
                self.client.receive(*self.s2c.pop(0), self.now)
            self.delivered += 1
            if budget is not None:
                budget -= 1
            self.collect()
            self._gather()
        return True

    def _to_server(self, frame: WireFrame) -> None:
        if self.fresh:
            self.fresh = False
            self.server = self.store.open(*frame, self.now)
        else:
            assert self.server is not None
            self.server.receive(*frame, self.now)


class Net:
    """Pattern cores joined by links; ``pump`` delivers every queued frame through the wire
    format until nothing moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.links: dict[tuple[int, int], tuple[PatternCore, int]] = {}
        self.cores: dict[int, PatternCore] = {}
        self.writable_override: dict[tuple[int, int], bool] = {}
        self._ids = itertools.count(1)

    def add(self, core: PatternCore) -> PatternCore:
        self.cores[id(core)] = core
        return core

    def join(self, a: PatternCore, b: PatternCore) -> tuple[int, int]:
        """Connect a and b; return (a's peer id for b, b's peer id for a)."""
        pa, pb = next(self._ids), next(self._ids)
        self.add(a)
        self.add(b)
        self.links[(id(a), pa)] = (b, pb)
        self.links[(id(b), pb)] = (a, pa)
        a.peer_up(pa, self.now)
        b.peer_up(pb, self.now)
        return pa, pb

    def drop(self, a: PatternCore, pa: int) -> None:
        """Cut the link a--b: both sides see peer_down, frames in flight are lost."""
        b, pb = self.links.pop((id(a), pa))
        del self.links[(id(b), pb)]
        a.peer_down(pa, self.now)
        b.peer_down(pb, self.now)

    def pump(self, rounds: int = 100) -> None:
        for _ in range(rounds):
            moved = False
            for core in list(self.cores.values()):
                for peer, env in core.frames_to_send():
                    target = self.links.get((id(core), peer))
                    if target is None:
                        continue
                    other, other_peer = target
                    other.receive(other_peer, wire(env), self.now)
                    moved = True
            if not moved:
                return
        raise AssertionError("the network did not settle")
