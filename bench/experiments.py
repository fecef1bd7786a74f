"""Measure candidate runtime changes before making them, by patching them into the peers.

    python bench/experiments.py latency     # wait_message fast path, write-through send
    python bench/experiments.py stream      # big-payload direct write, client high-water mark
    python bench/experiments.py reads       # 64 KiB messages: bigger reads while a frame is split

Each variant patches the current opensocket classes inside the benchmark's child processes
only (src/ is never touched) and runs the same case as foundation.py, several rounds,
interleaved, printing the best and the median. A variant that src/ adopts becomes the
baseline: delete it here then. The patches reach into private attributes, so a refactor of
aio/_framed.py can break them; they are measuring tools, not code to copy as is.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crc32c import crc32c

import _aio_peers as aio
import opensocket
from _harness import Case, run_case
from opensocket.aio._framed import Connection, FramedProtocol
from opensocket.protocol.connection import State
from opensocket.protocol.frame import CHECKSUM, DATA, HEAD, MAGIC_VERSION, TAIL

CLOSED = State.CLOSED
BIG = 256 * 1024


async def _wait_message_fast(self: FramedProtocol, timeout: float | None) -> None:
    """wait_message without asyncio.timeout() and asyncio.shield() when there is no timeout."""
    if self.core.state is CLOSED:
        raise self.core.closed_exception()
    waiter = self._waiter
    if waiter is None or waiter.done():
        waiter = self._waiter = self.loop.create_future()
    if timeout is None:
        await waiter
        return
    async with asyncio.timeout(timeout):
        await asyncio.shield(waiter)


async def _send_write_through(self: Connection, message: Any) -> None:
    """send that hands the frame to the transport at once instead of at the next iteration."""
    self._core.send(message)
    self._proto.flush()
    if self._proto._write_paused:
        await self._proto.drain()


_ORIGINAL_SEND = Connection.send


async def _send_big_direct(self: Connection, message: Any) -> None:
    """send that writes a big payload straight to the transport instead of copying it into
    the core's output buffer first (the header is built here the way the core builds it)."""
    size = len(message)
    if size < BIG:
        await _ORIGINAL_SEND(self, message)
        return
    proto = self._proto
    proto.flush()
    tail = TAIL.pack(DATA, CHECKSUM, 0, size)
    assert proto.transport is not None
    proto.transport.write(HEAD.pack(MAGIC_VERSION, crc32c(message, crc32c(tail))) + tail)
    proto.transport.write(message)
    self._core.messages_out += 1
    if proto._write_paused:
        await proto.drain()


def _patch_high_water() -> None:
    """Give client connections the server's 4 MiB write high-water mark (asyncio: 64 KiB)."""
    original = opensocket.connect

    async def connect(url: str, **kwargs: Any) -> Any:
        conn = await original(url, **kwargs)
        conn._proto.transport.set_write_buffer_limits(high=4 << 20)
        return conn

    opensocket.connect = connect  # type: ignore[assignment]


def _patch_min_read() -> None:
    """While a frame is split across reads, read up to 256 KiB past it, not 64 KiB."""
    from opensocket.protocol import decoder

    decoder.MIN_READ = 256 * 1024  # type: ignore[misc]


PATCHES: dict[str, Callable[[], None]] = {
    "min-read-256k": _patch_min_read,
    "fast-wait": lambda: setattr(FramedProtocol, "wait_message", _wait_message_fast),
    "write-through": lambda: setattr(Connection, "send", _send_write_through),
    "big-direct": lambda: setattr(Connection, "send", _send_big_direct),
    "client-hwm": _patch_high_water,
}


def _apply(variant: str) -> None:
    for name in variant.split("+"):
        if name != "base":
            PATCHES[name]()


def _patched(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def peer(pipe: Any, *, variant: str, **params: Any) -> dict[str, Any]:
        _apply(variant)
        return fn(pipe, **params)

    peer.__name__ = fn.__name__
    return peer


def latency(rounds: int) -> None:
    """Request/reply p50 on both loops, with and without the latency candidates."""
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for loop in ("default", "uvloop"):
            for variant in ("base", "fast-wait", "fast-wait+write-through"):
                params: dict[str, Any] = {"loop": loop, "variant": variant, "size": 64}
                params |= {"count": 10_000, "warmup": 1_000, "cap": 10.0, "wait": 30.0}
                server, client = _patched(aio.os_echo_server), _patched(aio.os_ping_client)
                _, got = run_case(Case(server, client, params, pin=sorted(_cpus())[-1]))
                results.setdefault(f"{loop:8} {variant}", []).append(got["p50_us"])
    for name, values in results.items():
        print(
            f"{name:40} p50 best {min(values):6.1f} µs   median {statistics.median(values):6.1f} µs"
        )


def stream(rounds: int) -> None:
    """1 MiB messages, with and without the big-payload candidates."""
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for variant in ("base", "client-hwm", "big-direct", "client-hwm+big-direct"):
            params: dict[str, Any] = {"loop": "default", "recv": "recv", "send": "send"}
            params["variant"] = variant
            params |= {"size": 1 << 20, "count": 1024, "cap": 20.0}
            server, client = _patched(aio.os_receiver), _patched(aio.os_sender)
            rx, tx = run_case(Case(server, client, params, timeout=60.0))
            rate = rx["count"] / rx["elapsed"] * (1 << 20) / 1e9
            results.setdefault(variant, []).append(rate)
            print(
                f"  {variant:24} {rate:5.2f} GB/s  rx CPU {rx['cpu']:.0%}  tx CPU {tx['cpu']:.0%}"
                f"  other load {tx['other_load']:.2f}"
            )
    for name, values in results.items():
        print(f"{name:26} best {max(values):5.2f} GB/s   median {statistics.median(values):5.2f}")


def reads(rounds: int) -> None:
    """One-way 64 KiB messages, await recv() per message, with and without bigger reads."""
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for variant in ("base", "min-read-256k"):
            params: dict[str, Any] = {"loop": "default", "recv": "recv", "send": "many"}
            params |= {"variant": variant, "size": 65536, "count": 30_000, "cap": 8.0}
            server, client = _patched(aio.os_receiver), _patched(aio.os_sender)
            rx, tx = run_case(Case(server, client, params, timeout=60.0))
            rate = rx["count"] / rx["elapsed"]
            results.setdefault(variant, []).append(rate)
            print(
                f"  {variant:16} {rate:9,.0f} msgs/s  rx CPU {rx['cpu']:.0%}  tx CPU "
                f"{tx['cpu']:.0%}  other load {tx['other_load']:.2f}"
            )
    for name, values in results.items():
        mid = statistics.median(values)
        print(f"{name:18} best {max(values):9,.0f} msgs/s   median {mid:9,.0f}")


def _cpus() -> set[int]:
    import os

    return os.sched_getaffinity(0)


def main(argv: list[str] | None = None) -> int:
    """Run one experiment."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment", choices=("latency", "stream", "reads"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    {"latency": latency, "stream": stream, "reads": reads}[args.experiment](args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
