"""The glue a runtime needs between its links and a pattern core, with or without sessions.

Links are the runtime's transports (one FramedConnection each), numbered by the runtime.
Peers are the pattern core's view: with sessions on, one peer per session, which outlives
its links; without, one peer per link.

With sessions the bridge turns session events into pattern calls: SessionStarted is a new
peer (``peer_up``; after a SessionLost, ``peer_down`` first), SessionResumed changes nothing
for the pattern (the link drop is hidden), SessionLost is ``peer_down``. While a session has
no link its peer is marked unwritable, so the pattern's high-water marks apply instead of the
replay buffer filling up.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from ._base import DATA_KINDS, PatternCore
from .envelope import BARE_METAS, SEMANTIC, WireFrame, encode
from .events import Event, SessionLost, SessionResumed, SessionStarted
from .session import ZERO_ID, Session, SessionOptions, SessionState, SessionStore, random_id

__all__ = ["Bridge"]


class Bridge:
    """Joins one pattern core to the runtime's links (see the module docstring)."""

    def __init__(
        self,
        core: PatternCore,
        *,
        sessions: SessionOptions | None = None,
        new_id: Callable[[], bytes] = random_id,
    ) -> None:
        self.core = core
        self.options = sessions
        self._new_id = new_id
        self.store = SessionStore(sessions, new_id) if sessions is not None else None
        self.sessions: dict[int, Session] = {}  # peer -> session
        self._peer_of: dict[int, int] = {}  # link -> peer
        self._link_of: dict[int, int] = {}  # peer -> link
        self._by_session: dict[int, int] = {}  # id(session) -> peer
        self._accepting: set[int] = set()  # links waiting for their SESSION frame
        self._events: list[tuple[int, Event]] = []
        self._peer_ids = itertools.count(1)
        self.takeovers: list[int] = []  # older links of a resumed session: the runtime closes them

    # ---- links -----------------------------------------------------------------------

    def connected(self, link: int, now: float, *, peer: int | None = None) -> int:
        """The runtime's outgoing link is up; ``peer`` reuses the peer (and session) of an
        earlier link to the same endpoint. Returns the peer id."""
        if peer is None:
            peer = next(self._peer_ids)
        else:
            self.core.stats.add("reconnects", peer)
        self._bind(link, peer)
        if self.options is None:
            self.core.peer_up(peer, now)
            return peer
        session = self.sessions.get(peer)
        if session is None:
            session = Session(connecting=True, options=self.options, new_id=self._new_id)
            self.sessions[peer] = session
            self._by_session[id(session)] = peer
        session.link_up(now)
        self._drain(peer, session, now)
        return peer

    def accepted(self, link: int, now: float) -> None:
        """The runtime accepted an incoming link."""
        if self.options is None:
            peer = next(self._peer_ids)
            self._bind(link, peer)
            self.core.peer_up(peer, now)
        else:
            self._accepting.add(link)

    def peer_of(self, link: int) -> int | None:
        """The peer ``link`` carries; None while an accepted link awaits its SESSION frame,
        or once the link is gone."""
        return self._peer_of.get(link)

    def link_of(self, peer: int) -> int | None:
        """The link that carries ``peer`` now; None while it has none (a session between
        links, or a peer that is gone)."""
        return self._link_of.get(peer)

    def unwritten(self, link: int, frames: Iterable[WireFrame]) -> int:
        """The runtime could not queue ``frames`` on ``link`` (it is going down). A session
        replays them; without one their messages are lost: counted as dropped
        ("link-closing", reported as MessageDropped), so sent = received + drops holds.
        Returns how many were counted."""
        peer = self._peer_of.get(link)
        if peer is not None and peer in self.sessions:
            return 0
        lost = sum(1 for frame in frames if frame[0] in DATA_KINDS)
        if lost:
            self.core._discard("link-closing", peer, lost)
        return lost

    def _bind(self, link: int, peer: int) -> None:
        self._peer_of[link] = peer
        self._link_of[peer] = link

    def disconnected(self, link: int, now: float) -> int | None:
        """A link is gone; returns its peer (to reconnect it with ``connected(peer=...)``)."""
        self._accepting.discard(link)
        peer = self._peer_of.pop(link, None)
        if peer is None:
            return None
        if self._link_of.get(peer) == link:
            del self._link_of[peer]
        session = self.sessions.get(peer)
        if session is None:
            if peer in self.core.peers:
                self.core.peer_down(peer, now)
            return peer
        if self._link_of.get(peer) is None:
            session.link_down(now)
            self.core.set_writable(peer, False)
        return peer

    # ---- input -----------------------------------------------------------------------

    def receive(self, link: int, frame: WireFrame, now: float) -> None:
        """One pattern frame from a link; raises a ProtocolError (close that link) if bad."""
        self.receive_many(link, (frame,), now)

    def receive_many(self, link: int, frames: Iterable[WireFrame], now: float) -> None:
        """Pattern frames from one link, in order (what one read produced)."""
        frames = iter(frames)
        if link in self._accepting:
            first = next(frames, None)
            if first is None:
                return
            self._open(link, first, now)
        peer = self._peer_of[link]
        session = self.sessions.get(peer)
        if session is None:
            self.core.receive_many(peer, frames, now)
            return
        feed = session.receive
        try:
            for frame in frames:
                feed(*frame, now)
        finally:  # what arrived before a bad frame still reaches the pattern
            self._drain(peer, session, now)

    def _open(self, link: int, frame: WireFrame, now: float) -> None:
        assert self.store is not None
        session = self.store.open(*frame, now)
        self._accepting.discard(link)
        peer = self._by_session.get(id(session))
        if peer is None:
            peer = next(self._peer_ids)
            self.sessions[peer] = session
            self._by_session[id(session)] = peer
        old = self._link_of.get(peer)
        if old is not None and old != link:
            self.takeovers.append(old)
            del self._peer_of[old]
        self._bind(link, peer)
        self._drain(peer, session, now)

    def _drain(self, peer: int, session: Session, now: float) -> None:
        core = self.core
        for event in session.events() if session.has_events else ():
            self._events.append((peer, event))
            if isinstance(event, SessionResumed):
                core.stats.add("resumes", peer)
            elif isinstance(event, SessionLost):
                core.stats.add("sessions_lost", peer)
            if isinstance(event, SessionLost | SessionStarted) and peer in core.peers:
                core.peer_down(peer, now)
            if isinstance(event, SessionStarted):
                core.peer_up(peer, now)
        if peer in core.peers:
            core.set_writable(peer, session.state is SessionState.ATTACHED)
        for env in session.take_messages():
            core.receive(peer, env, now)

    # ---- output ----------------------------------------------------------------------

    def frames_to_send(self, now: float) -> list[tuple[int, WireFrame]]:
        """Everything to write, as (link, frame) pairs, in order per link."""
        return [
            (link, frame) for link, frames in self.frames_by_link(now).items() for frame in frames
        ]

    def frames_by_link(self, now: float) -> dict[int, list[WireFrame]]:
        """Everything to write, grouped by link, in order per link.

        An envelope queued for several peers (a published message) is encoded once: the
        links share the same frame object, so a runtime can also frame its bytes once.
        """
        out: dict[int, list[WireFrame]] = {}
        sessions = self.sessions
        link_of = self._link_of
        # Only a core with several peers can queue one envelope more than once.
        memo: dict[int, WireFrame] | None = {} if len(self.core.peers) > 1 else None
        bare = BARE_METAS
        last_peer: int | None = None
        session: Session | None = None
        frames: list[WireFrame] | None = None
        for peer, env in self.core.frames_to_send():
            if peer != last_peer:  # the core hands out one peer's frames after another's
                last_peer = peer
                session = sessions.get(peer) if sessions else None
                link = link_of.get(peer)
                frames = None if link is None else out.setdefault(link, [])
            if session is not None:
                session.send(env, now)
            elif frames is not None:
                kind, payload, ident, topic, flags, seq, ack = env
                if ident is None and topic is None and seq is None and ack is None:
                    frames.append((kind, bare[flags & SEMANTIC], payload))  # encode(), inlined
                elif memo is None:
                    frames.append(encode(env))
                else:
                    frames.append(memo.get(id(env)) or memo.setdefault(id(env), encode(env)))
        for peer, session in sessions.items():
            link = link_of.get(peer)
            frames = session.frames_to_send()
            if link is not None and frames:
                out.setdefault(link, []).extend(frames)
        return out

    def unsettled(self) -> int:
        """Messages not yet acknowledged end to end: queued in the pattern core, or held for
        replay by a session (linger waits for 0, then reports what is left as undelivered)."""
        queued = sum(len(state.queue) for state in self.core.peers.values())
        return queued + sum(session.held for session in self.sessions.values())

    def events(self) -> list[tuple[int | None, Event]]:
        """Session events by peer, then the pattern's events (peer None)."""
        found: list[tuple[int | None, Event]] = list(self._events)
        self._events = []
        found.extend((None, event) for event in self.core.events())
        return found

    # ---- timers ----------------------------------------------------------------------

    def peer_frame_limit(self, limit: int) -> None:
        """A link's peer accepts frames up to ``limit`` bytes. With sessions, what is sent must
        fit every peer's limit (a session would replay a refused message after every
        reconnection); without, a link that cannot take a message drops it (counted) and the
        others still get it."""
        if self.options and self.core.max_size is not None:
            self.core.max_size = min(self.core.max_size, limit)

    def ack_now(self, now: float) -> None:
        """Every session acknowledges what it received, without waiting for ``ack_delay``."""
        for peer, session in self.sessions.items():
            session.ack_now()
            self._drain(peer, session, now)

    def get_timer(self) -> float | None:
        """The earliest timer of the pattern and the sessions."""
        if not self.sessions:
            return self.core.get_timer()
        times = [self.core.get_timer(), *(s.get_timer() for s in self.sessions.values())]
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def handle_timer(self, now: float) -> None:
        """Fire due timers; accepting-side sessions that expired are forgotten (their loss
        was reported as SessionLost and the pattern saw ``peer_down``)."""
        self.core.handle_timer(now)
        for peer, session in list(self.sessions.items()):
            timer = session.get_timer()
            if timer is None or timer > now:
                continue
            session.handle_timer(now)
            self._drain(peer, session, now)
            if not session.connecting and session.id == ZERO_ID:
                self._forget(peer, session)

    def _forget(self, peer: int, session: Session) -> None:
        del self.sessions[peer]
        self._by_session.pop(id(session), None)
        if self.store is not None:
            self.store.sessions = {k: s for k, s in self.store.sessions.items() if s is not session}
