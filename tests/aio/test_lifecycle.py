"""Backpressure, hooks, stats, graceful shutdown and authentication over real sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest

import opensocket
from opensocket import CloseCode, Hooks, ProtocolOptions, ServerLimits, SocketOptions
from opensocket.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    ConnectionRefused,
    ConnectionRejected,
    HandshakeError,
    WriteTimeout,
)
from opensocket.protocol.frame import HEADER_SIZE, FrameType

from .conftest import (
    Watch,
    close_frames,
    echo_server,
    hand_handshake,
    no_leaks,
    port_of,
    raw_connect,
    read_until_eof,
    served,
)

CHUNK = b"x" * (64 * 1024)


async def send_until_timeout(conn: opensocket.Connection, limit: int = 2000) -> int:
    """Send chunks until a send times out; return how many went out before that."""
    for sent in range(limit):
        try:
            await conn.send(CHUNK)
        except WriteTimeout:
            return sent
    raise AssertionError(f"{limit} chunks went out: the peer reads after all")


@pytest.mark.uvloop
async def test_backpressure_blocks_then_times_out_and_drops() -> None:
    gate = asyncio.Event()

    async def never_reads(conn: opensocket.Connection) -> None:
        await gate.wait()

    server_opts = ProtocolOptions(max_queued_messages=4)
    small = SocketOptions(recv_buffer=64 * 1024)
    client_opts = SocketOptions(write_timeout=0.3, send_buffer=64 * 1024)
    async with no_leaks():
        server = await opensocket.serve(
            "tcp://127.0.0.1:0", never_reads, protocol=server_opts, options=small
        )
        conn = await opensocket.connect(server.url, options=client_opts)
        sender = asyncio.create_task(send_until_timeout(conn))
        sent = await asyncio.wait_for(sender, 10)
        # The server queues 4 messages and the kernel buffers a little: the sender then
        # waited write_timeout and gave up, instead of buffering without bound.
        assert 4 <= sent < 200
        assert not conn.writable
        assert conn.closed
        assert conn.close_code == CloseCode.SLOW_CONSUMER
        assert "dropped as stuck" in conn.close_reason
        with pytest.raises(ConnectionClosed):
            await conn.send(b"after drop")
        gate.set()
        await server.close()


@pytest.mark.uvloop
async def test_paused_reading_resumes_and_nothing_is_lost() -> None:
    gate = asyncio.Event()
    total = 300

    async def slow_start(conn: opensocket.Connection) -> None:
        await gate.wait()
        count = 0
        size = 0
        while count < total:
            batch = await conn.recv_batch(max_messages=7)
            count += len(batch)
            size += sum(map(len, batch))
        await conn.send(b"%d %d" % (count, size))
        await conn.recv()

    # The server pauses reading after 10 queued messages: the client must block, and both
    # sides must recover once the handler reads.
    opts = ProtocolOptions(max_queued_messages=10, max_queued_bytes=256 * 1024)
    async with (
        echo_server(handler=slow_start, protocol=opts) as server,
        await opensocket.connect(server.url) as conn,
    ):
        sender = asyncio.create_task(conn.send_many([CHUNK] * total))
        await asyncio.sleep(0)
        assert not sender.done() or not conn.writable or total * len(CHUNK) < 1 << 20
        gate.set()
        await asyncio.wait_for(sender, 10)
        assert await conn.recv(timeout=10) == b"%d %d" % (total, total * len(CHUNK))


async def test_reading_is_not_paused_by_what_was_already_consumed() -> None:
    # The queued-bytes account must shrink as the application takes messages; otherwise a
    # long-lived connection pauses (and resumes) its transport on every message.
    opts = ProtocolOptions(max_queued_bytes=64 * 1024)
    async with echo_server() as server, await opensocket.connect(server.url, protocol=opts) as conn:
        for _ in range(40):
            await conn.send(b"y" * 8192)
            assert len(await conn.recv(timeout=5)) == 8192
        assert not conn._proto._read_paused
        assert conn._proto._queued_bytes == 0


async def test_hooks_fire_on_both_sides() -> None:
    server_side, client_side = Watch(), Watch()
    async with echo_server(hooks=server_side.hooks, name="srv") as server:
        conn = await opensocket.connect(server.url, hooks=client_side.hooks, name="cli")
        assert [c.peer_name for c in client_side.connected] == ["srv"]
        await served(conn)
        assert [c.peer_name for c in server_side.connected] == ["cli"]
        await conn.close(CloseCode.NORMAL, "bye now")
        assert client_side.reasons == [(CloseCode.NORMAL, "bye now")]
        await server_side.until(lambda: bool(server_side.reasons))
        assert server_side.reasons == [(CloseCode.NORMAL, "bye now")]
        assert server_side.failed == 0

        # A client that never completes the handshake: on_handshake_failed on the server.
        sock = await raw_connect("127.0.0.1", port_of(server))
        sock.close()
        await server_side.until(lambda: server_side.failed == 1)
        assert isinstance(server_side.errors[0], HandshakeError)
        assert "closed the connection during the handshake" in str(server_side.errors[0])


async def test_client_handshake_failed_hook() -> None:
    failures: list[tuple[str, BaseException]] = []
    hooks = Hooks(on_handshake_failed=lambda peer, exc: failures.append((peer, exc)))
    async with echo_server(secret="server-secret") as server:
        with pytest.raises(AuthenticationFailed):
            await opensocket.connect(server.url, hooks=hooks)
    assert len(failures) == 1
    assert failures[0][0] == server.addresses[0].hostport
    assert isinstance(failures[0][1], AuthenticationFailed)


@pytest.mark.uvloop
async def test_stats_count_bytes_and_messages() -> None:
    async with echo_server() as server:
        conn = await opensocket.connect(server.url)
        sizes = [1, 100, 5000]
        for size in sizes:
            await conn.send(b"s" * size)
            await conn.recv(timeout=5)
        stats = conn.stats
        assert stats.messages_out == 3
        assert stats.messages_in == 3
        payload = sum(sizes) + HEADER_SIZE * len(sizes)
        assert stats.bytes_out >= payload  # plus the handshake
        assert stats.bytes_in >= payload
        server_stats = server.stats
        assert server_stats.active == 1
        assert server_stats.messages_in == 3
        assert server_stats.messages_out == 3
        assert server_stats.bytes_in == stats.bytes_out
        assert server_stats.bytes_out == stats.bytes_in
        await conn.close()
        final = conn.stats
        await server.close()
        after = server.stats
        assert after.active == 0
        assert after.accepted == 1
        assert after.bytes_in == final.bytes_out
        assert after.bytes_out == final.bytes_in
        assert after.messages_in == 3


async def test_close_lets_a_running_handler_finish() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def worker(conn: opensocket.Connection) -> None:
        request = await conn.recv()
        started.set()
        await release.wait()
        await conn.send(b"finished " + request)

    async with no_leaks():
        server = await opensocket.serve("tcp://127.0.0.1:0", worker)
        conn = await opensocket.connect(server.url)
        await conn.send(b"job")
        await asyncio.wait_for(started.wait(), 5)
        closing = asyncio.create_task(server.close(timeout=5))
        await asyncio.sleep(0)
        with pytest.raises(ConnectionRefused):
            await opensocket.connect(server.url)  # no longer accepting
        release.set()
        assert await conn.recv(timeout=5) == b"finished job"
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert conn.close_code == CloseCode.GOING_AWAY  # finished, while the server goes away
        await asyncio.wait_for(closing, 5)


async def test_close_ends_idle_handlers_at_once_and_delivers_what_was_queued() -> None:
    got: list[bytes] = []
    finished = asyncio.Event()

    async def echo(conn: opensocket.Connection) -> None:
        async for message in conn:  # ends with 'going away' once the server closes
            got.append(message)
            await conn.send(message)
        finished.set()

    async with no_leaks():
        server = await opensocket.serve("tcp://127.0.0.1:0", echo)
        conn = await opensocket.connect(server.url)
        await conn.send(b"last")
        assert await conn.recv(timeout=5) == b"last"
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(server.close(timeout=30), 10)
        assert loop.time() - started < 5  # not the 30 s grace: the idle handler ended
        assert finished.is_set()
        assert got == [b"last"]
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert conn.close_code == CloseCode.GOING_AWAY


@pytest.mark.uvloop
async def test_close_sends_going_away_to_a_handler_that_does_not_finish() -> None:
    cancelled = asyncio.Event()

    async def stubborn(conn: opensocket.Connection) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    # A long close_timeout: shutdown must not wait for it once the connection is closed.
    opts = ProtocolOptions(close_timeout=30)
    async with no_leaks():
        server = await opensocket.serve("tcp://127.0.0.1:0", stubborn, protocol=opts)
        conn = await opensocket.connect(server.url, protocol=opts)
        await asyncio.wait_for(server.close(timeout=0.2), 5)
        assert cancelled.is_set()
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert conn.close_code == CloseCode.GOING_AWAY
        assert conn.close_reason == "server shutting down"
        with pytest.raises(ConnectionClosed) as info:
            await conn.recv(timeout=1)
        assert info.value.code == CloseCode.GOING_AWAY


@pytest.mark.uvloop
async def test_close_rejects_connections_still_in_the_handshake() -> None:
    async with no_leaks():
        server = await opensocket.serve("tcp://127.0.0.1:0", lambda conn: asyncio.sleep(0))
        sock = await raw_connect("127.0.0.1", port_of(server))
        try:
            await asyncio.sleep(0)
            async with asyncio.timeout(5):
                while server.stats.active == 0:
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(server.close(timeout=1), 5)
            frames = close_frames(await read_until_eof(sock))
            assert frames == [(FrameType.ERROR, CloseCode.GOING_AWAY, "server shutting down")]
            assert server.stats.active == 0
        finally:
            sock.close()


async def test_close_is_idempotent_and_serve_forever_returns() -> None:
    async with no_leaks():
        server = await opensocket.serve("tcp://127.0.0.1:0", lambda conn: asyncio.sleep(0))
        forever = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0)
        await server.close()
        await server.close()
        await asyncio.wait_for(forever, 5)


@pytest.mark.parametrize("client_secret", ["shared-secret", b"shared-secret"])
async def test_shared_secret_accepted(client_secret: str | bytes) -> None:
    async with (
        echo_server(secret="shared-secret") as server,
        await opensocket.connect(server.url, secret=client_secret) as conn,
    ):
        await conn.send(b"authenticated")
        assert await conn.recv(timeout=5) == b"authenticated"


async def test_wrong_secret_is_refused_with_clear_errors_on_both_sides() -> None:
    watch = Watch()
    async with echo_server(secret="shared-secret", hooks=watch.hooks) as server:
        with pytest.raises(AuthenticationFailed, match="the shared secrets differ"):
            await opensocket.connect(server.url, secret="other-secret")
        await watch.until(lambda: watch.failed == 1)
        assert isinstance(watch.errors[0], AuthenticationFailed)
        assert "shared secrets differ" in str(watch.errors[0])
        assert server.stats.handshakes_failed == 1
        async with await opensocket.connect(server.url, secret="shared-secret") as conn:
            await conn.send(b"still serving")
            assert await conn.recv(timeout=5) == b"still serving"


async def test_missing_secret_is_explained() -> None:
    async with echo_server(secret="shared-secret") as server:
        with pytest.raises(AuthenticationFailed, match="requires a shared secret"):
            await opensocket.connect(server.url)
    async with echo_server() as server:
        with pytest.raises(AuthenticationFailed, match="did not authenticate itself"):
            await opensocket.connect(server.url, secret="shared-secret")


async def test_refused_connections_get_a_rejection_not_a_reset() -> None:
    limits = ServerLimits(max_connections=1)
    async with echo_server(limits=limits) as server, await opensocket.connect(server.url) as first:
        for _ in range(20):
            with pytest.raises(ConnectionRejected) as info:
                await opensocket.connect(server.url)
            assert info.value.code == CloseCode.CONNECTION_LIMIT
        await first.send(b"first still served")
        assert await first.recv(timeout=5) == b"first still served"


async def test_raw_handshake_helper_completes() -> None:
    async with echo_server() as server:
        sock = await raw_connect("127.0.0.1", port_of(server))
        try:
            core = await hand_handshake(sock)
            assert core.agreement is not None
        finally:
            sock.close()


async def test_a_cancelled_connect_is_not_a_failed_handshake() -> None:
    watch = Watch()
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # never answers the HELLO
        url = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        connecting = asyncio.create_task(opensocket.connect(url, hooks=watch.hooks))
        peer, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)
        try:
            assert await asyncio.wait_for(loop.sock_recv(peer, 2), 5) == b"OS"  # HELLO sent
            connecting.cancel()  # now it waits for the WELCOME
            with pytest.raises(asyncio.CancelledError):
                await connecting
            assert watch.failed == 0
        finally:
            peer.close()
    finally:
        listener.close()
