"""asyncio peers: opensocket's asyncio runtime (default loop or uvloop) and a naive baseline.

Every throughput peer follows one script: the server receives, the client sends ``count``
messages of ``size`` bytes (or stops early at ``cap`` seconds) and then an empty message that
marks the end. The receiver's clock starts once the first message (or batch) is in hand, so
only messages received after that point are counted against the elapsed time.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Coroutine
from multiprocessing.connection import Connection as Pipe
from typing import Any

import opensocket
from _harness import HOST, CpuClock, percentiles

END = b""
LEN = struct.Struct(">I")


def run(coro: Coroutine[Any, Any, dict[str, Any]], loop: str) -> dict[str, Any]:
    """Run on the default asyncio loop or on uvloop, through opensocket.run."""
    return opensocket.run(coro, use_uvloop=(loop == "uvloop"))


def batch_size(size: int) -> int:
    """Messages per send_many call: 256, or fewer so a batch stays near 1 MiB."""
    return max(1, min(256, (1 << 20) // max(size, 1)))


async def _serve_until(pipe: Pipe, handler: Any, wait: float, **kwargs: Any) -> dict[str, Any]:
    """Serve, report the URL, and return the handler's result (a dict set on a future)."""
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def wrapped(conn: opensocket.Connection) -> None:
        try:
            result = await handler(conn)
        except BaseException as exc:
            if not done.done():
                done.set_exception(exc)
            raise
        if not done.done():
            done.set_result(result)

    server = await opensocket.serve(f"tcp://{HOST}:0", wrapped, **kwargs)
    pipe.send(("ready", server.url))
    try:
        return await asyncio.wait_for(done, wait)
    finally:
        await server.close(0)


# ---- one-way throughput: opensocket -------------------------------------------------------


async def _recv_each(conn: opensocket.Connection) -> dict[str, Any]:
    recv = conn.recv
    message = await recv()
    clock = CpuClock()
    count = 0
    while message:
        message = await recv()
        count += 1
    return {"count": count - 1 if count else 0, **clock.stop()}


async def _recv_batches(conn: opensocket.Connection) -> dict[str, Any]:
    recv_batch = conn.recv_batch
    batch = await recv_batch()
    clock = CpuClock()
    count = -len(batch)
    batches = 0
    while True:
        count += len(batch)
        batches += 1
        if not batch[-1]:
            return {"count": count - 1, "batches": batches, **clock.stop()}
        batch = await recv_batch()


async def _recv_callback(conn: opensocket.Connection) -> dict[str, Any]:
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    state: dict[str, Any] = {"count": 0, "clock": None, "batches": 0}

    def on_batch(batch: list[bytes]) -> None:
        if state["clock"] is None:
            state["clock"] = CpuClock()
            state["count"] = -len(batch)
        state["count"] += len(batch)
        state["batches"] += 1
        if not batch[-1] and not done.done():
            count = state["count"] - 1
            done.set_result({"count": count, "batches": state["batches"], **state["clock"].stop()})

    conn.set_receiver(on_batch)
    return await done


RECEIVERS = {"recv": _recv_each, "batch": _recv_batches, "callback": _recv_callback}


def os_receiver(pipe: Pipe, *, loop: str, recv: str, cap: float, **_: Any) -> dict[str, Any]:
    """Receive framed messages with opensocket asyncio (recv, batch or callback API)."""
    return run(_serve_until(pipe, RECEIVERS[recv], cap + 15.0), loop)


async def _send_frames(
    address: str, size: int, count: int, cap: float, send: str
) -> dict[str, Any]:
    payload = b"x" * size
    conn = await opensocket.connect(address)
    clock = CpuClock()
    deadline = time.perf_counter() + cap
    sent = 0
    if send == "send":
        send_one = conn.send
        while sent < count and time.perf_counter() < deadline:
            for _ in range(min(1024, count - sent)):
                await send_one(payload)
            sent += min(1024, count - sent)
    else:
        size_of_batch = batch_size(size)
        batch = [payload] * size_of_batch
        while sent < count and time.perf_counter() < deadline:
            todo = min(size_of_batch, count - sent)
            await conn.send_many(batch if todo == size_of_batch else batch[:todo])
            sent += todo
    await conn.send(END)
    await conn.close()
    return {"sent": sent, "capped": sent < count, **clock.stop()}


def os_sender(
    pipe: Pipe, *, address: str, loop: str, send: str, size: int, count: int, cap: float, **_: Any
) -> dict[str, Any]:
    """Send framed messages with opensocket asyncio (``send`` per message or ``send_many``)."""
    return run(_send_frames(address, size, count, cap, send), loop)


# ---- one-way throughput: naive asyncio streams ----------------------------------------------


async def _naive_serve(pipe: Pipe, handler: Any, wait: float) -> dict[str, Any]:
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            result = await handler(reader, writer)
            if not done.done():
                done.set_result(result)
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    pipe.send(("ready", (HOST, port)))
    try:
        return await asyncio.wait_for(done, wait)
    finally:
        server.close()


async def _naive_read(reader: asyncio.StreamReader) -> bytes:
    (size,) = LEN.unpack(await reader.readexactly(4))
    return await reader.readexactly(size) if size else END


async def _naive_recv(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any]:
    message = await _naive_read(reader)
    clock = CpuClock()
    count = 0
    while message:
        message = await _naive_read(reader)
        count += 1
    return {"count": count - 1 if count else 0, **clock.stop()}


def naive_receiver(pipe: Pipe, *, cap: float, **_: Any) -> dict[str, Any]:
    """Receive length-prefixed messages with asyncio streams, readexactly per message."""
    return run(_naive_serve(pipe, _naive_recv, cap + 15.0), "default")


async def _naive_send(
    address: tuple[str, int], size: int, count: int, cap: float
) -> dict[str, Any]:
    payload = b"x" * size
    reader, writer = await asyncio.open_connection(*address)
    clock = CpuClock()
    deadline = time.perf_counter() + cap
    sent = 0
    while sent < count and time.perf_counter() < deadline:
        for _ in range(min(1024, count - sent)):
            writer.write(LEN.pack(size) + payload)
            await writer.drain()
        sent += min(1024, count - sent)
    writer.write(LEN.pack(0))
    await writer.drain()
    await reader.read()  # the server closes once it has seen the end marker
    writer.close()
    return {"sent": sent, "capped": sent < count, **clock.stop()}


def naive_sender(
    pipe: Pipe, *, address: tuple[str, int], size: int, count: int, cap: float, **_: Any
) -> dict[str, Any]:
    """Send length-prefixed messages with asyncio streams, write + drain per message."""
    return run(_naive_send(address, size, count, cap), "default")


# ---- request/reply latency ------------------------------------------------------------------


async def _os_echo(conn: opensocket.Connection) -> dict[str, Any]:
    recv, send = conn.recv, conn.send
    served = 0
    while message := await recv():
        await send(message)
        served += 1
    return {"served": served}


def os_echo_server(pipe: Pipe, *, loop: str, wait: float, **_: Any) -> dict[str, Any]:
    """Echo every message back (opensocket asyncio) until the empty end marker."""
    return run(_serve_until(pipe, _os_echo, wait), loop)


async def _os_ping(address: str, size: int, count: int, warmup: int, cap: float) -> dict[str, Any]:
    payload = b"x" * size
    conn = await opensocket.connect(address)
    send, recv = conn.send, conn.recv
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + cap
    samples: list[int] = []
    for i in range(warmup + count):
        start = clock()
        await send(payload)
        await recv()
        if i >= warmup:
            samples.append(clock() - start)
        if i & 255 == 0 and time.perf_counter() > deadline:
            break
    await send(END)
    await conn.close()
    return {"samples": len(samples), **percentiles(samples)}


def os_ping_client(
    pipe: Pipe, *, address: str, loop: str, size: int, count: int, warmup: int, cap: float, **_: Any
) -> dict[str, Any]:
    """Time request/reply round trips, one outstanding request (opensocket asyncio)."""
    return run(_os_ping(address, size, count, warmup, cap), loop)


async def _naive_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any]:
    served = 0
    while message := await _naive_read(reader):
        writer.write(LEN.pack(len(message)) + message)
        await writer.drain()
        served += 1
    return {"served": served}


def naive_echo_server(pipe: Pipe, *, wait: float, **_: Any) -> dict[str, Any]:
    """Echo length-prefixed messages with asyncio streams."""
    return run(_naive_serve(pipe, _naive_echo, wait), "default")


async def _naive_ping(
    address: tuple[str, int], size: int, count: int, warmup: int, cap: float
) -> dict[str, Any]:
    payload = b"x" * size
    reader, writer = await asyncio.open_connection(*address)
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + cap
    samples: list[int] = []
    for i in range(warmup + count):
        start = clock()
        writer.write(LEN.pack(size) + payload)
        await writer.drain()
        await _naive_read(reader)
        if i >= warmup:
            samples.append(clock() - start)
        if i & 255 == 0 and time.perf_counter() > deadline:
            break
    writer.write(LEN.pack(0))
    await writer.drain()
    await reader.read()
    writer.close()
    return {"samples": len(samples), **percentiles(samples)}


def naive_ping_client(
    pipe: Pipe,
    *,
    address: tuple[str, int],
    size: int,
    count: int,
    warmup: int,
    cap: float,
    **_: Any,
) -> dict[str, Any]:
    """Time round trips over asyncio streams."""
    return run(_naive_ping(address, size, count, warmup, cap), "default")
