"""A seeded, simulated network for the sans-IO reliable-UDP endpoints, on an explicit clock.

Each direction is a Link with loss, duplication, reordering, delay, jitter, and a bandwidth
limit with a bounded queue (tail drop). ``Sim`` joins one client to one server endpoint and
steps time from event to event: the next arrival or the next timer, never sleeping.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from opensocket.rudp import (
    ConnectionAccepted,
    Event,
    RudpConnection,
    RudpOptions,
    RudpServer,
)

CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 9000)

Datagram = tuple[bytes, object]


@dataclass
class Link:
    """One direction of the path."""

    rng: random.Random
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.01
    jitter: float = 0.0
    bandwidth: float | None = None  # bytes per second
    queue_delay: float = 0.25  # a packet that would wait longer is dropped (tail drop)
    busy_until: float = 0.0
    sent: int = 0
    dropped: int = 0
    bytes: int = 0
    drop_next: int = 0  # tests: drop this many next datagrams for sure
    filter: Callable[[bytes], bool] | None = None  # tests: True drops the datagram

    def schedule(self, data: bytes, now: float) -> list[float]:
        """Arrival times of ``data`` sent at ``now`` (empty when lost)."""
        self.sent += 1
        self.bytes += len(data)
        if self.drop_next:
            self.drop_next -= 1
            self.dropped += 1
            return []
        if (self.filter is not None and self.filter(data)) or self.rng.random() < self.loss:
            self.dropped += 1
            return []
        depart = now
        if self.bandwidth is not None:
            start = max(now, self.busy_until)
            if start - now > self.queue_delay:
                self.dropped += 1
                return []
            depart = self.busy_until = start + len(data) / self.bandwidth
        copies = 2 if self.rng.random() < self.duplicate else 1
        arrivals = []
        for _ in range(copies):
            extra = self.rng.uniform(0, self.jitter)
            if self.rng.random() < self.reorder:
                extra += self.rng.uniform(0, 2 * self.delay)
            arrivals.append(depart + self.delay + extra)
        return arrivals


@dataclass
class Sim:
    """A client and a server endpoint over two Links."""

    seed: int = 0
    options: RudpOptions = field(default_factory=RudpOptions)
    server_options: RudpOptions | None = None
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.01
    jitter: float = 0.0
    bandwidth: float | None = None
    read_client: bool = True
    read_server: bool = True

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        kw = {
            "loss": self.loss,
            "duplicate": self.duplicate,
            "reorder": self.reorder,
            "delay": self.delay,
            "jitter": self.jitter,
            "bandwidth": self.bandwidth,
        }
        self.up = Link(random.Random(rng.random()), **kw)  # type: ignore[arg-type]
        self.down = Link(random.Random(rng.random()), **kw)  # type: ignore[arg-type]
        self.now = 0.0
        self.server = RudpServer(self.server_options or self.options, now=0.0)
        self.client = RudpConnection.connect(SERVER, self.options, now=0.0)
        self.conn: RudpConnection | None = None  # the server side of the connection
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        self._queue: list[tuple[float, int, bytes, object]] = []
        self._count = 0
        self.flush()

    def flush(self) -> None:
        """Put everything both sides want to send on the links."""
        for data, addr in self.client.datagrams_to_send(self.now):
            assert addr == SERVER
            self._push(self.up, data, SERVER)
        for data, addr in self.server.datagrams_to_send(self.now):
            assert addr == CLIENT
            self._push(self.down, data, CLIENT)

    def _push(self, link: Link, data: bytes, dst: object) -> None:
        for arrival in link.schedule(data, self.now):
            self._count += 1
            heapq.heappush(self._queue, (arrival, self._count, data, dst))

    def inject(self, data: bytes, dst: object, src: object, delay: float = 0.0) -> None:
        """Deliver a datagram of the test's own making (spoofed source allowed)."""
        self._count += 1
        heapq.heappush(self._queue, (self.now + delay, self._count, data, (dst, src)))

    def next_time(self) -> float | None:
        """When something happens next."""
        times = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
        if self._queue:
            times.append(self._queue[0][0])
        return min(times) if times else None

    def step(self) -> bool:
        """Advance to the next happening and process it; False when nothing is left."""
        when = self.next_time()
        if when is None:
            return False
        self.now = max(self.now, when)
        while self._queue and self._queue[0][0] <= self.now:
            _, _, data, dst = heapq.heappop(self._queue)
            self._deliver(data, dst)
        timer = self.client.get_timer()
        if timer is not None and timer <= self.now:
            self.client.handle_timer(self.now)
        timer = self.server.get_timer()
        if timer is not None and timer <= self.now:
            self.server.handle_timer(self.now)
        self.collect()
        self.flush()
        return True

    def _deliver(self, data: bytes, dst: object) -> None:
        if isinstance(dst, tuple) and isinstance(dst[0], tuple):
            dst, src = dst
        else:
            src = CLIENT if dst == SERVER else SERVER
        if dst == SERVER:
            self.server.receive_datagram(data, src, self.now)
        else:
            self.client.receive_datagram(data, src, self.now)

    def collect(self) -> None:
        """Take events (unless reading is paused on that side)."""
        while (event := self.server.next_event()) is not None:
            if isinstance(event, ConnectionAccepted):
                self.conn = event.connection
            self.server_events.append(event)
        if self.read_server and self.conn is not None:
            while (event := self.conn.next_event()) is not None:
                self.server_events.append(event)
        if self.read_client:
            while (event := self.client.next_event()) is not None:
                self.client_events.append(event)

    def run(self, until: Callable[[], bool], limit: float = 120.0, steps: int = 1_000_000) -> None:
        """Step until ``until()`` holds; fail past ``limit`` simulated seconds or ``steps``."""
        for _ in range(steps):
            if until():
                return
            if not self.step() or self.now > limit:
                break
        assert until(), f"condition not reached by t={self.now:.3f}s"

    def run_for(self, seconds: float) -> None:
        """Step until ``seconds`` of simulated time have passed (or nothing is left)."""
        end = self.now + seconds
        while (when := self.next_time()) is not None and when <= end:
            self.step()
        self.now = max(self.now, end)
