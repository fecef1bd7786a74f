"""Per-message cost of the sans-IO core, in-process (no sockets, no event loop).

    python bench/core_micro.py            # about 20 s
    python bench/core_micro.py --quick

Times the real ``FramedConnection`` (encode with ``send``/``send_many``, decode with
``get_buffer``/``buffer_updated``) next to candidate rewrites of the same hot loops that live
only in this file (the candidates skip the core's state and size checks, so they are floors
for what a rewrite can reach), so a change to the core can be judged by its ns per message
before it is made. Numbers are the best of several rounds (the least disturbed by other
processes).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from crc32c import crc32c
from rich.console import Console
from rich.table import Table

from opensocket.options import ProtocolOptions
from opensocket.protocol.connection import FramedConnection, Role, State
from opensocket.protocol.decoder import new_scratch
from opensocket.protocol.frame import CHECKSUM, DATA, HEAD, HEADER, MAGIC_VERSION, TAIL

CHUNK = 256 * 1024  # one read's worth of frames (the size of the loop's scratch buffer)


def open_pair(checksum: str) -> tuple[FramedConnection, FramedConnection]:
    """A client and a server core, handshake done, sharing nothing."""
    opts = ProtocolOptions(checksum=checksum)  # type: ignore[arg-type]
    client = FramedConnection(Role.CLIENT, opts, now=0.0, scratch=new_scratch())
    server = FramedConnection(Role.SERVER, opts, now=0.0, scratch=new_scratch())
    for _ in range(4):
        if data := client.data_to_send():
            server.receive_data(bytes(data), 0.0)
        if data := server.data_to_send():
            client.receive_data(bytes(data), 0.0)
    assert client.state is State.OPEN
    assert server.state is State.OPEN
    client.events()
    server.events()
    return client, server


def best_ns(fn: Callable[[], int], rounds: int) -> float:
    """Best ns per message over ``rounds`` calls of ``fn`` (which returns its message count)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        count = fn()
        best = min(best, (time.perf_counter_ns() - start) / count)
    return best


# ---- encoding ----------------------------------------------------------------------------


def enc_send(core: FramedConnection, payload: bytes, n: int) -> Callable[[], int]:
    """The core's ``send`` once per message (what ``await conn.send()`` runs)."""

    def run() -> int:
        send = core.send
        for _ in range(n):
            send(payload)
        core.data_to_send()
        return n

    return run


def enc_send_many(core: FramedConnection, payload: bytes, n: int) -> Callable[[], int]:
    """The core's ``send_many`` in batches of 256 (what ``conn.send_many`` runs)."""
    batch = [payload] * 256

    def run() -> int:
        for _ in range(n // 256):
            core.send_many(batch)
        core.data_to_send()
        return (n // 256) * 256

    return run


_TAIL_CRC: dict[int, tuple[bytes, int]] = {}


def encode_cached(out: bytearray, payloads: list[bytes]) -> None:
    """Candidate ``send_many``: one inlined loop; the CRC of the 8 header bytes after the
    checksum depends only on the size for a plain DATA frame, so it is cached per size."""
    cache = _TAIL_CRC
    head = HEAD.pack
    for payload in payloads:
        size = len(payload)
        hit = cache.get(size)
        if hit is None:
            tail = TAIL.pack(DATA, CHECKSUM, 0, size)
            hit = cache[size] = (tail, crc32c(tail))
        out += head(MAGIC_VERSION, crc32c(payload, hit[1]))
        out += hit[0]
        out += payload


def encode_nocrc(out: bytearray, payloads: list[bytes]) -> None:
    """Candidate ``send_many`` on a link without checksums: one pack and two appends."""
    pack = HEADER.pack
    for payload in payloads:
        out += pack(MAGIC_VERSION, 0, DATA, 0, 0, len(payload))
        out += payload


def enc_candidate(
    fn: Callable[[bytearray, list[bytes]], None], payload: bytes, n: int
) -> Callable[[], int]:
    """A candidate encoder in batches of 256."""
    batch = [payload] * 256

    def run() -> int:
        out = bytearray()
        for _ in range(n // 256):
            fn(out, batch)
        return (n // 256) * 256

    return run


# ---- decoding ----------------------------------------------------------------------------


def wire_chunk(sender: FramedConnection, payload: bytes) -> tuple[bytes, int]:
    """About CHUNK bytes of whole frames as ``sender`` encodes them, and their count."""
    count = max(1, CHUNK // (len(payload) + 16))
    sender.send_many([payload] * count)
    return bytes(sender.data_to_send()), count


def dec_core(receiver: FramedConnection, chunk: bytes, count: int, reps: int) -> Callable[[], int]:
    """The core's receive path: copy a read into ``get_buffer``, ``buffer_updated``, take."""

    def run() -> int:
        for _ in range(reps):
            pos = 0
            while pos < len(chunk):
                buf = receiver.get_buffer(-1)
                n = min(len(buf), len(chunk) - pos)
                buf[:n] = chunk[pos : pos + n]
                del buf
                receiver.buffer_updated(n, 0.0)
                pos += n
            receiver.take_messages()
        return count * reps

    return run


def decode_nocrc(view: memoryview, pos: int, end: int, out: list[bytes]) -> int:
    """Candidate decode loop on a link without checksums."""
    unpack = HEADER.unpack_from
    append = out.append
    while end - pos >= 16:
        magic, _crc, ftype, flags, meta_len, body_len = unpack(view, pos)
        stop = pos + 16 + body_len
        if stop > end:
            break
        if magic != MAGIC_VERSION or ftype != DATA or flags or meta_len:
            raise ValueError("slow path: not benchmarked")
        append(bytes(view[pos + 16 : stop]))
        pos = stop
    return pos


def dec_candidate(
    fn: Callable[[memoryview, int, int, list[bytes]], int], chunk: bytes, count: int, reps: int
) -> Callable[[], int]:
    """A candidate decode loop over whole chunks."""
    view = memoryview(bytearray(chunk))

    def run() -> int:
        for _ in range(reps):
            out: list[bytes] = []
            assert fn(view, 0, len(view), out) == len(view)
            assert len(out) == count
        return count * reps

    return run


# ---- main --------------------------------------------------------------------------------


def measure(quick: bool) -> list[tuple[str, str, int, float]]:
    """Every (operation, variant, size) -> ns per message."""
    rounds = 3 if quick else 7
    rows: list[tuple[str, str, int, float]] = []
    for size in (64, 1024, 65536):
        payload = b"x" * size
        n = min(200_000, max(256, (200_000 if quick else 600_000) * 64 // max(size, 64) // 8))
        on_tx, on_rx = open_pair("on")
        off_tx, off_rx = open_pair("off")
        chunk, count = wire_chunk(on_tx, payload)
        chunk_off, count_off = wire_chunk(off_tx, payload)
        reps = max(1, n // count)
        cases: list[tuple[str, str, Callable[[], int]]] = [
            ("encode", "core.send() per message", enc_send(on_tx, payload, n)),
            ("encode", "core.send_many(256)", enc_send_many(on_tx, payload, n)),
            ("encode", "candidate: inlined loop", enc_candidate(encode_cached, payload, n)),
            ("encode", "core.send_many(256), checksum off", enc_send_many(off_tx, payload, n)),
            ("encode", "candidate: no checksum", enc_candidate(encode_nocrc, payload, n)),
            ("decode", "core receive path", dec_core(on_rx, chunk, count, reps)),
            ("decode", "core, checksum off", dec_core(off_rx, chunk_off, count_off, reps)),
            ("decode", "candidate: no checksum",
             dec_candidate(decode_nocrc, chunk_off, count_off, reps)),
        ]  # fmt: skip
        rows += [(op, name, size, best_ns(fn, rounds)) for op, name, fn in cases]
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print ns per message for every operation and variant."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    table = Table(title="sans-IO core: ns per message (best round; lower is better)")
    for name in ("operation", "variant", "size"):
        table.add_column(name)
    table.add_column("ns/msg", justify="right")
    table.add_column("msgs/s", justify="right")
    for op, variant, size, ns in measure(args.quick):
        table.add_row(op, variant, f"{size:,} B", f"{ns:,.0f}", f"{1e9 / ns:,.0f}")
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
