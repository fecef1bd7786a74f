"""Reference peers: pyzmq PUSH/PULL and REQ/REP, and plain blocking sockets (the ceiling).

Each follows the same script as the asyncio peers (see _aio_peers): an empty message ends a
throughput run, and the receiver's clock starts once the first message is in hand.
"""

from __future__ import annotations

import socket
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

from _harness import HOST, CpuClock, percentiles

END = b""


def _zmq() -> Any:
    import zmq

    return zmq


# ---- pyzmq ---------------------------------------------------------------------------------


def zmq_receiver(pipe: Pipe, *, cap: float, **_: Any) -> dict[str, Any]:
    """PULL socket, one blocking ``recv()`` per message."""
    zmq = _zmq()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVTIMEO, int((cap + 15.0) * 1000))
    port = sock.bind_to_random_port(f"tcp://{HOST}")
    pipe.send(("ready", f"tcp://{HOST}:{port}"))
    try:
        recv = sock.recv
        message = recv()
        clock = CpuClock()
        count = 0
        while message:
            message = recv()
            count += 1
        return {"count": count - 1 if count else 0, **clock.stop()}
    finally:
        sock.close(linger=0)
        ctx.term()


def zmq_sender(
    pipe: Pipe, *, address: str, size: int, count: int, cap: float, **_: Any
) -> dict[str, Any]:
    """PUSH socket, one blocking ``send()`` per message (default high-water marks)."""
    zmq = _zmq()
    payload = b"x" * size
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDTIMEO, int((cap + 15.0) * 1000))
    sock.connect(address)
    try:
        send = sock.send
        clock = CpuClock()
        deadline = time.perf_counter() + cap
        sent = 0
        while sent < count and time.perf_counter() < deadline:
            todo = min(1024, count - sent)
            for _i in range(todo):
                send(payload)
            sent += todo
        send(END)
        return {"sent": sent, "capped": sent < count, **clock.stop()}
    finally:
        sock.close(linger=int((cap + 15.0) * 1000))
        ctx.term()


def zmq_rep_server(pipe: Pipe, *, wait: float, **_: Any) -> dict[str, Any]:
    """REP socket echoing every request until the empty end marker."""
    zmq = _zmq()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.RCVTIMEO, int(wait * 1000))
    port = sock.bind_to_random_port(f"tcp://{HOST}")
    pipe.send(("ready", f"tcp://{HOST}:{port}"))
    served = 0
    try:
        while message := sock.recv():
            sock.send(message)
            served += 1
        sock.send(END)
        return {"served": served}
    finally:
        sock.close(linger=1000)
        ctx.term()


def zmq_req_client(
    pipe: Pipe, *, address: str, size: int, count: int, warmup: int, cap: float, **_: Any
) -> dict[str, Any]:
    """REQ socket timing round trips, one outstanding request."""
    zmq = _zmq()
    payload = b"x" * size
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, int((cap + 15.0) * 1000))
    sock.connect(address)
    send, recv = sock.send, sock.recv
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + cap
    samples: list[int] = []
    try:
        for i in range(warmup + count):
            start = clock()
            send(payload)
            recv()
            if i >= warmup:
                samples.append(clock() - start)
            if i & 255 == 0 and time.perf_counter() > deadline:
                break
        send(END)
        recv()
        return {"samples": len(samples), **percentiles(samples)}
    finally:
        sock.close(linger=0)
        ctx.term()


# ---- plain blocking sockets ----------------------------------------------------------------


def _listen() -> socket.socket:
    lsock = socket.socket()
    lsock.bind((HOST, 0))
    lsock.listen(1)
    return lsock


def raw_receiver(pipe: Pipe, *, size: int, cap: float, **_: Any) -> dict[str, Any]:
    """Read the stream with ``recv_into`` into one buffer until EOF (no framing at all)."""
    with _listen() as lsock:
        lsock.settimeout(15.0)
        pipe.send(("ready", lsock.getsockname()))
        sock, _ = lsock.accept()
    with sock:
        sock.settimeout(cap + 15.0)
        buf = memoryview(bytearray(max(size, 1 << 20)))
        first = sock.recv_into(buf)
        clock = CpuClock()
        total = 0
        while n := sock.recv_into(buf):
            total += n
        stats = clock.stop()
    return {"count": total // size, "bytes": total + first, **stats}


def raw_sender(
    pipe: Pipe, *, address: tuple[str, int], size: int, count: int, cap: float, **_: Any
) -> dict[str, Any]:
    """``sendall`` each message's bytes, then close (the receiver counts bytes)."""
    payload = b"x" * size
    with socket.create_connection(address, timeout=cap + 15.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clock = CpuClock()
        deadline = time.perf_counter() + cap
        sent = 0
        while sent < count and time.perf_counter() < deadline:
            sock.sendall(payload)
            sent += 1
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    return {"sent": sent, "capped": sent < count, **clock.stop()}


def _read_exact(sock: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            return False
        got += n
    return True


def raw_echo_server(pipe: Pipe, *, size: int, wait: float, **_: Any) -> dict[str, Any]:
    """Echo fixed-size messages over a plain blocking socket until EOF."""
    with _listen() as lsock:
        lsock.settimeout(15.0)
        pipe.send(("ready", lsock.getsockname()))
        sock, _ = lsock.accept()
    served = 0
    with sock:
        sock.settimeout(wait)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        view = memoryview(bytearray(size))
        while _read_exact(sock, view):
            sock.sendall(view)
            served += 1
    return {"served": served}


def raw_ping_client(
    pipe: Pipe,
    *,
    address: tuple[str, int],
    size: int,
    count: int,
    warmup: int,
    cap: float,
    **_: Any,
) -> dict[str, Any]:
    """Time fixed-size round trips over a plain blocking socket."""
    payload = b"x" * size
    view = memoryview(bytearray(size))
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + cap
    samples: list[int] = []
    with socket.create_connection(address, timeout=cap + 15.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(warmup + count):
            start = clock()
            sock.sendall(payload)
            _read_exact(sock, view)
            if i >= warmup:
                samples.append(clock() - start)
            if i & 255 == 0 and time.perf_counter() > deadline:
                break
    return {"samples": len(samples), **percentiles(samples)}
