"""What every pattern core shares: peers, per-peer send queues, output and events.

Peers are small integers the runtime chooses (one per link, or per session when sessions are
on). The runtime calls ``peer_up``/``peer_down``, feeds ``receive(peer, envelope, now)``,
says when a peer's transport cannot take more (``set_writable``) and collects
``frames_to_send()``: control frames first (they bypass the high-water marks: they are small
and the protocol depends on them), then data from each writable peer's queue.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import FrameTooLarge, UnexpectedFrame
from .envelope import Envelope, Kind, WireFrame, decode
from .events import Event, MessageDropped
from .hwm import BoundedQueue, HighWaterMark, Outcome
from .monitor import StatsRecorder

__all__ = ["PatternCore", "PeerState"]

_DROPS = {Outcome.DROPPED_NEWEST: "drop-newest", Outcome.DROPPED_OLDEST: "drop-oldest"}
DATA_KINDS = frozenset({Kind.MESSAGE, Kind.REQUEST, Kind.REPLY, Kind.PUBLISH})
# The most metadata an envelope adds to a payload: version, flags, seq, ack, id, topic length.
ENVELOPE_OVERHEAD = 2 + 3 * 8 + 2


@dataclass(slots=True)
class PeerState:
    """One connected peer."""

    queue: BoundedQueue[Envelope]
    writable: bool = True
    extra: dict[str, int] = field(default_factory=dict)


class PatternCore:
    """Base of the pattern cores (see the module docstring)."""

    name = "pattern"

    def __init__(self, hwm: HighWaterMark | None = None) -> None:
        self.hwm = hwm or HighWaterMark()
        self.peers: dict[int, PeerState] = {}
        self.stats = StatsRecorder()
        self._control: list[tuple[int, Envelope]] = []
        self._events: list[Event] = []
        # The largest frame body the peers accept (the runtime sets it from the handshake):
        # a message over it is refused at send time, before a session could hold it for a
        # replay that would fail again after every reconnection.
        self.max_size: int | None = None
        self._handlers = {
            kind: handler
            for kind in Kind
            if (handler := getattr(self, f"_on_{kind.name.lower()}", None)) is not None
        }

    # ---- peers -------------------------------------------------------------------------

    def peer_up(self, peer: int, now: float) -> None:
        """A peer is connected (a fresh link, or a fresh session)."""
        if peer in self.peers:
            raise ValueError(f"peer {peer} is already up")
        self.peers[peer] = PeerState(BoundedQueue(self.hwm, peer=peer))

    def peer_down(self, peer: int, now: float) -> list[Envelope]:
        """A peer is gone; return what was still queued for it (subclasses account for it)."""
        state = self.peers.pop(peer, None)
        if state is None:
            return []
        self._control = [(p, env) for p, env in self._control if p != peer]
        self._events.extend(state.queue.events())
        return state.queue.clear()

    def set_writable(self, peer: int, writable: bool) -> None:
        """The runtime's transport to ``peer`` can (or cannot) take more right now."""
        state = self.peers.get(peer)
        if state is not None:
            state.writable = writable

    def check_size(self, payload: bytes, topic: bytes = b"") -> None:
        """Raise FrameTooLarge if ``payload`` (with ``topic``) cannot fit in one frame."""
        limit = self.max_size
        if limit is None:
            return
        size = len(payload) + len(topic) + ENVELOPE_OVERHEAD
        if size > limit:
            raise FrameTooLarge(
                f"a {self.name} message of {len(payload)} bytes"
                + (f" on a topic of {len(topic)} bytes" if topic else "")
                + f" does not fit the peers' maximum frame size of {limit} bytes "
                f"({ENVELOPE_OVERHEAD} bytes go to the envelope): split it, or raise "
                "ProtocolOptions.max_frame_size on both sides"
            )

    # ---- input -------------------------------------------------------------------------

    def receive(self, peer: int, env: Envelope, now: float) -> None:
        """Handle one envelope from ``peer``."""
        if peer not in self.peers:
            raise ValueError(f"peer {peer} is not up")
        handler = self._handlers.get(env.kind)
        if handler is None:
            raise UnexpectedFrame(f"a {self.name} socket does not accept {env.kind.name} frames")
        if env.kind in DATA_KINDS:  # control frames are not counted as messages
            self.stats.message_in(peer, env.size)
        handler(peer, env, now)

    def receive_many(self, peer: int, frames: Iterable[WireFrame], now: float) -> None:
        """Handle wire frames from ``peer`` in order (decoded here; patterns with a cheaper
        batch path override this)."""
        receive = self.receive
        for frame in frames:
            receive(peer, decode(*frame), now)

    # ---- output ------------------------------------------------------------------------

    def _queue(self, peer: int, env: Envelope) -> Outcome:
        """Offer ``env`` to ``peer``'s send queue (raises QueueFull under RAISE)."""
        state = self.peers[peer]
        outcome = state.queue.push(env, env.size)
        reason = _DROPS.get(outcome)
        if reason is not None:
            self.stats.drop(reason, peer)
        return outcome

    def _queue_many(self, peer: int, envs: list[Envelope], sizes: list[int] | None = None) -> None:
        """Queue ``envs`` for ``peer`` at once when they all fit, else one by one."""
        if sizes is None:
            sizes = [env.size for env in envs]
        if not self.peers[peer].queue.extend(envs, sizes):
            for env in envs:
                self._queue(peer, env)

    def _discard(self, reason: str, peer: int | None, count: int = 1, way: str = "out") -> None:
        """Messages this pattern gives up on: counted, and reported for the runtime to log."""
        self.stats.drop(reason, peer, count)
        self._events.append(MessageDropped(peer, way, reason, count))

    def _inbox_drop(self, peer: int, outcome: Outcome) -> None:
        """Count a receive-queue drop (the queue itself reports the event)."""
        reason = _DROPS.get(outcome)
        if reason is not None:
            self.stats.drop(reason, peer)

    def frames_to_send(self, limit: int | None = None) -> list[tuple[int, Envelope]]:
        """Control frames, then up to ``limit`` data frames per writable peer."""
        out = self._control
        self._control = []
        for peer, state in self.peers.items():
            if state.writable and state.queue:
                queue = state.queue
                size = queue.bytes
                envs = queue.take(limit)
                if limit is not None and queue:
                    size -= queue.bytes
                self.stats.messages_out(peer, len(envs), size)
                out += [(peer, env) for env in envs]
        return out

    def events(self) -> list[Event]:
        """Remove and return the events produced so far (drops included)."""
        events = self._events
        self._events = []
        for state in self.peers.values():
            events.extend(state.queue.events())
        return events

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next run (None: no timer)."""
        return None

    def handle_timer(self, now: float) -> None:
        """Fire due timers."""
