"""Resumable sessions, sans I/O: sequence numbers, cumulative acks, replay and resume.

How it works: every frame a pattern sends through a session gets the next sequence number
(1, 2, ...) and stays in a replay buffer until the peer's cumulative ack covers it. The
buffer is the resume window, bounded in messages, bytes and age; what falls out of it
unacknowledged can no longer be replayed. Acks ride on outgoing frames (``ack`` field) or,
when there is nothing to send, go out as ACK frames after ``ack_every`` frames or
``ack_delay`` seconds.

On every new link the connecting side sends SESSION (its id, or zeros for a new session,
with last_received / last_sent / first_held); the accepting side answers SESSION_OK with a
status and its own numbers, then both replay what the other lacks. Resuming needs both
directions to be inside the window (``peer.last_received + 1 >= our first_held``); if one is
not, or the session is unknown or expired, both sides report SessionLost with the counts and
start a fresh session. Received frames at or below ``last_received`` are replays the peer
could not know we had: they are dropped, so the pattern above sees each frame once, in order.

States::

    DETACHED --link_up--> OPENING --SESSION / SESSION_OK--> ATTACHED --link_down--> DETACHED
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from ..errors import ConfigError, MalformedEnvelope, UnexpectedFrame
from .envelope import (
    Envelope,
    Kind,
    SessionHello,
    SessionStatus,
    WireFrame,
    decode,
    decode_hello,
    encode,
    encode_hello,
)
from .events import Acked, Event, SessionLost, SessionResumed, SessionStarted

__all__ = ["ResumeWindow", "Session", "SessionOptions", "SessionState", "SessionStore"]

ZERO_ID: Final = bytes(16)
_ACK_ONLY: Final = Envelope(Kind.ACK)


def random_id() -> bytes:
    """A fresh 16-byte session id."""
    return os.urandom(16)


@dataclass(frozen=True, slots=True)
class ResumeWindow:
    """How much unacknowledged output a session keeps for replay, and for how long."""

    max_messages: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_age: float = 60.0

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_bytes < 1:
            raise ConfigError("a resume window needs max_messages >= 1 and max_bytes >= 1")
        if not self.max_age > 0:
            raise ConfigError(f"resume window max_age must be > 0 seconds, not {self.max_age}")


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Window and ack pacing of a session."""

    window: ResumeWindow = field(default_factory=ResumeWindow)
    ack_every: int = 64
    ack_delay: float = 0.02

    def __post_init__(self) -> None:
        if self.ack_every < 1:
            raise ConfigError(f"ack_every must be >= 1, not {self.ack_every}")
        if not 0 <= self.ack_delay < self.window.max_age:
            raise ConfigError("ack_delay must be >= 0 and shorter than the window's max_age")


class SessionState(Enum):
    """Where a session is (see the module docstring)."""

    DETACHED = "detached"
    OPENING = "opening"
    ATTACHED = "attached"


_Held = tuple[int, Envelope, float]  # (seq, frame, when it was sent): a tuple is cheap


class Session:
    """One end of a resumable session (see the module docstring)."""

    def __init__(
        self,
        *,
        connecting: bool,
        options: SessionOptions | None = None,
        new_id: Callable[[], bytes] = random_id,
    ) -> None:
        self.connecting = connecting
        self.options = options or SessionOptions()
        self._new_id = new_id
        self.state = SessionState.DETACHED
        self.duplicates = 0  # replayed frames dropped because we had them already
        self.evicted = 0  # unacknowledged frames pushed out of the window
        self._out: list[WireFrame] = []
        self._events: list[Event] = []
        self._received: list[Envelope] = []
        self._down_since: float | None = None
        self._reset(ZERO_ID)

    def _reset(self, session_id: bytes) -> None:
        self.id = session_id
        self.last_sent = self.last_received = self.acked = 0
        self._ack_sent = 0
        self._ack_due: float | None = None
        self._unacked_in = 0
        self._held: deque[_Held] = deque()
        self.held_bytes = 0

    @property
    def first_held(self) -> int:
        """The oldest seq still replayable (``last_sent + 1`` when the buffer is empty)."""
        return self._held[0][0] if self._held else self.last_sent + 1

    @property
    def held(self) -> int:
        """Frames in the replay buffer."""
        return len(self._held)

    # ---- link ------------------------------------------------------------------------

    def link_up(self, now: float) -> None:
        """A new link is up; the connecting side sends SESSION at once."""
        self.state = SessionState.OPENING
        self._out.clear()
        if self.connecting:
            self._out.append(encode_hello(self._hello(None)))

    def link_down(self, now: float) -> None:
        """The link is gone: unsent output is dropped (it stays in the replay buffer)."""
        self.state = SessionState.DETACHED
        self._out.clear()
        self._ack_due = None
        self._down_since = now

    def _hello(self, status: SessionStatus | None) -> SessionHello:
        self._acked_now()  # the hello tells the peer our last_received: that is an ack
        return SessionHello(self.id, self.last_received, self.last_sent, self.first_held, status)

    # ---- output ----------------------------------------------------------------------

    def send(self, env: Envelope, now: float) -> int:
        """Number ``env``, keep it for replay and queue it if attached; return its seq."""
        seq = self.last_sent = self.last_sent + 1
        self._held.append((seq, env, now))
        self.held_bytes += env.size
        if self.state is SessionState.ATTACHED:
            self._out.append(self._encode(env, seq))
        self._trim()
        return seq

    def _encode(self, env: Envelope, seq: int) -> WireFrame:
        ack = None
        if self.last_received > self._ack_sent:
            ack = self._acked_now()
        return encode(env, seq, ack)

    def ack_now(self) -> None:
        """Acknowledge at once what arrived since the last ACK (before closing, so that the
        peer does not count delivered messages as undelivered)."""
        if self.last_received > self._ack_sent:
            self._out.append(encode(_ACK_ONLY, None, self._acked_now()))

    def _acked_now(self) -> int:
        self._ack_sent = self.last_received
        self._ack_due = None
        self._unacked_in = 0
        return self.last_received

    def _trim(self) -> None:
        window = self.options.window
        held = self._held
        while held and (len(held) > window.max_messages or self.held_bytes > window.max_bytes):
            self._evict()

    def _evict(self) -> None:
        entry = self._held.popleft()
        self.held_bytes -= entry[1].size
        self.evicted += 1

    def frames_to_send(self) -> list[WireFrame]:
        """Remove and return the frames to write, in order."""
        out = self._out
        self._out = []
        return out

    @property
    def has_events(self) -> bool:
        """Whether ``events()`` would return anything."""
        return bool(self._events)

    def events(self) -> list[Event]:
        """Remove and return the session events produced so far."""
        events = self._events
        self._events = []
        return events

    def take_messages(self) -> list[Envelope]:
        """Remove and return the frames received in order, each exactly once."""
        received = self._received
        self._received = []
        return received

    # ---- input -----------------------------------------------------------------------

    def receive(self, frame_type: int, meta: bytes, payload: bytes, now: float) -> None:
        """Process one pattern frame from the link; raises a ProtocolError on bad input."""
        env = decode(frame_type, meta, payload)
        kind = env.kind
        if kind is Kind.SESSION_OK and self.connecting and self.state is SessionState.OPENING:
            self._on_hello_ok(decode_hello(env), now)
        elif kind in (Kind.SESSION, Kind.SESSION_OK):
            raise UnexpectedFrame(f"unexpected {kind.name} in session state {self.state.value}")
        elif self.state is not SessionState.ATTACHED:
            raise UnexpectedFrame(f"{kind.name} arrived before the session was established")
        else:
            self._on_frame(env, now)

    def _on_frame(self, env: Envelope, now: float) -> None:
        if env.ack is not None:
            self._on_ack(env.ack)
        if env.kind is Kind.ACK:
            return
        seq = env.seq
        if seq is None:
            raise MalformedEnvelope(f"{env.kind.name} has no sequence number inside a session")
        if seq <= self.last_received:
            self.duplicates += 1
            return
        if seq != self.last_received + 1:
            raise MalformedEnvelope(f"sequence gap: got {seq}, expected {self.last_received + 1}")
        self.last_received = seq
        self._received.append(env)
        self._unacked_in += 1
        if self._unacked_in >= self.options.ack_every:
            self._out.append(encode(_ACK_ONLY, None, self._acked_now()))
        elif self._ack_due is None:
            self._ack_due = now + self.options.ack_delay

    def _on_ack(self, ack: int) -> None:
        if ack > self.last_sent:
            raise MalformedEnvelope(f"the peer acknowledged seq {ack}; we sent {self.last_sent}")
        if ack <= self.acked:
            return
        count = 0
        held = self._held
        while held and held[0][0] <= ack:
            self.held_bytes -= held.popleft()[1].size
            count += 1
        self.acked = ack
        self._events.append(Acked(ack, count))

    # ---- handshake -------------------------------------------------------------------

    def accept(self, hello: SessionHello, now: float, *, known: bool) -> None:
        """Accepting side: answer a SESSION (``known``: the store had this id)."""
        after = 0
        if hello.session_id == ZERO_ID or not known:
            status = SessionStatus.NEW if hello.session_id == ZERO_ID else SessionStatus.UNKNOWN
            self._start_fresh(self._new_id())
            self._out.append(encode_hello(self._hello(status)))
        else:
            self._check_claims(hello)
            if self._resumable(hello):
                self._out.append(encode_hello(self._hello(SessionStatus.RESUMED)))
                self._resume(hello)
                after = hello.last_received
            else:
                old = self._hello(None)
                self._lose(hello, "the resume window was exceeded")
                self._start_fresh(self._new_id())
                numbers = (old.last_received, old.last_sent, old.first_held)
                self._out.append(encode_hello(SessionHello(self.id, *numbers, SessionStatus.LOST)))
        self.state = SessionState.ATTACHED
        self._replay(after)

    def _on_hello_ok(self, hello: SessionHello, now: float) -> None:
        status = hello.status
        if status is SessionStatus.RESUMED:
            if hello.session_id != self.id:
                raise MalformedEnvelope("SESSION_OK resumed a session id we did not ask for")
            self._check_claims(hello)
            if not self._resumable(hello):
                raise MalformedEnvelope("SESSION_OK resumed a session outside our window")
            self._resume(hello)
            self.state = SessionState.ATTACHED
            self._replay(hello.last_received)
            return
        if status is SessionStatus.LOST:
            self._lose(hello, "the resume window was exceeded")
        elif status is SessionStatus.UNKNOWN:
            self._forget("the peer no longer knows the session (expired or restarted)")
        elif self.id != ZERO_ID:
            raise MalformedEnvelope("SESSION_OK started a new session we did not ask for")
        self._adopt(hello.session_id, now)

    def _adopt(self, session_id: bytes, now: float) -> None:
        """Connecting side: take the id; messages queued before it go out as seq 1, 2, ..."""
        self._renumber()
        self.id = session_id
        self.state = SessionState.ATTACHED
        self._events.append(SessionStarted(session_id))
        self._replay(0)

    def _renumber(self) -> None:
        """Before a fresh session starts, frames that fell out of the window are lost: say so,
        and number the rest from 1 (the peer expects no gap)."""
        gone = self.first_held - 1
        if not gone:
            return
        self._events.append(SessionLost(self.id, "evicted before the session started", gone, 0))
        self._held = deque((n, env, at) for n, (_, env, at) in enumerate(self._held, 1))
        self.last_sent = len(self._held)

    def _check_claims(self, peer: SessionHello) -> None:
        if peer.last_received > self.last_sent:
            raise MalformedEnvelope(
                f"the peer claims seq {peer.last_received}; we only sent {self.last_sent}"
            )
        if peer.last_sent < self.last_received:
            raise MalformedEnvelope(
                f"the peer says it sent {peer.last_sent}; we received {self.last_received}"
            )

    def _resumable(self, peer: SessionHello) -> bool:
        return (
            peer.last_received + 1 >= self.first_held and self.last_received + 1 >= peer.first_held
        )

    def _resume(self, peer: SessionHello) -> None:
        self._on_ack(peer.last_received)
        self._events.append(SessionResumed(self.id, self.last_sent - peer.last_received))

    def _lose(self, peer: SessionHello, reason: str) -> None:
        lost_out = self.last_sent - peer.last_received
        lost_in = peer.last_sent - self.last_received
        self._events.append(SessionLost(self.id, reason, lost_out, lost_in))
        self._reset(ZERO_ID)

    def _forget(self, reason: str) -> None:
        self._events.append(SessionLost(self.id, reason, self.last_sent - self.acked, 0))
        self._reset(ZERO_ID)

    def _start_fresh(self, session_id: bytes) -> None:
        self._reset(session_id)
        self._events.append(SessionStarted(session_id))

    def _replay(self, after: int) -> None:
        for entry in self._held:
            if entry[0] > after:
                self._out.append(self._encode(entry[1], entry[0]))

    # ---- timers ----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next run: ack delay, window age, or session expiry."""
        times = []
        if self._ack_due is not None:
            times.append(self._ack_due)
        max_age = self.options.window.max_age
        if self._held:
            times.append(self._held[0][2] + max_age)
        if self._expires():
            assert self._down_since is not None
            times.append(self._down_since + max_age)
        return min(times) if times else None

    def _expires(self) -> bool:
        return self.state is SessionState.DETACHED and self.id != ZERO_ID

    def handle_timer(self, now: float) -> None:
        """Send a due ACK, age out the window, expire a session detached for too long."""
        if self._ack_due is not None and now >= self._ack_due:
            self._out.append(encode(_ACK_ONLY, None, self._acked_now()))
        max_age = self.options.window.max_age
        held = self._held
        while held and held[0][2] + max_age <= now:
            self._evict()
        down = self._down_since
        if self._expires() and down is not None and now >= down + max_age:
            self._forget(f"not resumed within {max_age:g}s")


class SessionStore:
    """The accepting side's sessions by id, so a reconnecting peer finds its own again."""

    def __init__(
        self, options: SessionOptions | None = None, new_id: Callable[[], bytes] = random_id
    ) -> None:
        self.options = options or SessionOptions()
        self._new_id = new_id
        self.sessions: dict[bytes, Session] = {}

    def open(self, frame_type: int, meta: bytes, payload: bytes, now: float) -> Session:
        """Handle the first frame of a new link (must be SESSION); return its session.

        A session still attached to an older link is taken over: the runtime must close
        that older link.
        """
        env = decode(frame_type, meta, payload)
        if env.kind is not Kind.SESSION:
            raise UnexpectedFrame(
                f"the first frame on a session link must be SESSION, not {env.kind.name}"
            )
        hello = decode_hello(env)
        session = self.sessions.pop(hello.session_id, None)
        known = session is not None
        if session is None:
            session = Session(connecting=False, options=self.options, new_id=self._new_id)
        elif session.state is not SessionState.DETACHED:
            session.link_down(now)
        session.link_up(now)
        session.accept(hello, now, known=known)
        self.sessions[session.id] = session
        return session

    def get_timer(self) -> float | None:
        """The earliest timer of any session."""
        times = [t for s in self.sessions.values() if (t := s.get_timer()) is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Session]:
        """Run due timers; return the sessions that expired (their events say what was lost)."""
        expired = []
        for key, session in list(self.sessions.items()):
            timer = session.get_timer()
            if timer is not None and now >= timer:
                session.handle_timer(now)
                if session.id == ZERO_ID:
                    del self.sessions[key]
                    expired.append(session)
        return expired
