"""The fault engine, sans-IO: what to forward, when, for each direction of a proxied link.

A ``FaultSet`` holds the faults in force (shared by every connection of a proxy, changed at
run time) and the seeded RNG. Each connection has one pipe per direction: ``StreamPipe`` for
TCP and Unix streams, ``DatagramPipe`` for UDP. A runtime feeds a pipe what the source sent
(``receive(data, now)``), then takes what may be forwarded now (``poll(now)``) and wakes it
again at ``next_time()``. Pipes never touch sockets or clocks: time is a parameter, so every
decision (delay schedule, pacing, cut points, corruption offsets, drops, duplicates, swaps)
is tested exactly with an explicit clock and a seeded RNG.

Stream offsets (for ``reset``/``close`` after N bytes and ``corrupt``) count the bytes the
source sent in that direction since the connection started. A cut is a position in the
stream: every byte before it is delivered (with its delay), then the connection is reset or
closed; bytes past it are discarded. A fault's probability is drawn once per connection and
direction for streams, once per datagram for UDP.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final, Literal

from ..errors import ConfigError

__all__ = [
    "DIRECTIONS",
    "KINDS",
    "DatagramPipe",
    "Direction",
    "Fault",
    "FaultSet",
    "ProxyStats",
    "StreamPipe",
    "make_fault",
]

Direction = Literal["up", "down"]
DIRECTIONS: Final[tuple[Direction, Direction]] = ("up", "down")
KINDS: Final = (
    "latency",
    "bandwidth",
    "reset",
    "close",
    "stall",
    "corrupt",
    "loss",
    "duplicate",
    "reorder",
)
RATE_KINDS: Final = frozenset({"loss", "duplicate", "reorder"})
CUT_KINDS: Final = frozenset({"reset", "close"})
BURST_SECONDS: Final = 0.02  # a bandwidth limit lets this much traffic through at once
MIN_BURST: Final = 512
DEFAULT_HOLD: Final = 0.1  # a reordered datagram waits at most this long for the next one


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: its kind, the directions it applies to, its probability and parameters.

    ``delay``/``jitter`` (latency, seconds), ``rate`` (bytes/s for bandwidth, a fraction for
    loss/duplicate/reorder), ``nbytes``/``seconds`` (reset, close), ``offset``/``xor``
    (corrupt), ``hold`` (reorder: longest wait for a later datagram).
    """

    kind: str
    directions: tuple[Direction, ...] = DIRECTIONS
    probability: float = 1.0
    delay: float = 0.0
    jitter: float = 0.0
    rate: float = 0.0
    nbytes: int | None = None
    seconds: float | None = None
    offset: int = 0
    xor: int = 0xFF
    hold: float = DEFAULT_HOLD

    def to_json(self) -> dict[str, Any]:
        """The fault as a JSON object with only the fields its kind uses."""
        out: dict[str, Any] = {"kind": self.kind, "direction": direction_name(self.directions)}
        out["probability"] = self.probability
        for key in _FIELDS[self.kind]:
            out[key] = getattr(self, key)
        return out


_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "latency": ("delay", "jitter"),
    "bandwidth": ("rate",),
    "reset": ("nbytes", "seconds"),
    "close": ("nbytes", "seconds"),
    "stall": (),
    "corrupt": ("offset", "xor"),
    "loss": ("rate",),
    "duplicate": ("rate",),
    "reorder": ("rate", "hold"),
}


def direction_name(directions: tuple[Direction, ...]) -> str:
    """``up``, ``down`` or ``both``."""
    return directions[0] if len(directions) == 1 else "both"


def parse_direction(value: str) -> tuple[Direction, ...]:
    """``up``/``down``/``both`` to a tuple of directions; ConfigError otherwise."""
    if value == "both":
        return DIRECTIONS
    if value == "up":
        return ("up",)
    if value == "down":
        return ("down",)
    raise ConfigError(
        f"direction must be up (client to upstream), down (upstream to client) or both, "
        f"not {value!r}"
    )


def _number(params: Mapping[str, Any], key: str, default: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"fault parameter {key!r} must be a finite number (got {value!r})")
    if value < 0:
        raise ConfigError(f"fault parameter {key!r} must be 0 or more (got {value!r})")
    return float(value)


def _fraction(params: Mapping[str, Any], key: str, default: float) -> float:
    value = _number(params, key, default)
    if value > 1:
        raise ConfigError(f"fault parameter {key!r} is a fraction from 0 to 1 (got {value:g})")
    return value


def _count(params: Mapping[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"fault parameter {key!r} must be a whole number of bytes, 0 or more")
    return value


def make_fault(kind: str, **params: Any) -> Fault:
    """Build and validate a fault from keyword (or JSON) parameters; ConfigError if invalid.

    ``direction`` is ``up``, ``down`` or ``both`` (the default).
    """
    if kind not in _FIELDS:
        raise ConfigError(f"unknown fault kind {kind!r} (known: {', '.join(KINDS)})")
    unknown = set(params) - {"direction", "probability", *_FIELDS[kind]}
    if unknown:
        allowed = ", ".join(("direction", "probability", *_FIELDS[kind]))
        raise ConfigError(
            f"{kind} takes no parameter {', '.join(sorted(unknown))} (it takes: {allowed})"
        )
    fault = Fault(
        kind,
        directions=parse_direction(str(params.get("direction", "both"))),
        probability=_fraction(params, "probability", 1.0),
    )
    return _with_params(fault, params)


def _with_params(fault: Fault, params: Mapping[str, Any]) -> Fault:
    kind = fault.kind
    if kind == "latency":
        return replace(
            fault, delay=_number(params, "delay", 0.0), jitter=_number(params, "jitter", 0.0)
        )
    if kind == "bandwidth":
        rate = _number(params, "rate", 0.0)
        if rate <= 0:
            raise ConfigError("a bandwidth limit needs a rate above 0 bytes per second")
        return replace(fault, rate=rate)
    if kind in CUT_KINDS:
        nbytes, seconds = _count(params, "nbytes"), params.get("seconds")
        if nbytes is None and seconds is None:
            raise ConfigError(f"{kind} needs nbytes (after N bytes) or seconds (after T seconds)")
        secs = None if seconds is None else _number(params, "seconds", 0.0)
        return replace(fault, nbytes=nbytes, seconds=secs)
    if kind == "corrupt":
        offset, xor = _count(params, "offset") or 0, _count(params, "xor")
        xor = 0xFF if xor is None else xor
        if not 1 <= xor <= 0xFF:
            raise ConfigError(f"corrupt's xor mask must be 1 to 255 (got {xor})")
        return replace(fault, offset=offset, xor=xor)
    if kind in RATE_KINDS:
        fault = replace(fault, rate=_fraction(params, "rate", 0.0))
        if kind == "reorder":
            fault = replace(fault, hold=_number(params, "hold", DEFAULT_HOLD))
        return fault
    return fault


def fault_from_json(obj: Mapping[str, Any]) -> Fault:
    """A fault from its JSON form (``Fault.to_json``); ConfigError when malformed."""
    params = dict(obj)
    kind = params.pop("kind", None)
    if not isinstance(kind, str):
        raise ConfigError(f"a fault needs a 'kind' (one of: {', '.join(KINDS)})")
    return make_fault(kind, **{k: v for k, v in params.items() if v is not None})


@dataclass(slots=True)
class DirectionStats:
    """Traffic counters of one direction."""

    bytes_in: int = 0
    bytes_out: int = 0
    datagrams_in: int = 0
    datagrams_out: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    discarded_bytes: int = 0


@dataclass(slots=True)
class ProxyStats:
    """Counters for the whole proxy: connections and each direction's traffic."""

    connections: int = 0
    active: int = 0
    resets: int = 0
    closes: int = 0
    upstream_failures: int = 0
    up: DirectionStats = field(default_factory=DirectionStats)
    down: DirectionStats = field(default_factory=DirectionStats)

    def direction(self, direction: Direction) -> DirectionStats:
        """The counters of ``direction``."""
        return self.up if direction == "up" else self.down

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)


class FaultSet:
    """The faults in force, by id, and the seeded RNG every decision draws from."""

    def __init__(self, seed: int | None = None, *, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random(seed)
        self.stats = ProxyStats()
        self._faults: dict[int, tuple[Fault, float]] = {}
        self._next_id = 1

    def add(self, fault: Fault, now: float) -> int:
        """Put ``fault`` in force from ``now``; return its id."""
        fault_id = self._next_id
        self._next_id += 1
        self._faults[fault_id] = (fault, now)
        return fault_id

    def clear(self, fault_id: int | None = None) -> list[int]:
        """Remove one fault (or all of them); return the ids removed."""
        if fault_id is None:
            removed = list(self._faults)
            self._faults.clear()
            return removed
        return [fault_id] if self._faults.pop(fault_id, None) is not None else []

    @property
    def empty(self) -> bool:
        """True when no fault is in force (pipes then take their fast path)."""
        return not self._faults

    def items(self) -> list[tuple[int, Fault]]:
        """Every fault in force with its id, oldest first."""
        return [(fid, fault) for fid, (fault, _) in self._faults.items()]

    def active(self, direction: Direction, kind: str) -> Iterable[tuple[int, Fault, float]]:
        """Faults of ``kind`` in force for ``direction``: id, fault, time added."""
        for fid, (fault, added) in self._faults.items():
            if fault.kind == kind and direction in fault.directions:
                yield fid, fault, added

    def draw(self, chance: float) -> bool:
        """True with probability ``chance`` (no draw for 0 or 1: the RNG sequence stays short)."""
        if chance >= 1.0:
            return True
        if chance <= 0.0:
            return False
        return self.rng.random() < chance

    def jitter(self, fault: Fault) -> float:
        """One delay sample: ``delay`` plus a uniform jitter in [-jitter, +jitter], never < 0."""
        if not fault.jitter:
            return fault.delay
        return max(0.0, fault.delay + self.rng.uniform(-fault.jitter, fault.jitter))


class _Bucket:
    """A token bucket for one bandwidth limit (bytes; burst of BURST_SECONDS of traffic)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(float(MIN_BURST), rate * BURST_SECONDS)
        self.tokens = self.burst
        self.stamp = now

    def refill(self, now: float) -> float:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def when(self, need: float) -> float:
        """When the bucket will hold ``need`` tokens (at most a full bucket)."""
        missing = min(need, self.burst) - self.tokens
        return self.stamp + max(0.0, missing) / self.rate


class _Pipe:
    """What both pipe kinds share: per-connection fault decisions, stall and bandwidth."""

    def __init__(self, faults: FaultSet, direction: Direction, now: float) -> None:
        self.faults = faults
        self.direction: Direction = direction
        self.stats = faults.stats.direction(direction)
        self.started = now
        self._decided: dict[int, bool] = {}
        self._buckets: dict[int, _Bucket] = {}

    def applies(self, fault_id: int, fault: Fault) -> bool:
        """Whether ``fault`` applies to this pipe: drawn once, then remembered."""
        decided = self._decided.get(fault_id)
        if decided is None:
            decided = self._decided[fault_id] = self.faults.draw(fault.probability)
        return decided

    def _active(self, kind: str) -> list[tuple[int, Fault, float]]:
        return [
            item for item in self.faults.active(self.direction, kind) if self.applies(*item[:2])
        ]

    def stalled(self) -> bool:
        """True while a stall applies: nothing leaves the pipe."""
        return bool(self._active("stall"))

    def _bucket(self, now: float) -> _Bucket | None:
        """The tightest bandwidth limit in force (its bucket refilled to ``now``)."""
        limits = self._active("bandwidth")
        live = {fid for fid, _, _ in limits}
        for fid in [f for f in self._buckets if f not in live]:
            del self._buckets[fid]
        chosen: _Bucket | None = None
        for fid, fault, _ in limits:
            bucket = self._buckets.get(fid)
            if bucket is None:
                bucket = self._buckets[fid] = _Bucket(fault.rate, now)
            bucket.refill(now)
            if chosen is None or bucket.tokens < chosen.tokens:
                chosen = bucket
        return chosen

    def _spend(self, nbytes: int) -> None:
        for bucket in self._buckets.values():
            bucket.tokens -= nbytes

    def _delay(self) -> float:
        return sum(self.faults.jitter(f) for _, f, _ in self._active("latency"))


@dataclass(slots=True)
class _Chunk:
    due: float
    data: bytes


class StreamPipe(_Pipe):
    """One direction of a stream connection: delays, pacing, stall, corruption and the cut.

    After ``poll`` has returned the last bytes, ``action`` says what the runtime must do:
    ``"eof"`` (pass the source's EOF on), ``"close"`` or ``"reset"`` (end the connection).
    """

    def __init__(self, faults: FaultSet, direction: Direction, now: float) -> None:
        super().__init__(faults, direction, now)
        self.offset_in = 0  # bytes the source sent (and we accepted)
        self.offset_out = 0  # bytes forwarded
        self.action: str | None = None
        self.cut: tuple[int, str] | None = None
        self._queue: deque[_Chunk] = deque()
        self._last_due = now
        self._eof = False
        self._check_cut(now)

    @property
    def held(self) -> int:
        """Bytes accepted but not forwarded yet."""
        return self.offset_in - self.offset_out

    def receive(self, data: bytes, now: float) -> None:
        """Take bytes the source sent at ``now``."""
        if self.faults.empty and self.cut is None:
            self.stats.bytes_in += len(data)
            self.offset_in += len(data)
            self._last_due = max(now, self._last_due)  # never overtake delayed bytes
            self._queue.append(_Chunk(self._last_due, data))
            return
        self._check_cut(now)
        self.stats.bytes_in += len(data)
        if self.cut is not None:
            data = self._trim(data)
        if not data:
            return
        start = self.offset_in
        self.offset_in += len(data)
        self._check_cut(now, start)
        if self.cut is not None and self.cut[0] < self.offset_in:
            keep = self.cut[0] - start
            self.stats.discarded_bytes += len(data) - keep
            data, self.offset_in = data[:keep], self.cut[0]
        data = self._corrupt(data, start)
        if data:
            self._last_due = max(now + self._delay(), self._last_due)
            self._queue.append(_Chunk(self._last_due, data))

    def _trim(self, data: bytes) -> bytes:
        assert self.cut is not None
        room = max(0, self.cut[0] - self.offset_in)
        self.stats.discarded_bytes += len(data) - min(room, len(data))
        return data[:room]

    def receive_eof(self, now: float) -> None:
        """The source ended its side: pass the EOF on once the held bytes are out."""
        self._eof = True

    def _check_cut(self, now: float, floor: int | None = None) -> None:
        """Fix the cut position once a reset/close fault triggers (then it is final).

        ``floor`` is the offset before the chunk just taken: a fault whose byte count the
        stream had passed before this check cuts where the stream was, not in the past.
        """
        if self.cut is not None:
            return
        floor = self.offset_in if floor is None else floor
        best: tuple[int, str] | None = None
        for kind in ("reset", "close"):
            for _, fault, added in self._active(kind):
                pos = self._cut_position(fault, added, now, floor)
                if pos is not None and (best is None or pos < best[0]):
                    best = (pos, kind)
        self.cut = best

    def _cut_position(self, fault: Fault, added: float, now: float, floor: int) -> int | None:
        positions = []
        if fault.nbytes is not None and self.offset_in >= fault.nbytes:
            positions.append(max(fault.nbytes, floor))
        if fault.seconds is not None and now >= max(added, self.started) + fault.seconds:
            positions.append(floor)
        return min(positions) if positions else None

    def _corrupt(self, data: bytes, start: int) -> bytes:
        end = start + len(data)
        hits = [
            f for _, f, _ in self._active("corrupt") if start <= f.offset < end
        ]  # offsets already passed are never hit again
        if not hits:
            return data
        out = bytearray(data)
        for fault in hits:
            out[fault.offset - start] ^= fault.xor
            self.stats.corrupted += 1
        return bytes(out)

    def poll(self, now: float) -> list[bytes]:
        """Bytes to forward now, in order (``action`` is set once nothing more will come)."""
        queue = self._queue
        fast = self.faults.empty and self.cut is None and not self._eof
        if fast and queue and queue[-1].due <= now:
            return self._release_all()
        self._check_cut(now)
        if self.cut is not None:
            self._drop_past_cut()
        out: list[bytes] = []
        if not self.stalled():
            self._release(now, out)
        if not self._queue and self.action is None:
            if self.cut is not None and self.offset_out >= self.cut[0]:
                self.action = self.cut[1]
            elif self._eof:
                self.action = "eof"
        return out

    def _drop_past_cut(self) -> None:
        assert self.cut is not None
        excess = self.offset_in - self.cut[0]
        while excess > 0 and self._queue:
            tail = self._queue[-1]
            if len(tail.data) <= excess:
                excess -= len(tail.data)
                self.offset_in -= len(tail.data)
                self._queue.pop()
            else:
                tail.data = tail.data[: len(tail.data) - excess]
                self.offset_in -= excess
                excess = 0

    def _release_all(self) -> list[bytes]:
        """No fault in force and everything queued is due: it all goes at once."""
        out = [chunk.data for chunk in self._queue]
        self._queue.clear()
        size = self.offset_in - self.offset_out
        self.offset_out += size
        self.stats.bytes_out += size
        return out

    def _release(self, now: float, out: list[bytes]) -> None:
        bucket = self._bucket(now)
        queue = self._queue
        while queue and queue[0].due <= now:
            head = queue[0]
            size = len(head.data)
            if bucket is not None:
                size = min(size, int(bucket.tokens))
                if size <= 0:
                    break
                self._spend(size)
            if size == len(head.data):
                queue.popleft()
                out.append(head.data)
            else:
                out.append(head.data[:size])
                head.data = head.data[size:]
            self.offset_out += size
            self.stats.bytes_out += size

    def next_time(self, now: float) -> float | None:
        """When ``poll`` should run next (None: only when input or faults change)."""
        if self.faults.empty and not self._queue:
            return None
        times = [t for t in self._cut_times() if t > now]
        if self._queue and not self.stalled():
            due = self._queue[0].due
            bucket = self._bucket(now)
            if bucket is not None:
                due = max(due, bucket.when(min(len(self._queue[0].data), bucket.burst)))
            times.append(due)
        return min(times) if times else None

    def _cut_times(self) -> list[float]:
        if self.cut is not None:
            return []
        return [
            max(added, self.started) + fault.seconds
            for kind in ("reset", "close")
            for _, fault, added in self._active(kind)
            if fault.seconds is not None
        ]


class DatagramPipe(_Pipe):
    """One direction of a UDP session: loss, duplication, reordering, delay, pacing, stall.

    ``reset``/``close`` faults end the session: datagrams past the cut are dropped.
    """

    def __init__(self, faults: FaultSet, direction: Direction, now: float) -> None:
        super().__init__(faults, direction, now)
        self.bytes_in = 0
        self.closed = False
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._held: tuple[float, bytes] | None = None  # a datagram waiting to be swapped

    def _per_datagram(self, kind: str) -> list[tuple[int, Fault, float]]:
        return list(self.faults.active(self.direction, kind))

    def _chance(self, kind: str) -> bool:
        """One draw per fault of ``kind``: True when any of them hits this datagram."""
        hit = False
        for _, fault, _ in self._per_datagram(kind):
            if self.faults.draw(fault.rate * fault.probability):
                hit = True
        return hit

    def receive(self, data: bytes, now: float) -> None:
        """Take one datagram the source sent at ``now``."""
        self.stats.datagrams_in += 1
        self.stats.bytes_in += len(data)
        if self._cut(len(data), now):
            self.stats.dropped += 1
            return
        if self._chance("loss"):
            self.stats.dropped += 1
            return
        data = self._corrupt(data)
        copies = 2 if self._chance("duplicate") else 1
        self.stats.duplicated += copies - 1
        swap = self._chance("reorder")
        due = now + self._datagram_delay()
        for _ in range(copies):
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, data))
        if swap:
            self._swap_next(now)

    def _cut(self, size: int, now: float) -> bool:
        if self.closed:
            return True
        self.bytes_in += size
        for kind in ("reset", "close"):
            for _, fault, added in self._per_datagram(kind):
                over = fault.nbytes is not None and self.bytes_in > fault.nbytes
                late = fault.seconds is not None and now >= max(added, self.started) + fault.seconds
                if (over or late) and self.faults.draw(fault.probability):
                    self.closed = True
        return self.closed

    def _corrupt(self, data: bytes) -> bytes:
        hits = [
            f
            for _, f, _ in self._per_datagram("corrupt")
            if f.offset < len(data) and self.faults.draw(f.probability)
        ]
        if not hits:
            return data
        out = bytearray(data)
        for fault in hits:
            out[fault.offset] ^= fault.xor
            self.stats.corrupted += 1
        return bytes(out)

    def _datagram_delay(self) -> float:
        total = 0.0
        for _, fault, _ in self._per_datagram("latency"):
            if self.faults.draw(fault.probability):
                total += self.faults.jitter(fault)
        return total

    def _swap_next(self, now: float) -> None:
        """Hold back the datagram just queued until the next one has gone out."""
        if self._held is not None:
            return  # one at a time: the one already held keeps its place
        _, _, data = self._heap.pop(self._heap.index(max(self._heap, key=lambda e: e[1])))
        heapq.heapify(self._heap)
        hold = max(f.hold for _, f, _ in self._per_datagram("reorder"))
        self._held = (now + hold, data)
        self.stats.reordered += 1

    def poll(self, now: float) -> list[bytes]:
        """Datagrams to send now."""
        out: list[bytes] = []
        if self.stalled():
            return out
        bucket = self._bucket(now)
        heap = self._heap
        while heap and heap[0][0] <= now:
            if bucket is not None and bucket.tokens <= 0:
                break
            data = heapq.heappop(heap)[2]
            if bucket is not None:
                self._spend(len(data))
            self._emit(data, out)
            if self._held is not None:
                self._emit(self._held[1], out)  # the swap: the held one goes right after
                self._held = None
        if self._held is not None and self._held[0] <= now:
            self._emit(self._held[1], out)
            self._held = None
        return out

    def _emit(self, data: bytes, out: list[bytes]) -> None:
        out.append(data)
        self.stats.datagrams_out += 1
        self.stats.bytes_out += len(data)

    def next_time(self, now: float) -> float | None:
        """When ``poll`` should run next (None: only when input or faults change)."""
        if self.stalled():
            return None
        times = []
        if self._heap:
            due = self._heap[0][0]
            bucket = self._bucket(now)
            if bucket is not None and bucket.tokens <= 0:
                due = max(due, bucket.stamp + (1 - bucket.tokens) / bucket.rate)
            times.append(due)
        if self._held is not None:
            times.append(self._held[0])
        return min(times) if times else None

    @property
    def held(self) -> int:
        """Datagrams waiting (delayed, paced, stalled or held for a swap)."""
        return len(self._heap) + (self._held is not None)
