"""opensocket bench next to iperf3, same run, alternating: TCP throughput and UDP packets/s.

Each side runs as separate client and server processes (as iperf3 does), on loopback:

* TCP throughput at the same write size (``-l 128K`` and ``-l 1M``); target: within 10%.
* UDP datagrams received per second with ``-b 0 -l 1400``; target: at least 0.85x iperf3.
  Twice: as the issue says (our senders batch datagrams with UDP GSO, receivers read GRO
  batches) and strictly (``--no-gso``: one datagram per system call, against ``iperf3 -w 4M``
  since we always ask for 4 MiB UDP socket buffers).

Usage::

    python bench/throughput.py                      # 5 s per run, 3 rounds
    python bench/throughput.py -t 2 --rounds 1 --json out.json

iperf3 servers are started with ``-1`` on a free loopback port and killed by PID if still there.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

HOST = "127.0.0.1"
UDP = ["-u", "-b", "0", "-l", "1400"]
# (name, kind, our flags, iperf3's flags). The last row is the strict one: one datagram per
# system call on both sides and 4 MiB socket buffers on both (ours always asks for 4 MiB).
CASES = (
    ("tcp -l 128K", "tcp", ["-l", "128K"], ["-l", "128K"]),
    ("tcp -l 1M", "tcp", ["-l", "1M"], ["-l", "1M"]),
    ("udp -b 0 -l 1400", "udp", UDP, UDP),
    ("udp no-gso / -w 4M", "udp", [*UDP, "--no-gso"], [*UDP, "-w", "4M"]),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early: {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def run_iperf3(kind: str, flags: list[str], seconds: float) -> float:
    """iperf3's figure: receiver bits/s (TCP) or datagrams received per second (UDP)."""
    port = free_port()
    server = subprocess.Popen(
        ["iperf3", "-s", "-1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(0.3)  # iperf3 -1 serves exactly one connection: do not probe it
        out = subprocess.run(
            ["iperf3", "-c", HOST, "-p", str(port), "-t", str(seconds), "-J", *flags],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=True,
        ).stdout
    finally:
        stop(server)
    end = json.loads(out)["end"]
    if kind == "tcp":
        return float(end["sum_received"]["bits_per_second"])
    total = end["sum"]
    return (total["packets"] - total["lost_packets"]) / total["seconds"]


def run_ours(kind: str, flags: list[str], seconds: float, url: str) -> float:
    """opensocket bench's figure, measured the same way."""
    out = subprocess.run(
        [sys.executable, "-m", "opensocket", "bench", url, "-t", str(seconds), "--json", *flags],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    receiver = json.loads(out)["end"]["receiver"]
    if kind == "tcp":
        return float(receiver["bits_per_second"])
    return float(receiver["packets"]) / float(receiver["seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-t", "--time", type=float, default=5.0, help="seconds per run (5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--json", metavar="FILE", help="write the results here too")
    args = parser.parse_args()
    if shutil.which("iperf3") is None:
        print("iperf3 is not installed (apt install iperf3)", file=sys.stderr)
        return 1
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "opensocket", "bench", "serve", "--listen", f"tcp://{HOST}:{port}"],
        stdout=subprocess.DEVNULL,
        text=True,
    )
    samples: dict[str, dict[str, list[float]]] = {n: {"ours": [], "iperf3": []} for n, *_ in CASES}
    try:
        wait_port(port, server)
        for _ in range(args.rounds):
            for name, kind, ours, theirs in CASES:
                url = f"tcp://{HOST}:{port}"
                samples[name]["ours"].append(run_ours(kind, ours, args.time, url))
                samples[name]["iperf3"].append(run_iperf3(kind, theirs, args.time))
    finally:
        stop(server)
    report = build_report(samples, args)
    print_table(report)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


def build_report(samples: dict[str, dict[str, list[float]]], args: Any) -> dict[str, Any]:
    rows = []
    for name, kind, ours_flags, iperf3_flags in CASES:
        ours = statistics.median(samples[name]["ours"])
        theirs = statistics.median(samples[name]["iperf3"])
        rows.append(
            {
                "case": name,
                "unit": "bits/s" if kind == "tcp" else "datagrams received/s",
                "ours": ours,
                "iperf3": theirs,
                "ratio": ours / theirs if theirs else None,
                "target": ">= 0.90" if kind == "tcp" else ">= 0.85",
                "opensocket_flags": ours_flags,
                "iperf3_flags": iperf3_flags,
                "samples": samples[name],
            }
        )
    return {
        "seconds_per_run": args.time,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "rows": rows,
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"{'case':<20} {'opensocket':>16} {'iperf3':>16} {'ratio':>7}  target")
    for row in report["rows"]:
        scale, unit = (1e9, "Gbit/s") if row["unit"] == "bits/s" else (1e3, "kpkt/s")
        print(
            f"{row['case']:<20} {row['ours'] / scale:>9.2f} {unit:<6} "
            f"{row['iperf3'] / scale:>9.2f} {unit:<6} {row['ratio']:>7.2f}  {row['target']}"
        )


if __name__ == "__main__":
    sys.exit(main())
