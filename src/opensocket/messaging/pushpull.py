"""Push/pull pipelines, sans I/O: round-robin out, fair-queued in, credit, acks, redelivery.

A puller grants credit (CREDIT frames): it starts with ``prefetch`` and grants one more per
message its application takes (or, with acknowledgements on, acknowledges). The pusher keeps
one shared queue under the high-water mark and hands each message to the next connected
puller in turn that has credit and room, skipping the others.

With acknowledgements on, every message carries a delivery id and stays in the pusher's
in-flight table until the puller sends DONE for it. When a puller goes away (``peer_down``;
with sessions on, that means its session was lost), its in-flight messages go back to the
head of the queue, flagged REDELIVERED, for the next puller: nothing is lost, and a message
may be processed twice (at least once). A DONE for an id not in flight is counted and
ignored, so no delivery is acknowledged twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError, MalformedEnvelope
from ._base import PatternCore
from .envelope import (
    BARE_META,
    Envelope,
    Kind,
    MetaFlags,
    WireFrame,
    decode,
    decode_credit,
    encode_credit,
)
from .events import DeliveryAcked, Event, MessageRedelivered
from .hwm import BoundedQueue, FairQueue, HighWaterMark, Outcome, Policy

__all__ = ["PullOptions", "Puller", "PushOptions", "Pusher"]

_ACK_REQUESTED = int(MetaFlags.ACK_REQUESTED)
_REDELIVERED = int(MetaFlags.REDELIVERED)
MAX_CREDIT = 2**32 - 1


@dataclass(frozen=True, slots=True)
class PushOptions:
    """The shared queue's mark and whether deliveries must be acknowledged."""

    hwm: HighWaterMark = field(default_factory=HighWaterMark)
    acks: bool = False


@dataclass(frozen=True, slots=True)
class PullOptions:
    """Inbox mark per pusher, acknowledgements, and the credit each pusher starts with."""

    hwm: HighWaterMark = field(default_factory=HighWaterMark)
    acks: bool = False
    prefetch: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.prefetch <= MAX_CREDIT:
            raise ConfigError(f"prefetch must be 1 .. 2**32-1, not {self.prefetch}")


@dataclass(slots=True)
class _Flight:
    peer: int
    env: Envelope
    handed: bool = False


class Pusher(PatternCore):
    """The pushing side (see the module docstring)."""

    name = "push"

    def __init__(self, options: PushOptions | None = None) -> None:
        self.options = opts = options or PushOptions()
        super().__init__(HighWaterMark(messages=MAX_CREDIT))  # credit bounds per-peer queues
        self.queue: BoundedQueue[Envelope] = BoundedQueue(opts.hwm)
        self.credit: dict[int, int] = {}
        self.inflight: dict[int, _Flight] = {}
        self.acked = 0
        self.redelivered = 0
        self.stale_acks = 0
        self._order: deque[int] = deque()
        self._next_id = 1

    def send(self, payload: bytes, now: float) -> Outcome:
        """Offer one message (the policy applies when the shared queue is full)."""
        self.check_size(payload)
        if self.options.acks:
            env = Envelope(Kind.MESSAGE, bytes(payload), self._next_id, flags=_ACK_REQUESTED)
            self._next_id += 1
        else:
            env = Envelope(Kind.MESSAGE, bytes(payload))
        if not self.queue:  # the common case: straight to the next puller, no queueing
            peer = self._pick()
            if peer is not None:
                self._assign(peer, env)
                return Outcome.QUEUED
        outcome = self.queue.push(env, env.size)
        if outcome is Outcome.DROPPED_NEWEST or outcome is Outcome.DROPPED_OLDEST:
            self.stats.drop(outcome.value.replace("dropped", "drop"))  # the queue reports it
        self._dispatch()
        return outcome

    def send_many(self, payloads: Sequence[bytes], now: float) -> int:
        """Offer messages in order, as ``send`` would one by one; return how many were
        taken before a full queue said WOULD_BLOCK (offer the rest again later)."""
        if not payloads:
            return 0
        self.check_size(max(payloads, key=len))
        sent = 0
        if not self.options.acks:
            if not self.queue:
                sent = self._hand_out(payloads)
            sent += self._enqueue(payloads[sent:] if sent else payloads)
        for payload in payloads[sent:] if sent else payloads:
            if self.send(payload, now) is Outcome.WOULD_BLOCK:
                break
            sent += 1
        return sent

    def _enqueue(self, payloads: Sequence[bytes]) -> int:
        """The batch path into the shared queue, while it has room for all of them (BLOCK
        with a message mark only: the other policies decide message by message)."""
        hwm = self.queue.hwm
        if not payloads or hwm.policy is not Policy.BLOCK or hwm.bytes is not None:
            return 0
        count = min(len(payloads), hwm.messages - len(self.queue))
        if count <= 0:
            return 0
        message = Kind.MESSAGE
        new = tuple.__new__
        envs = [
            new(Envelope, (message, bytes(p), None, None, 0, None, None)) for p in payloads[:count]
        ]
        if not self.queue.extend(envs, [len(env[1]) for env in envs]):
            return 0
        self._dispatch()
        return count

    def _hand_out(self, payloads: Sequence[bytes]) -> int:
        """The batch path: straight to pullers with credit, round-robin as ``send`` does."""
        order, credit, peers = self._order, self.credit, self.peers
        message = Kind.MESSAGE
        if len(order) == 1:
            peer = order[0]
            count = min(credit[peer], len(payloads)) if peers[peer].writable else 0
            if count:
                credit[peer] -= count
                new = tuple.__new__
                envs = [
                    new(Envelope, (message, bytes(p), None, None, 0, None, None))
                    for p in payloads[:count]
                ]
                self._queue_many(peer, envs, [len(env[1]) for env in envs])
            return count
        batches: dict[int, list[Envelope]] = {}
        sent = 0
        for payload in payloads:
            picked = self._pick()
            if picked is None:
                break
            credit[picked] -= 1
            batches.setdefault(picked, []).append(Envelope(message, bytes(payload)))
            sent += 1
        for peer, envs in batches.items():
            self._queue_many(peer, envs)
        return sent

    def _dispatch(self) -> None:
        queue = self.queue
        order = self._order
        if queue and len(order) == 1 and not self.options.acks:
            only = order[0]  # one puller: hand it what its credit allows in one go
            count = min(self.credit[only], len(queue)) if self.peers[only].writable else 0
            if count > 0:
                self.credit[only] -= count
                envs = queue.take(count)
                self._queue_many(only, envs, [len(env[1]) for env in envs])  # no topics here
            return
        while queue:
            peer = self._pick()
            if peer is None:
                return
            self._assign(peer, queue.pop())

    def _assign(self, peer: int, env: Envelope) -> None:
        self.credit[peer] -= 1
        if env.id is not None:
            self.inflight[env.id] = _Flight(peer, env)
        self._queue(peer, env)

    def _pick(self) -> int | None:
        order = self._order
        for _ in range(len(order)):
            order.rotate(-1)
            peer = order[-1]
            if self.credit[peer] > 0 and self.peers[peer].writable:
                return peer
        return None

    def peer_up(self, peer: int, now: float) -> None:
        """A puller connected; it gets messages once it grants credit."""
        super().peer_up(peer, now)
        self.credit[peer] = 0
        self._order.append(peer)

    def set_writable(self, peer: int, writable: bool) -> None:
        """A puller's transport is (not) taking more: skip it while it is full."""
        super().set_writable(peer, writable)
        if writable:
            self._dispatch()

    def peer_down(self, peer: int, now: float) -> list[Envelope]:
        """A puller is gone: what it held goes back to the head of the queue."""
        queued = super().peer_down(peer, now)
        self.credit.pop(peer, None)
        if peer in self._order:
            self._order.remove(peer)
        back = [env for env in queued if env.id is None]  # acks off: order as queued
        for rid, flight in sorted(self.inflight.items()):
            if flight.peer == peer:
                del self.inflight[rid]
                back.append(self._redeliver(flight) if flight.handed else flight.env)
        back.sort(key=lambda env: env.id or 0)
        for env in reversed(back):
            self.queue.push_front(env, env.size)
        self._dispatch()
        return queued

    def _redeliver(self, flight: _Flight) -> Envelope:
        env = flight.env
        assert env.id is not None
        self.redelivered += 1
        self.stats.add("redeliveries", flight.peer)
        self._events.append(MessageRedelivered(flight.peer, env.id))
        return Envelope(env.kind, env.payload, env.id, flags=env.flags | _REDELIVERED)

    def frames_to_send(self, limit: int | None = None) -> list[tuple[int, Envelope]]:
        """Messages to write; in-flight ones are marked as handed to that puller."""
        frames = super().frames_to_send(limit)
        for peer, env in frames:
            flight = self.inflight.get(env.id) if env.id is not None else None
            if flight is not None and flight.peer == peer:
                flight.handed = True
        return frames

    def events(self) -> list[Event]:
        """Events, including the shared queue's drop reports."""
        return [*super().events(), *self.queue.events()]

    def _on_credit(self, peer: int, env: Envelope, now: float) -> None:
        self.credit[peer] = min(MAX_CREDIT, self.credit[peer] + decode_credit(env))
        self._dispatch()

    def _on_done(self, peer: int, env: Envelope, now: float) -> None:
        assert env.id is not None
        flight = self.inflight.get(env.id)
        if flight is None or flight.peer != peer:
            self.stale_acks += 1
            self._discard("stale-ack", peer, way="in")
            return
        del self.inflight[env.id]
        self.acked += 1
        self._events.append(DeliveryAcked(peer, env.id))


class Puller(PatternCore):
    """The pulling side: fair-queues what pushers send, grants credit, acknowledges."""

    name = "pull"

    def __init__(self, options: PullOptions | None = None) -> None:
        self.options = opts = options or PullOptions()
        super().__init__()
        self.inbox: FairQueue[int, Envelope] = FairQueue(opts.hwm, receiving=True)
        self._owed: dict[int, int] = {}
        self._unacked: dict[int, set[int]] = {}

    def peer_up(self, peer: int, now: float) -> None:
        """A pusher connected: grant it the initial credit."""
        super().peer_up(peer, now)
        self._owed[peer] = 0
        self._unacked[peer] = set()
        self._grant(peer, self.options.prefetch)

    def peer_down(self, peer: int, now: float) -> list[Envelope]:
        """A pusher is gone; messages it sent stay in the inbox (acks for them are moot)."""
        self._owed.pop(peer, None)
        self._unacked.pop(peer, None)
        return super().peer_down(peer, now)

    def _grant(self, peer: int, credit: int) -> None:
        payload = encode_credit(credit)
        self._control.append((peer, Envelope(Kind.CREDIT, payload)))

    def _on_message(self, peer: int, env: Envelope, now: float) -> None:
        if self.options.acks and env.id is None:
            raise MalformedEnvelope(
                "a MESSAGE without a delivery id arrived on a pull socket with acks"
            )
        outcome = self.inbox.push(peer, env, env.size)
        if outcome is Outcome.DROPPED_NEWEST or outcome is Outcome.DROPPED_OLDEST:
            self._inbox_drop(peer, outcome)
            self._owe(peer)  # a dropped message frees its credit too

    def receive_many(self, peer: int, frames: Iterable[WireFrame], now: float) -> None:
        """Frames from one pusher; runs of bare MESSAGE frames go to the inbox at once."""
        if self.options.acks:
            super().receive_many(peer, frames, now)
            return
        run: list[bytes] = []
        message = Kind.MESSAGE
        for frame in frames:
            if frame[0] == message and frame[1] == BARE_META:
                run.append(frame[2])
                continue
            if run:
                self._arrived(peer, run, now)
                run = []
            self.receive(peer, decode(*frame), now)
        if run:
            self._arrived(peer, run, now)

    def _arrived(self, peer: int, payloads: list[bytes], now: float) -> None:
        if peer not in self.peers:
            raise ValueError(f"peer {peer} is not up")
        sizes = list(map(len, payloads))
        self.stats.messages_in(peer, len(sizes), sum(sizes))
        message = Kind.MESSAGE
        new = tuple.__new__  # a bare MESSAGE: faster than the named tuple's own __new__
        envs = [new(Envelope, (message, p, None, None, 0, None, None)) for p in payloads]
        if not self.inbox.extend(peer, envs, sizes):
            for env in envs:  # over the mark: the policy applies to each
                self._on_message(peer, env, now)

    def take(self, limit: int | None = None) -> list[tuple[int, Envelope]]:
        """Messages in fair-queue order; without acks taking one returns its credit."""
        taken = self.inbox.take(limit)
        if not self.options.acks:
            counts: dict[int, int] = {}
            for peer, _ in taken:
                counts[peer] = counts.get(peer, 0) + 1
            for peer, count in counts.items():
                self._owe(peer, count)
            return taken
        for peer, env in taken:
            if env.id is not None and peer in self._unacked:
                self._unacked[peer].add(env.id)
        return taken

    def ack(self, peer: int, delivery_id: int) -> bool:
        """Acknowledge a delivery; False when its pusher is gone (it will redeliver)."""
        unacked = self._unacked.get(peer)
        if unacked is None:
            return False
        if delivery_id not in unacked:
            raise ValueError(f"delivery {delivery_id} from peer {peer} is not awaiting an ack")
        unacked.discard(delivery_id)
        self._control.append((peer, Envelope(Kind.DONE, id=delivery_id)))
        self._owe(peer)
        return True

    def _owe(self, peer: int, count: int = 1) -> None:
        if peer not in self._owed:
            return
        self._owed[peer] += count
        if self._owed[peer] >= max(1, self.options.prefetch // 2):
            self._grant(peer, self._owed[peer])
            self._owed[peer] = 0

    @property
    def paused(self) -> set[int]:
        """Pushers whose inbox is full under BLOCK (or RAISE): the runtime stops reading from
        them for now (under the drop policies it keeps reading; the inbox drops and counts)."""
        return self.inbox.paused()

    def events(self) -> list[Event]:
        """Events, including the inbox's drop reports."""
        return [*super().events(), *self.inbox.events()]
