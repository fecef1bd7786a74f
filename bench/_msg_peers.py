"""Peers of the messaging benchmark: opensocket's asyncio pattern sockets (on uvloop) and the
pyzmq equivalents, each run in its own process (see bench/_harness.py).

Scripts shared by both sides:
- push/pull: the sender sends ``count`` messages of ``size`` bytes (or stops at ``cap``
  seconds), then an empty message; the receiver's clock starts at the first message.
- request/reply: the server echoes; an empty request ends it.
- pub/sub: subscribers report ready, the publisher sends when told, every subscriber counts
  what it got until the parent says the publisher is done and nothing came for ``idle`` s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from multiprocessing.connection import Connection as Pipe
from typing import Any

import opensocket
from _harness import HOST, CpuClock, percentiles
from opensocket.aio.messaging import Publisher, Puller, Pusher, Replier, Requester, Subscriber
from opensocket.messaging import HighWaterMark, Policy, PublisherOptions, PullOptions

END = b""
URL = f"tcp://{HOST}:0"
BATCH = 256  # messages per send_many/publish_many call


def run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run on uvloop."""
    return opensocket.run(coro, use_uvloop=True)


def _zmq() -> Any:
    import zmq

    return zmq


# ---- push / pull -----------------------------------------------------------------------------


def os_puller(pipe: Pipe, *, batch: bool, prefetch: int, cap: float, **_: Any) -> dict[str, Any]:
    """Puller binds; ``recv()`` per message, or ``recv_many()`` with ``batch``."""

    async def main() -> dict[str, Any]:
        pull = Puller(PullOptions(prefetch=prefetch))
        pipe.send(("ready", await pull.bind(URL)))
        try:
            if batch:
                first = await pull.recv_many(timeout=cap + 15)
                clock = CpuClock()
                count = len(first) - 1
                while True:
                    got = await pull.recv_many(timeout=cap + 15)
                    count += len(got)
                    if got[-1] == END:
                        break
            else:
                await pull.recv(timeout=cap + 15)
                clock = CpuClock()
                count = 0
                while await pull.recv(timeout=cap + 15) != END:
                    count += 1
                count += 1
            return {"count": count - 1, **clock.stop()}
        finally:
            await pull.close()

    return run(main())


def os_pusher(
    pipe: Pipe, *, address: str, size: int, count: int, cap: float, batch: bool, **_: Any
) -> dict[str, Any]:
    """Pusher connects; ``await send()`` per message, or ``send_many()`` with ``batch``."""

    async def main() -> dict[str, Any]:
        payload = b"x" * size
        push = Pusher()
        await push.connect(address)
        clock = CpuClock()
        deadline = time.perf_counter() + cap
        sent = 0
        send = push.send
        chunk = [payload] * BATCH
        while sent < count and time.perf_counter() < deadline:
            todo = min(BATCH, count - sent)
            if batch:
                await push.send_many(chunk[:todo])
            else:
                for _i in range(todo):
                    await send(payload)
            sent += todo
        await push.send(END)
        undelivered = await push.close(linger=cap + 15)
        return {"sent": sent, "capped": sent < count, "undelivered": undelivered, **clock.stop()}

    return run(main())


# pyzmq push/pull: bench/_other_peers.zmq_receiver / zmq_sender (the foundation benchmark's)

# ---- request / reply -------------------------------------------------------------------------


def os_replier(pipe: Pipe, *, wait: float, **_: Any) -> dict[str, Any]:
    """Replier binds and echoes with a handler; the parent says when to stop."""

    async def main() -> dict[str, Any]:
        served = 0

        async def echo(message: bytes) -> bytes:
            nonlocal served
            served += 1
            return message

        rep = Replier(echo)
        pipe.send(("ready", await rep.bind(URL)))
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_reader(pipe.fileno(), lambda: stop.done() or stop.set_result(None))
        try:
            await asyncio.wait_for(stop, wait)
        finally:
            loop.remove_reader(pipe.fileno())
            await rep.close()
        return {"served": served}

    return run(main())


def os_requester(
    pipe: Pipe, *, address: str, size: int, count: int, warmup: int, cap: float, **_: Any
) -> dict[str, Any]:
    """Round trips with one request outstanding."""

    async def main() -> dict[str, Any]:
        payload = b"x" * size
        req = Requester()
        await req.connect(address)
        clock = time.perf_counter_ns
        deadline = time.perf_counter() + cap
        samples: list[int] = []
        request = req.request
        try:
            for i in range(warmup + count):
                start = clock()
                await request(payload)
                if i >= warmup:
                    samples.append(clock() - start)
                if i & 255 == 0 and time.perf_counter() > deadline:
                    break
        finally:
            await req.close()
        return {"samples": len(samples), **percentiles(samples)}

    return run(main())


def os_pipeliner(
    pipe: Pipe, *, address: str, size: int, count: int, window: int, cap: float, **_: Any
) -> dict[str, Any]:
    """``window`` requests always outstanding (one task each) until ``count`` are answered."""

    async def main() -> dict[str, Any]:
        payload = b"x" * size
        req = Requester()
        await req.connect(address)
        deadline = time.perf_counter() + cap
        done = 0

        async def worker() -> None:
            nonlocal done
            request = req.request
            while done < count and time.perf_counter() < deadline:
                await request(payload)
                done += 1

        clock = CpuClock()
        try:
            await asyncio.gather(*(worker() for _ in range(window)))
            stats = clock.stop()
        finally:
            await req.close()
        return {"count": done, "capped": done < count, **stats}

    return run(main())


def zmq_router(pipe: Pipe, *, wait: float, **_: Any) -> dict[str, Any]:
    """ROUTER echoing ``[identity, body]`` until the parent says stop."""
    zmq = _zmq()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port(f"tcp://{HOST}")
    pipe.send(("ready", f"tcp://{HOST}:{port}"))
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    served = 0
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline and not pipe.poll():
            if not poller.poll(100):
                continue
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                sock.send_multipart(frames)
                served += 1
        return {"served": served}
    finally:
        sock.close(linger=0)
        ctx.term()


def zmq_dealer(
    pipe: Pipe, *, address: str, size: int, count: int, window: int, cap: float, **_: Any
) -> dict[str, Any]:
    """DEALER keeping ``window`` requests outstanding: one new request per reply."""
    zmq = _zmq()
    payload = b"x" * size
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, int((cap + 15.0) * 1000))
    sock.connect(address)
    send, recv = sock.send, sock.recv
    try:
        clock = CpuClock()
        deadline = time.perf_counter() + cap
        for _i in range(window):
            send(payload)
        sent, done = window, 0
        while done < sent:
            recv()
            done += 1
            if sent < count and (done & 255 or time.perf_counter() < deadline):
                send(payload)
                sent += 1
        return {"count": done, "capped": done < count, **clock.stop()}
    finally:
        sock.close(linger=0)
        ctx.term()


# ---- publish / subscribe ---------------------------------------------------------------------


def _sub_result(pipe: Pipe, counts: int, first: float | None, last: float | None) -> dict[str, Any]:
    elapsed = (last - first) if first is not None and last is not None else 0.0
    return {"count": counts, "elapsed": elapsed, "first": first, "last": last}


def os_subscriber(
    pipe: Pipe, *, address: str, idle: float, wait: float, **_: Any
) -> dict[str, Any]:
    """Subscribe to everything; count deliveries with ``recv_many`` until told and idle."""

    async def main() -> dict[str, Any]:
        sub = Subscriber(HighWaterMark(messages=10_000))
        await sub.connect(address)
        await sub.subscribe("", timeout=10)
        pipe.send(("ready", None))
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        loop.add_reader(pipe.fileno(), lambda: finished.done() or finished.set_result(None))
        count, first, last = 0, None, None
        end = time.monotonic() + wait
        try:
            while time.monotonic() < end:
                timeout = idle if finished.done() else 1.0
                try:
                    got = await sub.recv_many(timeout=timeout)
                except opensocket.errors.ReadTimeout:
                    if finished.done():
                        break
                    continue
                last = time.perf_counter()
                if first is None:
                    first = last
                count += len(got)
        finally:
            loop.remove_reader(pipe.fileno())
            await sub.close()
        return _sub_result(pipe, count, first, last)

    return run(main())


def os_publisher(
    pipe: Pipe, *, size: int, count: int, cap: float, subscribers: int, **_: Any
) -> dict[str, Any]:
    """Publisher binds (BLOCK policy: backpressure, nothing dropped); publishes on "go"."""

    async def main() -> dict[str, Any]:
        pub = Publisher(PublisherOptions(hwm=HighWaterMark(messages=1000, policy=Policy.BLOCK)))
        pipe.send(("ready", await pub.bind(URL)))
        loop = asyncio.get_running_loop()
        go = loop.create_future()
        loop.add_reader(pipe.fileno(), lambda: go.done() or go.set_result(pipe.recv()))
        await asyncio.wait_for(go, 30)
        loop.remove_reader(pipe.fileno())
        payload = b"x" * size
        chunk = [payload] * BATCH
        clock = CpuClock()
        deadline = time.perf_counter() + cap
        sent = 0
        while sent < count and time.perf_counter() < deadline:
            todo = min(BATCH, count - sent)
            await pub.publish_many("t", chunk[:todo])
            sent += todo
        undelivered = await pub.close(linger=cap + 15)
        stats = pub.stats
        return {
            "sent": sent,
            "capped": sent < count,
            "undelivered": undelivered,
            "dropped": stats.dropped,
            **clock.stop(),
        }

    return run(main())


def zmq_subscriber(
    pipe: Pipe, *, address: str, idle: float, wait: float, **_: Any
) -> dict[str, Any]:
    """SUB socket (default high-water mark), counting until told and idle."""
    zmq = _zmq()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(address)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    time.sleep(0.3)  # the slow joiner: the subscription must reach the publisher first
    pipe.send(("ready", None))
    count, first, last = 0, None, None
    finished = False
    end = time.monotonic() + wait
    try:
        while time.monotonic() < end:
            finished = finished or pipe.poll()
            if not poller.poll(int((idle if finished else 1.0) * 1000)):
                if finished:
                    break
                continue
            while True:
                try:
                    sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                count += 1
            last = time.perf_counter()
            if first is None:
                first = last
        return _sub_result(pipe, count, first, last)
    finally:
        sock.close(linger=0)
        ctx.term()


def zmq_publisher(
    pipe: Pipe, *, size: int, count: int, cap: float, subscribers: int, **_: Any
) -> dict[str, Any]:
    """PUB socket (default high-water mark: it drops for slow subscribers)."""
    zmq = _zmq()
    payload = b"t" + b"x" * (size - 1)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    port = sock.bind_to_random_port(f"tcp://{HOST}")
    pipe.send(("ready", f"tcp://{HOST}:{port}"))
    try:
        pipe.recv()
        send = sock.send
        clock = CpuClock()
        deadline = time.perf_counter() + cap
        sent = 0
        while sent < count and time.perf_counter() < deadline:
            todo = min(BATCH, count - sent)
            for _i in range(todo):
                send(payload)
            sent += todo
        return {"sent": sent, "capped": sent < count, "undelivered": 0, **clock.stop()}
    finally:
        sock.close(linger=2000)
        ctx.term()
