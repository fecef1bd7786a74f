"""Peers on opensocket's blocking runtime (``opensocket.sync``), same scripts as _aio_peers."""

from __future__ import annotations

import queue
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

from _aio_peers import END, batch_size
from _harness import HOST, BenchError, CpuClock, percentiles

SYNC_IMPORT_FAILED = "opensocket.sync does not import"


def _sync() -> Any:
    try:
        import opensocket.sync
    except ImportError as exc:
        raise BenchError(f"{SYNC_IMPORT_FAILED}: {exc}") from exc
    return opensocket.sync


def sync_available(pipe: Pipe, **_: Any) -> dict[str, Any]:
    """Report whether ``opensocket.sync`` imports and offers connect and serve."""
    sync = _sync()
    missing = [name for name in ("connect", "serve") if not hasattr(sync, name)]
    if missing:
        raise BenchError(f"opensocket.sync lacks {', '.join(missing)}")
    return {"ok": True}


def _serve_once(pipe: Pipe, handler: Any, wait: float) -> dict[str, Any]:
    """Serve with the blocking runtime; return what the first handler returned."""
    sync = _sync()
    results: queue.Queue[tuple[bool, Any]] = queue.Queue()

    def wrapped(conn: Any) -> None:
        try:
            results.put((True, handler(conn)))
        except BaseException as exc:
            results.put((False, exc))
            raise

    server = sync.serve(f"tcp://{HOST}:0", wrapped)
    try:
        pipe.send(("ready", server.url))
        ok, value = results.get(timeout=wait)
    finally:
        server.shutdown(0)
    if not ok:
        raise value
    return dict(value)


def _recv_each(conn: Any) -> dict[str, Any]:
    recv = conn.recv
    message = recv()
    clock = CpuClock()
    count = 0
    while message:
        message = recv()
        count += 1
    return {"count": count - 1 if count else 0, **clock.stop()}


def sync_receiver(pipe: Pipe, *, cap: float, **_: Any) -> dict[str, Any]:
    """Receive framed messages with ``conn.recv()`` per message (blocking runtime)."""
    return _serve_once(pipe, _recv_each, cap + 15.0)


def sync_sender(
    pipe: Pipe, *, address: str, send: str, size: int, count: int, cap: float, **_: Any
) -> dict[str, Any]:
    """Send framed messages with ``send`` per message or ``send_many`` (blocking runtime)."""
    payload = b"x" * size
    conn = _sync().connect(address)
    clock = CpuClock()
    deadline = time.perf_counter() + cap
    sent = 0
    step = 1 if send == "send" else batch_size(size)
    batch = [payload] * step
    send_one, send_many = conn.send, conn.send_many
    while sent < count and time.perf_counter() < deadline:
        todo = min(step, count - sent)
        if send == "send":
            send_one(payload)
        else:
            send_many(batch if todo == step else batch[:todo])
        sent += todo
    conn.send(END)
    conn.close()
    return {"sent": sent, "capped": sent < count, **clock.stop()}


def _echo(conn: Any) -> dict[str, Any]:
    recv, send = conn.recv, conn.send
    served = 0
    while message := recv():
        send(message)
        served += 1
    return {"served": served}


def sync_echo_server(pipe: Pipe, *, wait: float, **_: Any) -> dict[str, Any]:
    """Echo every message back until the end marker (blocking runtime)."""
    return _serve_once(pipe, _echo, wait)


def sync_ping_client(
    pipe: Pipe, *, address: str, size: int, count: int, warmup: int, cap: float, **_: Any
) -> dict[str, Any]:
    """Time request/reply round trips, one outstanding request (blocking runtime)."""
    payload = b"x" * size
    conn = _sync().connect(address)
    send, recv = conn.send, conn.recv
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + cap
    samples: list[int] = []
    for i in range(warmup + count):
        start = clock()
        send(payload)
        recv()
        if i >= warmup:
            samples.append(clock() - start)
        if i & 255 == 0 and time.perf_counter() > deadline:
            break
    send(END)
    conn.close()
    return {"samples": len(samples), **percentiles(samples)}
