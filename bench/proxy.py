"""Proxy overhead: `opensocket proxy` next to `socat` as a plain TCP relay, same run.

    python bench/proxy.py                       # 3 rounds of 256 MiB, JSON to bench-proxy.json
    python bench/proxy.py --mb 32 --rounds 1 --json /tmp/proxy.json

Measured, for each path (direct, socat relay, opensocket proxy on uvloop and on asyncio):
- throughput: a Python client sends MB mebibytes (1 MiB writes) to `socat -u TCP-LISTEN
  OPEN:/dev/null` through the path, half-closes, and waits for the EOF that comes back once
  the sink has everything; MB / elapsed.
- round trip: 2000 exchanges of 64 bytes with `socat TCP-LISTEN PIPE` (an echo); median.
The best of the rounds is reported, with ratios to socat (throughput: higher is better;
round trip: lower is better). No fault is set: this is the cost of the relay itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
WAIT = 10.0
CHUNK = 1 << 20
PINGS = 2000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.01)
    raise RuntimeError(f"nothing listens on {port} after {WAIT}s")


@contextmanager
def process(argv: list[str], port: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run a helper process (killed by PID at the end); wait until ``port`` listens."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if port is not None:
            wait_listening(port)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT)


def socat() -> str:
    path = shutil.which("socat")
    if path is None:
        raise SystemExit("socat is required (apt-get install socat)")
    return path


def relay(kind: str, listen: int, upstream: int) -> list[str] | None:
    """The command line of a relay from ``listen`` to ``upstream`` (None: direct)."""
    ours = [sys.executable, "-m", "opensocket", "proxy"]
    ours += [f"tcp://{HOST}:{listen}", f"tcp://{HOST}:{upstream}"]
    return {
        "direct": None,
        "socat": [
            socat(),
            f"TCP-LISTEN:{listen},bind={HOST},reuseaddr,fork",
            f"TCP:{HOST}:{upstream}",
        ],
        "opensocket (uvloop)": ours,
        "opensocket (asyncio)": [*ours, "--no-uvloop"],
    }[kind]


@contextmanager
def path(kind: str, upstream_argv: list[str], upstream: int) -> Iterator[int]:
    """Start the upstream and the relay; yield the port a client dials."""
    with process(upstream_argv, upstream):
        argv = relay(kind, listen := free_port(), upstream)
        if argv is None:
            yield upstream
            return
        with process(argv, listen):
            yield listen


def throughput(kind: str, mib: int) -> float:
    """MiB/s through the path into a sink that closes once it has read everything."""
    upstream = free_port()
    sink = [socat(), "-u", f"TCP-LISTEN:{upstream},bind={HOST},reuseaddr,fork", "OPEN:/dev/null"]
    with path(kind, sink, upstream) as port:
        return _push(port, mib)


def _push(port: int, mib: int) -> float:
    data = b"\0" * CHUNK
    with socket.create_connection((HOST, port), timeout=WAIT * 6) as sock:
        start = time.perf_counter()
        for _ in range(mib):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
        return mib / (time.perf_counter() - start)


def round_trip(kind: str) -> float:
    """Median round trip in microseconds through the path to an echo."""
    upstream = free_port()
    echo = [socat(), f"TCP-LISTEN:{upstream},bind={HOST},reuseaddr,fork", "PIPE"]
    with path(kind, echo, upstream) as port, socket.create_connection((HOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message = b"x" * 64
        times = []
        for _ in range(PINGS):
            start = time.perf_counter()
            sock.sendall(message)
            got = 0
            while got < len(message):
                got += len(sock.recv(4096))
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6


KINDS = ("direct", "socat", "opensocket (uvloop)", "opensocket (asyncio)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="MiB per throughput run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="bench-proxy.json", metavar="FILE")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        rates = [throughput(kind, args.mb) for _ in range(args.rounds)]
        rtts = [round_trip(kind) for _ in range(args.rounds)]
        results[kind] = {"mib_per_s": round(max(rates), 1), "rtt_us": round(min(rtts), 1)}
    ref = results["socat"]
    print(f"{'path':<22} {'MiB/s':>9} {'x socat':>8} {'rtt us':>8} {'x socat':>8}")
    for kind, row in results.items():
        row["throughput_vs_socat"] = round(row["mib_per_s"] / ref["mib_per_s"], 2)
        row["rtt_vs_socat"] = round(row["rtt_us"] / ref["rtt_us"], 2)
        print(
            f"{kind:<22} {row['mib_per_s']:>9.1f} {row['throughput_vs_socat']:>8.2f} "
            f"{row['rtt_us']:>8.1f} {row['rtt_vs_socat']:>8.2f}"
        )
    report = {"mib": args.mb, "rounds": args.rounds, "pings": PINGS, "results": results}
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
