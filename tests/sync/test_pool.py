"""The blocking connection pool against real loopback servers."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from opensocket import sync
from opensocket.errors import ConfigError, OpenSocketError
from opensocket.protocol.connection import Role
from opensocket.sync import Pool, PoolClosed, PoolExhausted

from .conftest import echo_server, hand_handshake, in_thread


class Live:
    """An echo handler that counts the connections open on the server side."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.open = self.peak = self.total = 0
        self.conns: list[sync.Connection] = []

    def __call__(self, conn: sync.Connection) -> None:
        with self.cond:
            self.open += 1
            self.total += 1
            self.peak = max(self.peak, self.open)
            self.conns.append(conn)
            self.cond.notify_all()
        try:
            for message in conn:
                conn.send(message)
        finally:
            with self.cond:
                self.open -= 1
                self.cond.notify_all()

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        with self.cond:
            assert self.cond.wait_for(condition, timeout), "server-side condition not met"


@pytest.fixture
def live() -> Iterator[tuple[Live, str]]:
    counter = Live()
    with echo_server(handler=counter) as server:
        yield counter, str(server.addresses[0])


@pytest.fixture
def pools() -> Iterator[Callable[..., Pool]]:
    """Make pools that are closed at teardown, so a failed test leaves no reaper thread
    behind to fail the leak checks of the tests after it."""
    made: list[Pool] = []

    def make(url: str, **kwargs: object) -> Pool:
        pool = Pool(url, **kwargs)  # type: ignore[arg-type]
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close(wait=1)


def test_twenty_threads_never_more_than_max_size_connections(
    no_leaks: None, live: tuple[Live, str], pools: Callable[..., Pool]
) -> None:
    counter, url = live
    pool = pools(url, max_size=4, idle_timeout=30, acquire_timeout=10)
    start = threading.Barrier(20)
    errors: queue.Queue[BaseException] = queue.Queue()

    def work(n: int) -> None:
        try:
            start.wait(5)
            for i in range(15):
                with pool.connection() as conn:
                    conn.send(f"{n}-{i}".encode())
                    assert conn.recv(timeout=5) == f"{n}-{i}".encode()  # its own reply
        except BaseException as exc:
            errors.put(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors.empty(), errors.get()
    assert counter.peak <= 4  # counted on the server
    assert counter.total == pool.stats.created <= 4
    stats = pool.stats
    assert stats.in_use == 0 and stats.idle == stats.created and stats.closed == 0
    pool.close()
    counter.wait_for(lambda: counter.open == 0)


def test_exhausted_after_the_acquire_timeout_then_a_returned_one_is_handed_on(
    live: tuple[Live, str], pools: Callable[..., Pool]
) -> None:
    _, url = live
    pool = pools(url, max_size=2, acquire_timeout=0.1)
    held = [pool.acquire(), pool.acquire()]
    with pytest.raises(PoolExhausted, match=r"within 0\.1s \(all 2 in use\)") as info:
        pool.acquire()
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, OpenSocketError)
    assert pool.stats.waits == 1 and pool.stats.timeouts == 1

    # Waits for a return (a long timeout: a lost wake-up would show as a failed get below).
    thread, result = in_thread(lambda: pool.acquire(timeout=30))
    pool.release(held[0])
    got = result.get(timeout=5)
    thread.join(5)
    assert got is held[0]
    assert pool.stats.created == 2
    with pytest.raises(ConfigError, match="not checked out"):
        pool.release(object())  # type: ignore[arg-type]
    pool.release(got)
    pool.release(held[1])
    pool.close()


def test_dead_connection_is_replaced_on_checkout(
    live: tuple[Live, str], pools: Callable[..., Pool]
) -> None:
    counter, url = live
    pool = pools(url, max_size=1, acquire_timeout=5)
    with pool.connection() as first:
        first.send(b"a")
        assert first.recv(timeout=5) == b"a"
    counter.wait_for(lambda: counter.total == 1)
    counter.conns[0].close()  # the server closes it while it sits idle in the pool
    assert first.wait_closed(5)
    with pool.connection() as second:
        assert second is not first and not second.closed
        second.send(b"b")
        assert second.recv(timeout=5) == b"b"
    stats = pool.stats
    assert (stats.created, stats.unhealthy, stats.closed) == (2, 1, 1)
    assert counter.total == 2
    pool.close()


def test_silent_peer_fails_the_ping_and_is_replaced() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve_two() -> None:  # complete two handshakes by hand, then never read again
        for _ in range(2):
            sock, _ = listener.accept()
            accepted.append(sock)
            hand_handshake(sock, Role.SERVER)

    thread = threading.Thread(target=serve_two, daemon=True)
    thread.start()
    pool = Pool(f"tcp://127.0.0.1:{port}", max_size=1, ping_after=0.0, ping_timeout=0.2)
    try:
        with pool.connection() as first:
            pass
        with pool.connection() as second:  # idle > 0 s: pinged, no PONG, so replaced
            assert second is not first
        stats = pool.stats
        assert (stats.created, stats.unhealthy) == (2, 1)
    finally:
        for sock in accepted:
            sock.close()  # both client connections end with the peer
        pool.close(wait=1)
        thread.join(5)
        listener.close()
    assert first.wait_closed(5) and second.wait_closed(5)


def test_ping_health_check_keeps_a_live_connection(
    live: tuple[Live, str], pools: Callable[..., Pool]
) -> None:
    counter, url = live
    pool = pools(url, max_size=1, ping_after=0.0, ping_timeout=5)
    try:
        with pool.connection() as first:
            pass
        with pool.connection() as again:  # pinged and answered: the same connection
            assert again is first
        assert pool.stats.created == 1 and pool.stats.unhealthy == 0
        counter.wait_for(lambda: counter.total == 1)  # the handler thread starts on its own
    finally:
        pool.close()


def test_idle_connections_are_closed_after_idle_timeout(
    live: tuple[Live, str], pools: Callable[..., Pool]
) -> None:
    counter, url = live
    pool = pools(url, max_size=3, idle_timeout=0.2)
    conns = [pool.acquire() for _ in range(3)]
    counter.wait_for(lambda: counter.open == 3)
    for conn in conns:
        pool.release(conn)
    counter.wait_for(lambda: counter.open == 0)  # the server sees all three closed
    stats = pool.stats
    assert (stats.idle, stats.closed) == (0, 3)
    assert all(conn.wait_closed(5) for conn in conns)
    pool.close()


def test_min_size_opens_at_start_and_survives_idle_expiry(
    live: tuple[Live, str], pools: Callable[..., Pool]
) -> None:
    counter, url = live
    pool = pools(url, max_size=3, min_size=1, idle_timeout=0.05)
    assert pool.stats.created == 1 and pool.stats.idle == 1
    extra = [pool.acquire(), pool.acquire()]  # the kept one and a new one
    # The server's handler threads start on their own: wait until both count as open,
    # or "one open" below could be seen before the second ever was.
    counter.wait_for(lambda: counter.open == 2)
    for conn in extra:
        pool.release(conn)
    counter.wait_for(lambda: counter.open == 1)  # one expired, min_size kept
    assert pool.stats.idle == 1 and pool.stats.closed == 1


def test_close_closes_everything_and_later_checkouts_fail(
    no_leaks: None, live: tuple[Live, str], pools: Callable[..., Pool]
) -> None:
    counter, url = live
    pool = pools(url, max_size=2, idle_timeout=30, acquire_timeout=10)
    a, b = pool.acquire(), pool.acquire()
    counter.wait_for(lambda: counter.open == 2)
    blocked, blocked_result = in_thread(pool.acquire)  # the pool is full: it waits
    closer, _ = in_thread(lambda: pool.close(wait=5))  # waits for a and b to come back
    assert isinstance(blocked_result.get(timeout=5), PoolClosed)  # told at once, no hang
    pool.release(b)
    pool.release(a)
    closer.join(5)
    assert not closer.is_alive()
    counter.wait_for(lambda: counter.open == 0)  # every connection closed, seen by the server
    assert pool.closed and a.wait_closed(5) and b.wait_closed(5)
    with pytest.raises(PoolClosed, match="is closed"):
        pool.acquire()
    with pytest.raises(PoolClosed), pool.connection():
        pass
    blocked.join(5)


def test_close_does_not_wait_forever_for_a_checked_out_connection(
    live: tuple[Live, str], pools: Callable[..., Pool]
) -> None:
    counter, url = live
    pool = pools(url, max_size=2)
    kept = pool.acquire()
    pool.close(wait=0.05)  # the holder never returns it in time: closed anyway
    assert kept.wait_closed(5)
    counter.wait_for(lambda: counter.open == 0)
    pool.release(kept)  # a late return after close() is harmless
    assert pool.stats.closed == 1


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ConfigError, match="max_size"):
        Pool("tcp://127.0.0.1:1", max_size=0)
    with pytest.raises(ConfigError, match="min_size"):
        Pool("tcp://127.0.0.1:1", max_size=1, min_size=2)
    with pytest.raises(ConfigError, match="raw"):
        Pool("tcp://127.0.0.1:1", raw=True)


def test_connection_ping_returns_the_round_trip_and_unread_counts_the_inbox(
    live: tuple[Live, str],
) -> None:
    counter, url = live
    with sync.connect(url) as conn:
        rtt = conn.ping(timeout=5)
        assert 0.0 <= rtt < 5.0
        conn.send(b"one")
        conn.send(b"two")
        assert conn.recv(timeout=5) == b"one"
        counter.wait_for(lambda: counter.total == 1)
        deadline = 50
        while conn.unread < 1 and deadline:  # the echo of "two" is on its way
            conn.ping(timeout=5)  # a round trip after it: the echo is in by then
            deadline -= 1
        assert conn.unread == 1
        assert conn.recv(timeout=5) == b"two" and conn.unread == 0
    with pytest.raises(OpenSocketError):
        conn.ping(timeout=1)  # closed: a clear error, not a hang


def test_connection_ping_times_out_against_a_silent_peer() -> None:
    from opensocket.errors import OperationTimeout

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve_one() -> None:  # complete the handshake by hand, then never read again
        sock, _ = listener.accept()
        accepted.append(sock)
        hand_handshake(sock, Role.SERVER)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    conn = sync.connect(f"tcp://127.0.0.1:{port}")
    try:
        with pytest.raises(OperationTimeout, match=r"no answer to a ping within 0\.2s"):
            conn.ping(timeout=0.2)
    finally:
        conn.close(wait=False)
        thread.join(5)
        for sock in accepted:
            sock.close()
        listener.close()
    assert conn.wait_closed(5)


def test_connection_ping_answers_are_its_own_beside_heartbeats(live: tuple[Live, str]) -> None:
    _, url = live
    from opensocket import ProtocolOptions

    with sync.connect(url, protocol=ProtocolOptions(heartbeat=0.01)) as conn:
        link = conn.link
        import time

        start = time.monotonic()
        for _ in range(200):  # heartbeat pings (every 10 ms) interleave with ours
            assert 0.0 <= conn.ping(timeout=5) < 5.0
            if time.monotonic() - start > 0.1:
                break
        assert not link._pings  # nothing awaited is left behind
