"""A thread-safe pool of framed connections for blocking clients.

    pool = Pool("tcp://127.0.0.1:9000", max_size=4, idle_timeout=30, acquire_timeout=5)
    with pool.connection() as conn:
        conn.send(b"ping")
        print(conn.recv())
    pool.close()

At most ``max_size`` connections exist at once (checked out, idle or being opened). A checkout
takes the most recently returned idle connection after a health check (the connection is still
open and, when it has been idle longer than ``ping_after`` seconds, answers a ping), or opens a
new one, or waits up to ``acquire_timeout`` for one to be returned, then raises PoolExhausted.
A connection returned with unread messages, or from a block that raised, is closed rather than
reused: the next user would otherwise read someone else's reply. A background thread closes
connections idle longer than ``idle_timeout`` (keeping ``min_size``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .._log import safe_call
from ..address import Address
from ..errors import (
    CloseCode,
    ConfigError,
    OpenSocketError,
    PoolClosed,
    PoolExhausted,
)
from ._framed import Connection

__all__ = ["Pool", "PoolClosed", "PoolExhausted", "PoolStats"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's counters."""

    in_use: int  # checked out now
    idle: int  # open and waiting in the pool now
    opening: int  # being connected now
    created: int  # opened in total
    closed: int  # closed in total (idle expiry, failed health checks, discards, close())
    waits: int  # times a checkout had to wait for a connection to come back
    timeouts: int  # checkouts that gave up with PoolExhausted
    unhealthy: int  # idle connections found dead on checkout and replaced


class Pool:
    """A bounded, thread-safe pool of ``opensocket.sync.connect(url, **connect_kwargs)``."""

    def __init__(
        self,
        url: str | Address,
        *,
        max_size: int = 10,
        min_size: int = 0,
        idle_timeout: float | None = 60.0,
        health_check: bool = True,
        ping_after: float | None = 30.0,
        ping_timeout: float = 2.0,
        acquire_timeout: float | None = 10.0,
        **connect_kwargs: Any,
    ) -> None:
        if max_size < 1:
            raise ConfigError(f"max_size must be at least 1, not {max_size}")
        if not 0 <= min_size <= max_size:
            raise ConfigError(
                f"min_size must be between 0 and max_size ({max_size}), not {min_size}"
            )
        for name, value in (("idle_timeout", idle_timeout), ("acquire_timeout", acquire_timeout)):
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0 (or None: no limit), not {value}")
        if connect_kwargs.get("raw") or connect_kwargs.get("rudp") is not None:
            raise ConfigError("a pool holds framed connections: raw= and rudp= do not apply")
        self.url = url
        self.max_size = max_size
        self.min_size = min_size
        self.idle_timeout = idle_timeout
        self.health_check = health_check
        self.ping_after = ping_after
        self.ping_timeout = ping_timeout
        self.acquire_timeout = acquire_timeout
        self._connect_kwargs = connect_kwargs
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a slot freed, or the pool closed
        self._reaper_wake = threading.Condition(self._lock)  # a connection went idle, or closed
        self._idle: deque[tuple[Connection, float]] = deque()  # (conn, returned at); newest last
        self._in_use: set[Connection] = set()
        self._opening = 0
        self._closed = False
        self._created = self._closed_count = self._waits = self._timeouts = self._unhealthy = 0
        self._reaper: threading.Thread | None = None
        try:
            for _ in range(min_size):
                conn = self._open()
                self._idle.append((conn, time.monotonic()))
        except BaseException:
            for conn, _ in self._idle:
                safe_call(conn.close)
            raise
        if idle_timeout is not None:
            self._reaper = threading.Thread(
                target=self._reap, name=f"opensocket-pool-reaper {url}", daemon=True
            )
            self._reaper.start()

    # ---- checkout / return -----------------------------------------------------------------

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Connection]:
        """Check a connection out for the block; it goes back (or is closed) at the end."""
        conn = self.acquire(timeout)
        try:
            yield conn
        except BaseException:
            self.release(conn, discard=True)  # it may hold a half-done exchange
            raise
        self.release(conn)

    def acquire(self, timeout: float | None = None) -> Connection:
        """Check out a healthy connection; PoolExhausted when none frees within ``timeout``
        (default ``acquire_timeout``), PoolClosed after ``close()``."""
        wait = self.acquire_timeout if timeout is None else timeout
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            with self._lock:
                taken = self._checkout_locked(deadline, wait)
            if taken is None:  # a slot is reserved for us: open outside the lock
                return self._open_reserved()
            conn, since = taken
            if self._healthy(conn, since):
                return conn
            self._discard(conn, unhealthy=True)

    def _checkout_locked(
        self, deadline: float | None, wait: float | None
    ) -> tuple[Connection, float] | None:
        """Take an idle connection (and when it came back), or reserve a slot (None); wait
        while the pool is full."""
        counted = False
        while True:
            if self._closed:
                raise PoolClosed(f"the pool for {self.url} is closed")
            if self._idle:
                conn, since = self._idle.pop()  # the most recently used: likeliest alive
                self._in_use.add(conn)
                return conn, since
            if len(self._in_use) + self._opening < self.max_size:
                self._opening += 1
                return None
            if not counted:
                self._waits += 1
                counted = True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._timeouts += 1
                raise PoolExhausted(
                    f"no connection to {self.url} came free within {wait:g}s (all "
                    f"{self.max_size} in use): return them sooner ('with pool.connection()'), "
                    "or raise max_size or acquire_timeout"
                )
            self._changed.wait(left)

    def _open_reserved(self) -> Connection:
        try:
            conn = self._open()
        except BaseException:
            with self._lock:
                self._opening -= 1
                self._changed.notify()
            raise
        with self._lock:
            self._opening -= 1
            if self._closed:
                self._closed_count += 1
                closed = True
            else:
                self._in_use.add(conn)
                closed = False
        if closed:
            conn.close()
            raise PoolClosed(f"the pool for {self.url} was closed while connecting")
        return conn

    def _open(self) -> Connection:
        from . import connect

        conn = connect(self.url, **self._connect_kwargs)
        assert isinstance(conn, Connection)
        with self._lock:
            self._created += 1
        return conn

    def release(self, conn: Connection, *, discard: bool = False) -> None:
        """Give ``conn`` back (``discard``: close it instead of keeping it)."""
        with self._lock:
            if conn not in self._in_use:
                if self._closed:  # close() gave up waiting for it and closed it already
                    return
                raise ConfigError("this connection is not checked out from this pool")
            self._in_use.discard(conn)
            keep = not (discard or self._closed or conn.closed or conn.unread)
            if keep:
                self._idle.append((conn, time.monotonic()))
                self._reaper_wake.notify()
            else:
                self._closed_count += 1
            self._changed.notify()
        if not keep:
            safe_call(conn.close)

    def _discard(self, conn: Connection, *, unhealthy: bool = False) -> None:
        with self._lock:
            self._in_use.discard(conn)
            self._closed_count += 1
            self._unhealthy += unhealthy
            self._changed.notify()
        # It may not answer at all: send our CLOSE without waiting for the peer's.
        reason = "failed the pool's health check"
        safe_call(lambda: conn.close(CloseCode.GOING_AWAY, reason, wait=False))

    # ---- health ----------------------------------------------------------------------------

    def _healthy(self, conn: Connection, since: float) -> bool:
        """Open, nothing unread, and (idle longer than ``ping_after``) answering a ping."""
        if conn.closed or conn.unread:
            return False
        if not self.health_check or self.ping_after is None:
            return True
        if time.monotonic() - since <= self.ping_after:
            return True
        return self.ping(conn, self.ping_timeout)

    @staticmethod
    def ping(conn: Connection, timeout: float) -> bool:
        """One PING/PONG round trip within ``timeout`` seconds (False if none came back)."""
        try:
            conn.ping(timeout)
        except OpenSocketError:
            return False
        return not conn.closed

    # ---- idle expiry -----------------------------------------------------------------------

    def _reap(self) -> None:
        assert self.idle_timeout is not None
        limit = self.idle_timeout
        while True:
            expired: list[Connection] = []
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                spare = len(self._idle) + len(self._in_use) - self.min_size
                while self._idle and spare > 0 and now - self._idle[0][1] >= limit:
                    expired.append(self._idle.popleft()[0])  # the oldest is first
                    spare -= 1
                self._closed_count += len(expired)
                if not expired:
                    if self._idle and spare > 0:
                        wait: float | None = self._idle[0][1] + limit - now
                    else:
                        wait = None  # nothing can expire until a connection comes back
                    self._reaper_wake.wait(wait)
            for conn in expired:
                safe_call(conn.close)

    # ---- life ------------------------------------------------------------------------------

    @property
    def stats(self) -> PoolStats:
        """A snapshot of the counters."""
        with self._lock:
            return PoolStats(
                in_use=len(self._in_use),
                idle=len(self._idle),
                opening=self._opening,
                created=self._created,
                closed=self._closed_count,
                waits=self._waits,
                timeouts=self._timeouts,
                unhealthy=self._unhealthy,
            )

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._closed

    def close(self, wait: float = 5.0) -> None:
        """Close the pool: idle connections now, checked-out ones when returned or after
        ``wait`` seconds, whichever is first. Later checkouts raise PoolClosed."""
        with self._lock:
            self._closed = True
            idle = [conn for conn, _ in self._idle]
            self._idle.clear()
            self._closed_count += len(idle)
            self._changed.notify_all()
            self._reaper_wake.notify_all()
        for conn in idle:
            safe_call(conn.close)
        deadline = time.monotonic() + wait
        with self._lock:
            while self._in_use or self._opening:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            left_over = list(self._in_use)
            self._in_use.clear()
            self._closed_count += len(left_over)
        for conn in left_over:
            safe_call(conn.close)
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join(5.0)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
