"""Load-generator processes of bench/chat.py (each forked by ``_harness.Peer``, on uvloop).

A fan-out generator connects its share of the room's clients, reports ``ready``, and on
``go`` starts its senders (generator 0 holds them all). Senders keep at most ``window``
messages each in flight (sent and not yet echoed back to the sender) or, with ``rate``, pace
a fixed total rate. After the window closes every generator reports how many it sent, then
waits until each of its clients has every message (``expect``) or the drain time is up, and
returns counts, latency samples and its own CPU use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from multiprocessing.connection import Connection as Pipe
from typing import Any

import uvloop

from _chat_wire import ROOM, ChatClient, Stats, marker_text, now_ns, open_client

MAX_SAMPLES = 3_000_000  # latency samples a generator hands back (every k-th beyond that)
DRAIN = 10.0  # seconds to wait for the last deliveries after the send window


async def _command(pipe: Pipe, timeout: float) -> Any:
    """The parent's next command (the pipe is read in a thread: the loop keeps running)."""
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, pipe.poll, timeout):
        raise TimeoutError("no command from the parent within the time limit")
    return pipe.recv()


async def _connect_all(
    specs: list[tuple[str, Stats]],
    kind: str,
    host: str,
    port: int,
    concurrency: int,
    timeout: float,
    room_of: Any = None,
) -> tuple[list[ChatClient], list[str]]:
    """Open every client, ``concurrency`` handshakes at a time; return clients and errors."""
    gate = asyncio.Semaphore(concurrency)
    errors: list[str] = []

    async def one(i: int, nick: str, stats: Stats) -> ChatClient | None:
        room = room_of(i) if room_of else ROOM
        async with gate:
            try:
                return await open_client(kind, host, port, nick, room, stats, timeout)
            except (OSError, ConnectionError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return None

    got = await asyncio.gather(*(one(i, nick, st) for i, (nick, st) in enumerate(specs)))
    return [c for c in got if c is not None], errors


async def _send_window(client: ChatClient, sid: int, window: int, end: int, size: int) -> int:
    stats = client.stats
    wake = stats.wake
    assert wake is not None
    sent = 0
    while now_ns() < end and client.closed is None:
        if sent - stats.own < window:
            client.say(marker_text(sid, size))
            sent += 1
            continue
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), 1.0)
    return sent


async def _send_rate(
    client: ChatClient, sid: int, per_s: float, end: int, size: int, cap: int
) -> int:
    stats = client.stats
    interval = 1e9 / per_s
    due = float(now_ns())
    sent = 0
    while due < end and client.closed is None:
        delay = (due - now_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        if sent - stats.own < cap:  # a hub that cannot keep up is not flooded without bound
            client.say(marker_text(sid, size))
            sent += 1
        due += interval
    return sent


async def _fanout(pipe: Pipe, p: dict[str, Any]) -> dict[str, Any]:
    first, count, senders = p["first"], p["count"], p["senders"]
    specs = []
    for i in range(first, first + count):
        tag = f" s{i}x ".encode() if i < senders else None
        specs.append((f"c{i}", Stats(i % p["sample_every"] == 0, tag)))
    started = time.monotonic()
    clients, errors = await _connect_all(
        specs, p["kind"], p["host"], p["port"], p["concurrency"], p["timeout"]
    )
    pipe.send(
        ("ready", {"connected": len(clients), "errors": errors[:5],
                   "setup_s": time.monotonic() - started})
    )  # fmt: skip
    if len(clients) < count:
        return {"error": f"{count - len(clients)} clients failed to join: {errors[:3]}"}
    while True:  # one round per "go"; "done" ends (the clients stay joined between rounds)
        command = await _command(pipe, 120.0)
        if command[0] == "done":
            break
        _, start, end = command
        pipe.send(("round", await _round(pipe, p, clients, start, end)))
    for c in clients:
        c.close()
    return {"closed": sum(1 for c in clients if c.closed is not None)}


async def _round(
    pipe: Pipe, p: dict[str, Any], clients: list[ChatClient], start: int, end: int
) -> dict[str, Any]:
    for c in clients:
        c.stats.reset()
    first = p["first"]
    await asyncio.sleep(max(0.0, (start - now_ns()) / 1e9))
    cpu0, wall0 = time.process_time(), time.monotonic()
    mine = [c for c in clients if c.stats.own_tag is not None]
    if p["rate"]:
        per = p["rate"] / p["senders"]
        jobs = [_send_rate(c, first + k, per, end, p["size"], 1000) for k, c in enumerate(mine)]
    else:
        jobs = [_send_window(c, first + k, p["window"], end, p["size"]) for k, c in enumerate(mine)]
    sent = sum(await asyncio.gather(*jobs))
    pipe.send(("sent", sent))
    _, total = await _command(pipe, 60.0)
    deadline = time.monotonic() + DRAIN
    while time.monotonic() < deadline and any(
        c.stats.count < total and c.closed is None for c in clients
    ):
        await asyncio.sleep(0.05)
    return _fanout_result(clients, total, cpu0, wall0)


def _fanout_result(
    clients: list[ChatClient], total: int, cpu0: float, wall0: float
) -> dict[str, Any]:
    lat = array("q")
    for c in clients:
        if c.stats.lat is not None:
            lat.extend(c.stats.lat)
    if len(lat) > MAX_SAMPLES:
        lat = lat[:: len(lat) // MAX_SAMPLES + 1]
    counts = [c.stats.count for c in clients]
    closed = [c.closed for c in clients if c.closed is not None]
    return {
        "delivered": sum(counts),
        "expected": total * len(clients),
        "min_count": min(counts),
        "max_count": max(counts),
        "last_ns": max(c.stats.last_ns for c in clients),
        "lat": lat.tobytes(),
        "cpu_s": time.process_time() - cpu0,
        "wall_s": time.monotonic() - wall0,
        "closed": len(closed),
        "closed_reasons": sorted(set(closed))[:3],
    }


def fanout_peer(pipe: Pipe, **params: Any) -> dict[str, Any]:
    """A fan-out generator process (see the module docstring)."""
    return uvloop.run(_fanout(pipe, params))


async def _idle(pipe: Pipe, p: dict[str, Any]) -> dict[str, Any]:
    first, count, room_size = p["first"], p["count"], p["room_size"]
    specs = [(f"i{i}", Stats(False, None)) for i in range(first, first + count)]
    started = time.monotonic()
    clients, errors = await _connect_all(
        specs,
        "native",
        p["host"],
        p["port"],
        p["concurrency"],
        p["timeout"],
        room_of=lambda i: f"r{(first + i) // room_size}",
    )
    pipe.send(
        ("ready", {"connected": len(clients), "failed": count - len(clients),
                   "errors": sorted(set(errors))[:5], "setup_s": time.monotonic() - started})
    )  # fmt: skip
    await _command(pipe, p["hold"])
    alive = sum(1 for c in clients if c.closed is None)
    for c in clients:
        c.close()
    return {"alive": alive, "connected": len(clients)}


def idle_peer(pipe: Pipe, **params: Any) -> dict[str, Any]:
    """An idle-connections generator: opens clients, holds them until told to stop."""
    return uvloop.run(_idle(pipe, params))


async def _fresh(p: dict[str, Any]) -> dict[str, Any]:
    start = time.monotonic()
    try:
        client = await open_client(
            p["kind"], p["host"], p["port"], "fresh1", "fresh", Stats(False, None), p["timeout"]
        )
        joined = time.monotonic()
        client.ping()
        assert client.pong is not None  # type: ignore[attr-defined]
        await asyncio.wait_for(client.pong, p["timeout"])  # type: ignore[attr-defined]
        client.close()
    except (OSError, ConnectionError, TimeoutError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    done = time.monotonic()
    return {"ok": True, "join_ms": (joined - start) * 1e3, "ping_ms": (done - joined) * 1e3}


def fresh_peer(pipe: Pipe, **params: Any) -> dict[str, Any]:
    """One new client: connect, hello, join, ping; how long each took."""
    del pipe
    return uvloop.run(_fresh(params))
