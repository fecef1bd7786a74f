"""Request/reply, sans I/O: correlation ids, many outstanding requests, deadlines, retries.

The requester numbers each request (the correlation id) and sends it to the next connected
replier in turn (``balance="round-robin"``), or to the one with the fewest outstanding
requests, ties in turn (``balance="least-loaded"``: a slow replier gets less); any number may
be outstanding. A request ends exactly once, with a
``ReplyReceived`` or a ``RequestFailed`` event:

- its deadline passes (``get_timer``/``handle_timer``): RequestFailed(RequestTimeout);
- its replier goes away (``peer_down``; with sessions on, that means the session was lost):
  a retryable request is sent again to another replier, now or when one connects (at least
  once: the lost replier may have acted on it); any other fails at once
  with RequestAborted, so nothing ever hangs;
- a request never handed to the transport is simply sent elsewhere: that is not a retry.

A reply for a request that already ended (late, after a timeout) is counted and dropped.
The replier reports ``RequestReceived`` and sends what ``reply()`` gives it.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, get_args

from ..errors import ConfigError, FrameTooLarge, QueueFull, RequestAborted, RequestTimeout
from ._base import ENVELOPE_OVERHEAD, PatternCore
from .envelope import Envelope, Kind, MetaFlags
from .events import ReplyReceived, RequestFailed, RequestReceived
from .hwm import HighWaterMark, Outcome, Policy

__all__ = ["Balance", "Replier", "Requester", "RequesterOptions"]

Balance = Literal["round-robin", "least-loaded"]

_RETRYABLE = int(MetaFlags.RETRYABLE)
_ERROR = int(MetaFlags.ERROR)  # a plain int: IntFlag arithmetic is slow on every reply


@dataclass(frozen=True, slots=True)
class RequesterOptions:
    """Default deadline (None: none), per-peer send queue mark, and how repliers are chosen."""

    timeout: float | None = None
    hwm: HighWaterMark = field(default_factory=HighWaterMark)
    balance: Balance = "round-robin"

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"a request timeout must be > 0 seconds or None, not {self.timeout}")
        if self.balance not in get_args(Balance):
            raise ConfigError(
                f"unknown balance {self.balance!r}: use 'round-robin' or 'least-loaded'"
            )


@dataclass(slots=True)
class _Pending:
    id: int
    payload: bytes
    retryable: bool
    deadline: float | None
    timeout: float | None
    peer: int | None = None
    handed: bool = False


class Requester(PatternCore):
    """The requesting side (see the module docstring)."""

    name = "request"

    def __init__(self, options: RequesterOptions | None = None) -> None:
        self.options = opts = options or RequesterOptions()
        super().__init__(opts.hwm)
        self.pending: dict[int, _Pending] = {}
        self.load: dict[int, int] = {}  # peer -> its requests queued or sent, not yet ended
        self.late_replies = 0
        self.cancelled = 0
        self._cancelled: dict[int, int] = {}  # id -> peer: handed over, a reply may still come
        self.retries = 0
        self._unsent: deque[int] = deque()
        self._order: deque[int] = deque()
        self._deadlines: list[tuple[float, int]] = []
        self._next_id = 1

    def request(
        self,
        payload: bytes,
        now: float,
        *,
        timeout: float | None = None,
        retryable: bool = False,
    ) -> int:
        """Queue a request; return its id. Raises QueueFull when full under RAISE."""
        self.check_size(payload)
        timeout = self.options.timeout if timeout is None else timeout
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"a request timeout must be > 0 seconds, not {timeout}")
        rid = self._next_id
        self._next_id += 1
        deadline = None if timeout is None else now + timeout
        pending = _Pending(rid, bytes(payload), retryable, deadline, timeout)
        self.pending[rid] = pending
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, rid))
        try:
            self._dispatch(pending)
        except QueueFull:
            del self.pending[rid]
            raise
        return rid

    @property
    def ready(self) -> bool:
        """Whether a new request would be queued for a peer right now (BLOCK policy)."""
        if self._unsent:
            return False
        peers = self.peers
        return any(not peers[p].queue.full for p in self._order)

    def _dispatch(self, pending: _Pending) -> None:
        peer = self._pick()
        if peer is None:
            self._unsent.append(pending.id)
            return
        flags = _RETRYABLE if pending.retryable else 0
        env = Envelope(Kind.REQUEST, pending.payload, pending.id, None, flags)
        pending.peer = peer
        pending.handed = False
        self.load[peer] += 1
        outcome = self._queue(peer, env)
        if outcome is Outcome.WOULD_BLOCK:
            self._release(pending)
            self._unsent.append(pending.id)
        elif outcome is Outcome.DROPPED_NEWEST:
            self._fail(pending.id, QueueFull(f"request {pending.id} dropped: send queue full"))
        elif outcome is Outcome.DROPPED_OLDEST:
            for old in self.peers[peer].queue.last_dropped:
                assert old.id is not None
                self._fail(old.id, QueueFull(f"request {old.id} dropped: send queue full"))

    def _release(self, pending: _Pending) -> None:
        """``pending`` no longer counts against its peer's load."""
        peer = pending.peer
        if peer is not None:
            pending.peer = None
            if peer in self.load:
                self.load[peer] -= 1

    def _pick(self) -> int | None:
        """The next peer in turn, preferring one with room in its queue."""
        if self.options.balance == "least-loaded":
            return self._pick_least_loaded()
        order = self._order
        for _ in range(len(order)):
            order.rotate(-1)
            if not self.peers[order[-1]].queue.full:
                return order[-1]
        if order and self.hwm.policy is not Policy.BLOCK:
            return order[-1]  # every queue is full: the policy decides
        return None

    def _pick_least_loaded(self) -> int | None:
        """The peer with the fewest outstanding requests, preferring one with room in its
        queue; ties go in turn (the scan starts after the last one picked)."""
        order, peers, load = self._order, self.peers, self.load
        best, best_at = None, -1
        for at, peer in enumerate(order):
            if not peers[peer].queue.full and (best is None or load[peer] < load[best]):
                best, best_at = peer, at
        if best is None:
            if not order or self.hwm.policy is Policy.BLOCK:
                return None
            best_at, best = min(enumerate(order), key=lambda item: load[item[1]])
        order.rotate(-(best_at + 1))  # the picked peer goes last: ties start after it
        return best

    def _fail(self, rid: int, error: QueueFull | RequestAborted | RequestTimeout) -> None:
        pending = self.pending.pop(rid, None)
        if pending is not None:
            self._release(pending)
            self._events.append(RequestFailed(rid, error))

    def peer_up(self, peer: int, now: float) -> None:
        """A replier connected: send what was waiting for one."""
        super().peer_up(peer, now)
        self._order.append(peer)
        self.load[peer] = 0
        self._flush_unsent()

    def _flush_unsent(self) -> None:
        waiting = self._unsent
        self._unsent = deque()
        while waiting:
            if not any(not self.peers[p].queue.full for p in self._order):
                self._unsent.extend(waiting)  # no room anywhere: keep the rest, in order
                return
            pending = self.pending.get(waiting.popleft())
            if pending is not None:  # else it timed out while waiting
                self._dispatch(pending)

    def peer_down(self, peer: int, now: float) -> list[Envelope]:
        """A replier is gone: retry or fail what it held (see the module docstring)."""
        queued = super().peer_down(peer, now)
        if peer in self._order:
            self._order.remove(peer)
        self.load.pop(peer, None)  # what it held is moved or failed below
        if self._cancelled:  # their replies can no longer come
            self._cancelled = {r: p for r, p in self._cancelled.items() if p != peer}
        for env in queued:  # never handed to the transport: not a retry
            assert env.id is not None
            if env.id in self.pending:
                self.pending[env.id].peer = None
                self._unsent.append(env.id)
        for pending in [p for p in self.pending.values() if p.peer == peer]:
            pending.peer = None
            if pending.retryable:
                self.retries += 1
                self.stats.add("redeliveries")
                self._unsent.append(pending.id)
            else:
                error = RequestAborted(
                    f"request {pending.id} got no reply: the connection to the replier was "
                    "lost and the request is not retryable (pass retryable=True to resend it)"
                )
                self._fail(pending.id, error)
        self._flush_unsent()
        return queued

    def frames_to_send(self, limit: int | None = None) -> list[tuple[int, Envelope]]:
        """Requests to write; ones that ended while queued are left out."""
        frames = super().frames_to_send(limit)
        if self._unsent:
            self._flush_unsent()  # the queues just drained: requests waiting for room go in
            frames += super().frames_to_send(limit)
        out = []
        for peer, env in frames:
            pending = self.pending.get(env.id) if env.id is not None else None
            if pending is not None and pending.peer == peer:
                pending.handed = True
                out.append((peer, env))
        return out

    def cancel(self, rid: int) -> bool:
        """Give up on request ``rid``: not sent if still queued; a reply that comes later is
        dropped and counted (reason "cancelled"). False if it had already ended."""
        pending = self.pending.pop(rid, None)
        if pending is None:
            return False
        self.cancelled += 1
        if pending.handed and pending.peer is not None:
            self._cancelled[rid] = pending.peer
        self._release(pending)
        return True  # still queued: frames_to_send leaves it out

    def _on_reply(self, peer: int, env: Envelope, now: float) -> None:
        assert env.id is not None
        pending = self.pending.pop(env.id, None)
        if pending is None and self._cancelled.pop(env.id, None) is not None:
            self._discard("cancelled", peer, way="in")
            return
        if pending is None:
            self.late_replies += 1
            self._discard("late-reply", peer, way="in")
            return
        self._release(pending)
        error = bool(env.flags & _ERROR)
        self._events.append(ReplyReceived(env.id, env.payload, error))

    def abort(self, reason: str) -> list[int]:
        """Fail every pending request at once (socket closed, reconnection given up); return
        their ids."""
        ids = list(self.pending)
        for rid in ids:
            self._fail(rid, RequestAborted(f"request {rid} got no reply: {reason}"))
        self._unsent.clear()
        return ids

    def get_timer(self) -> float | None:
        """The earliest deadline of a request still pending."""
        heap = self._deadlines
        while heap and self._stale(*heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _stale(self, deadline: float, rid: int) -> bool:
        pending = self.pending.get(rid)
        return pending is None or pending.deadline != deadline

    def handle_timer(self, now: float) -> None:
        """Fail every request whose deadline has passed."""
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, rid = heapq.heappop(heap)
            if not self._stale(deadline, rid):
                timeout = self.pending[rid].timeout
                self.stats.add("timeouts")
                self._fail(rid, RequestTimeout(f"no reply to request {rid} within {timeout:g}s"))


class Replier(PatternCore):
    """The replying side: requests in as events, replies out through ``reply``.

    At most ``max_outstanding`` requests of one peer await a reply at a time: later ones
    wait in a backlog (not reported yet) and the peer is in ``paused``, which the runtime
    stops reading until replies bring it below the cap. A flooding requester so costs a
    bounded amount of work and at most one read of memory.
    """

    name = "reply"

    def __init__(self, hwm: HighWaterMark | None = None, *, max_outstanding: int = 4096) -> None:
        super().__init__(hwm)
        if max_outstanding < 1:
            raise ConfigError(f"max_outstanding must be at least 1, not {max_outstanding}")
        self.max_outstanding = max_outstanding
        self.open: dict[int, set[int]] = {}  # peer -> request ids awaiting our reply
        self.backlog: dict[int, deque[Envelope]] = {}  # peer -> requests past the cap
        self.paused: set[int] = set()  # peers at the cap: the runtime does not read them

    def peer_up(self, peer: int, now: float) -> None:
        """A requester connected."""
        super().peer_up(peer, now)
        self.open[peer] = set()

    def peer_down(self, peer: int, now: float) -> list[Envelope]:
        """A requester is gone: its open requests can no longer be answered."""
        queued = super().peer_down(peer, now)
        self.paused.discard(peer)
        gone = len(self.open.pop(peer, ())) + len(self.backlog.pop(peer, ())) + len(queued)
        if gone:
            self._discard("peer-gone", peer, gone)
        return queued

    @property
    def outstanding(self) -> int:
        """Requests received and not answered yet (those in the backlog included)."""
        return sum(map(len, self.open.values())) + sum(map(len, self.backlog.values()))

    def _on_request(self, peer: int, env: Envelope, now: float) -> None:
        assert env.id is not None
        ids = self.open[peer]
        if len(ids) >= self.max_outstanding:
            self.backlog.setdefault(peer, deque()).append(env)
            self.paused.add(peer)
            return
        ids.add(env.id)
        if len(ids) >= self.max_outstanding:
            self.paused.add(peer)
        self._events.append(RequestReceived(peer, env.id, env.payload))

    def _answered(self, peer: int, ids: set[int]) -> None:
        """One of ``peer``'s requests was answered: hand out the next one waiting."""
        backlog = self.backlog.get(peer)
        if backlog:
            env = backlog.popleft()
            assert env.id is not None
            ids.add(env.id)
            self._events.append(RequestReceived(peer, env.id, env.payload))
            if backlog:
                return
            del self.backlog[peer]
        if len(ids) < self.max_outstanding:
            self.paused.discard(peer)

    def reply(
        self, peer: int, rid: int, payload: bytes, now: float, *, error: bool = False
    ) -> Outcome | None:
        """Queue the reply to request ``rid`` of ``peer``; None if that peer is gone."""
        ids = self.open.get(peer)
        if ids is None:
            self._discard("peer-gone", peer)
            return None
        if rid not in ids:
            raise ValueError(f"request {rid} of peer {peer} is not awaiting a reply")
        self.check_size(payload)
        flags = _ERROR if error else 0
        outcome = self._queue(peer, Envelope(Kind.REPLY, bytes(payload), rid, None, flags))
        if outcome is not Outcome.WOULD_BLOCK:
            ids.discard(rid)
            self._answered(peer, ids)
        return outcome

    def answer(
        self, peer: int, rid: int, payload: bytes, now: float, *, error: bool = False
    ) -> Outcome | None:
        """``reply`` as a runtime sends it: an error text is cut to fit, and a reply over the
        size limit becomes an error reply saying so (the requester must hear either way)."""
        if error:
            payload = self.fit_error(payload)
        try:
            return self.reply(peer, rid, payload, now, error=error)
        except FrameTooLarge as exc:
            if error:
                raise
            return self.reply(peer, rid, self.fit_error(str(exc).encode()), now, error=True)

    def fit_error(self, text: bytes) -> bytes:
        """An error reply's text cut to what surely fits in one frame (a requester must
        always hear that its request failed, or it waits for its deadline)."""
        room = min(1024, (self.max_size or 1024) - ENVELOPE_OVERHEAD)
        return text[: max(room, 0)]
