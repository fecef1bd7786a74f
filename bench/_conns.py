"""Connection benchmarks: connect-handshake-close rate, and server memory per idle connection."""

from __future__ import annotations

import asyncio
import functools
import gc
import time
import tracemalloc
from multiprocessing.connection import Connection as Pipe
from typing import Any

import opensocket
from _aio_peers import run
from _harness import HOST, BenchError, CpuClock, Peer, rss_kib

LIMITS = opensocket.ServerLimits(max_connections=100_000, max_connections_per_ip=100_000)


async def _idle(conn: opensocket.Connection) -> None:
    async for _ in conn:  # a typical handler: read until the peer closes
        pass


def _quiet_cancelled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Drop the noise asyncio streams log for handler tasks cancelled at shutdown (3.11)."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


class _NaiveServer:
    """An asyncio streams server whose handlers wait for EOF; ``close`` waits for them."""

    def __init__(self) -> None:
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        try:
            await reader.read()
        finally:
            self.writers.discard(writer)
            self.tasks.discard(task)
            writer.close()

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_cancelled)
        self.server = await asyncio.start_server(self.handle, HOST, 0, backlog=1024)
        return f"tcp://{HOST}:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5.0)


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    return host, int(port)


class _Tracer:
    """Answers the parent's "snap" commands with tracemalloc snapshots (when tracing)."""

    def __init__(self, pipe: Pipe, trace: bool) -> None:
        self.pipe = pipe
        self.first: Any = None
        if trace:
            tracemalloc.start(1)

    def snap(self, per: int) -> None:
        gc.collect()
        if not tracemalloc.is_tracing():
            self.pipe.send(("snapped", []))
            return
        shot = tracemalloc.take_snapshot()
        if self.first is None:
            self.first = shot
            self.pipe.send(("snapped", []))
            return
        stats = shot.compare_to(self.first, "lineno")
        top = [(str(st.traceback[0]), st.size_diff / per, st.count_diff / per) for st in stats[:30]]
        total = sum(st.size_diff for st in stats) / per
        self.pipe.send(("snapped", [("total", total, 0.0), *top]))


async def _serve_until_stopped(
    pipe: Pipe, impl: str, wait: float, trace: bool = False
) -> dict[str, Any]:
    """Serve idle connections until the parent writes "stop" (or ``wait`` runs out)."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    tracer = _Tracer(pipe, trace)

    def on_command() -> None:
        command = pipe.recv()
        if isinstance(command, tuple) and command[0] == "snap":
            tracer.snap(command[1])
        elif not stop.done():
            stop.set_result(None)

    loop.add_reader(pipe.fileno(), on_command)
    if impl == "opensocket":
        server: Any = await opensocket.serve(f"tcp://{HOST}:0", _idle, limits=LIMITS)
        url = server.url
    else:
        server = _NaiveServer()
        url = await server.start()
    pipe.send(("ready", url))
    clock = CpuClock()
    try:
        await asyncio.wait_for(stop, wait)
    finally:
        loop.remove_reader(pipe.fileno())
    result = clock.stop()
    if impl == "opensocket":
        stats = server.stats
        result |= {"accepted": stats.accepted, "handshakes_failed": stats.handshakes_failed}
        await server.close(0)
    else:
        await server.close()
    return result


def idle_server(
    pipe: Pipe, *, impl: str, loop: str, wait: float, trace: bool = False, **_: Any
) -> dict[str, Any]:
    """A server whose handlers wait for the peer to close (opensocket or asyncio streams)."""
    return run(_serve_until_stopped(pipe, impl, wait, trace), loop)


class _NaiveConn:
    """An asyncio streams connection with the two methods the clients below use."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def _connect(impl: str, address: str) -> Any:
    if impl == "opensocket":
        return await opensocket.connect(address)
    _, writer = await asyncio.open_connection(*_host_port(address))
    return _NaiveConn(writer)


async def _churn(impl: str, address: str, count: int, cap: float, workers: int) -> dict[str, Any]:
    clock = CpuClock()
    deadline = time.perf_counter() + cap
    done = 0
    failures = 0

    async def worker() -> None:
        nonlocal done, failures
        while done + failures < count and time.perf_counter() < deadline:
            try:
                conn = await _connect(impl, address)
                await conn.close()
                done += 1
            except (opensocket.OpenSocketError, OSError):
                failures += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return {"connections": done, "failures": failures, **clock.stop()}


def churn_client(
    pipe: Pipe,
    *,
    impl: str,
    address: str,
    loop: str,
    count: int,
    cap: float,
    workers: int,
    **_: Any,
) -> dict[str, Any]:
    """Connect, complete the handshake, close; ``workers`` at a time, bounded by count and time."""
    return run(_churn(impl, address, count, cap, workers), loop)


class _LeanClient(asyncio.Protocol):
    """A minimal framed client for measuring a server: sends a recorded HELLO, answers the
    WELCOME with CLOSE, and is done when the server closes. No opensocket code runs here."""

    def __init__(self, hello: bytes, close: bytes, done: asyncio.Future[bool]) -> None:
        self.hello, self.close, self.done = hello, close, done
        self.got = bytearray()
        self.state = 0  # 0: await WELCOME, 1: await CLOSE
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.hello)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.got += data
        while len(self.got) >= 16:
            size = 16 + int.from_bytes(self.got[12:16], "big")
            if len(self.got) < size:
                return
            del self.got[:size]
            if self.state == 0:
                self.state = 1
                assert self.transport is not None
                self.transport.write(self.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.state == 1 and exc is None)


def lean_frames() -> tuple[bytes, bytes]:
    """The HELLO a default client sends (nonce included) and a normal CLOSE frame."""
    from opensocket.protocol.connection import FramedConnection, Role, encode_close
    from opensocket.protocol.frame import FrameType, frame_bytes

    hello = bytes(FramedConnection(Role.CLIENT, now=0.0).data_to_send())
    return hello, frame_bytes(FrameType.CLOSE, encode_close(1000, ""))


async def _lean_churn(address: str, count: int, cap: float, workers: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port = _host_port(address)
    hello, close = lean_frames()
    clock = CpuClock()
    deadline = time.perf_counter() + cap
    done = failures = 0

    async def worker() -> None:
        nonlocal done, failures
        while done + failures < count and time.perf_counter() < deadline:
            finished: asyncio.Future[bool] = loop.create_future()
            try:
                factory = functools.partial(_LeanClient, hello, close, finished)
                await loop.create_connection(factory, host, port)
                ok = await asyncio.wait_for(finished, 10.0)
            except (OSError, TimeoutError):
                ok = False
            done += ok
            failures += not ok

    await asyncio.gather(*(worker() for _ in range(workers)))
    return {"connections": done, "failures": failures, **clock.stop()}


def lean_churn_client(
    pipe: Pipe, *, address: str, count: int, cap: float, workers: int, **_: Any
) -> dict[str, Any]:
    """Connect, handshake and close with a minimal client on uvloop (measures the server)."""
    return run(_lean_churn(address, count, cap, workers), "uvloop")


async def _open_many(impl: str, address: str, count: int, into: list[Any]) -> None:
    gate = asyncio.Semaphore(64)

    async def one() -> None:
        async with gate:
            into.append(await _connect(impl, address))

    await asyncio.gather(*(one() for _ in range(count)))


async def _hold(
    pipe: Pipe, impl: str, address: str, warm: int, count: int, wait: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    conns: list[Any] = []
    await _open_many(impl, address, warm, conns)
    pipe.send(("warm", len(conns)))
    if not await loop.run_in_executor(None, pipe.poll, wait):
        raise BenchError("no go-ahead from the parent")
    pipe.recv()
    clock = CpuClock()
    await _open_many(impl, address, count, conns)
    opened = clock.stop()
    pipe.send(("opened", len(conns) - warm))
    if await loop.run_in_executor(None, pipe.poll, wait):
        pipe.recv()
    await asyncio.wait_for(asyncio.gather(*(c.close() for c in conns)), wait)
    return {"opened_per_s": count / opened["elapsed"]}


def holding_client(
    pipe: Pipe,
    *,
    impl: str,
    address: str,
    loop: str,
    warm: int,
    count: int,
    wait: float,
    **_: Any,
) -> dict[str, Any]:
    """Open ``warm`` connections, then ``count`` more on the parent's word, and hold them."""
    return run(_hold(pipe, impl, address, warm, count, wait), loop)


def idle_memory(
    impl: str, loop: str, warm: int, count: int, wait: float, trace: bool = False
) -> dict[str, Any]:
    """Server RSS growth per idle connection, read from /proc/PID/status.

    With ``trace`` the server also runs tracemalloc and the result lists the allocation
    sites that grew, per connection (tracing costs memory itself: RSS is then not comparable).
    """
    params = {"impl": impl, "loop": loop, "wait": wait, "trace": trace}
    server = Peer(idle_server, params, None)
    client: Peer | None = None
    try:
        deadline = time.monotonic() + wait
        address = server.expect("ready", deadline)
        client_params = {**params, "address": address, "warm": warm, "count": count}
        client = Peer(holding_client, client_params, None)
        client.expect("warm", deadline)
        pid = server.proc.pid
        assert pid is not None
        time.sleep(0.3)  # let the server finish the warm-up handshakes' last callbacks
        before = rss_kib(pid)
        server.send(("snap", count))
        server.expect("snapped", deadline)
        client.send("go")
        opened = client.expect("opened", deadline)
        time.sleep(0.3)
        after = rss_kib(pid)
        server.send(("snap", count))
        sites = server.expect("snapped", deadline)
        client.send("stop")
        result = client.expect("result", deadline)
        server.send("stop")
        server.expect("result", deadline)
    finally:
        if client is not None:
            client.end()
        server.end()
    return {
        "connections": opened,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_conn": (after - before) / opened,
        **result,
        **({"sites": sites} if trace else {}),
    }
