"""Full 65,535-port loopback scan: opensocket scan next to ``nmap -sT -p- -T4 -n -Pn``.

    python bench/scan.py                     # 5 rounds, JSON to bench-scan.json
    python bench/scan.py --rounds 1 --json /tmp/scan.json
    python bench/scan.py --no-netns          # on the host's loopback, not a private namespace

Both scanners run in the same run against the same 20 listeners (a child process that
accepts and drops every connection, so no backlog ever fills), alternating round by round.
Measured: wall time of the whole command (``opensocket scan 127.0.0.1 -p- --json`` and nmap,
each a fresh process) and of the library call alone (``scan_blocking`` in this process, no
interpreter start-up). Checked every round: both open sets contain the 20 listeners and are
equal (another process on the machine opening or closing a port between the two scans shows
up as a difference in the report, not a crash; as root the bench runs in a network namespace
of its own, where nothing else listens). Target: command wall time <= 1.5x nmap's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Verdict, fmt_ratio, machine, verdict_table
from opensocket.tools.scan import scan_blocking

LISTENERS = 20
GOAL = 1.5
NMAP = ["nmap", "-sT", "-p-", "-T4", "-n", "-Pn", "-oX", "-", "127.0.0.1"]
OURS = [sys.executable, "-m", "opensocket", "scan", "127.0.0.1", "-p-", "--json", "--open"]

_LISTENER_SCRIPT = f"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for _ in range({LISTENERS}):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4096); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    print(s.getsockname()[1], flush=True)
print("ready", flush=True)
while True:
    for key, _ in sel.select(1.0):
        try:
            conn, _ = key.fileobj.accept()
            conn.close()
        except OSError:
            pass
"""


class Listeners:
    """20 listening ports in a child process, ended by its PID."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LISTENER_SCRIPT], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.ports: list[int] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().strip()
            if line == "ready" or not line:
                break
            self.ports.append(int(line))
        if len(self.ports) != LISTENERS:
            self.close()
            raise RuntimeError("the listener process did not start")
        self.ports.sort()

    def close(self) -> None:
        """End the child (our own PID only)."""
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def run_nmap() -> tuple[float, list[int]]:
    """Wall time of one nmap full scan and the open ports it found."""
    start = time.perf_counter()
    out = subprocess.run(NMAP, capture_output=True, text=True, timeout=120, check=True).stdout
    wall = time.perf_counter() - start
    ports = []
    for port in ET.fromstring(out).iter("port"):
        state = port.find("state")
        if state is not None and state.get("state") == "open":
            ports.append(int(port.get("portid", "0")))
    return wall, sorted(ports)


def run_ours_command() -> tuple[float, list[int]]:
    """Wall time of one ``opensocket scan`` command (interpreter start-up included)."""
    start = time.perf_counter()
    out = subprocess.run(OURS, capture_output=True, text=True, timeout=120, check=True).stdout
    wall = time.perf_counter() - start
    host = json.loads(out)["hosts"][0]
    return wall, sorted(p["port"] for p in host["ports"])


def run_ours_library() -> tuple[float, list[int]]:
    """Wall time of ``scan_blocking`` in this process."""
    start = time.perf_counter()
    report = scan_blocking("127.0.0.1", "-")
    wall = time.perf_counter() - start
    return wall, list(report.hosts[0].open_ports)


def one_round(listeners: list[int]) -> dict[str, Any]:
    """nmap, our command and our library call, one after the other."""
    row: dict[str, Any] = {}
    sets = {}
    for name, fn in (
        ("nmap", run_nmap),
        ("command", run_ours_command),
        ("library", run_ours_library),
    ):
        wall, ports = fn()
        row[f"{name}_s"] = round(wall, 4)
        sets[name] = ports
        row[f"{name}_missing"] = sorted(set(listeners) - set(ports))
    row["same_open_set"] = sets["nmap"] == sets["command"] == sets["library"]
    if not row["same_open_set"]:
        row["open_sets"] = sets
    row["open"] = len(sets["nmap"])
    return row


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and ratios over the rounds."""
    med = {
        k: statistics.median(r[f"{k}_s"] for r in rounds) for k in ("nmap", "command", "library")
    }
    return {
        "nmap_s": med["nmap"],
        "command_s": med["command"],
        "library_s": med["library"],
        "command_ratio": med["command"] / med["nmap"],
        "library_ratio": med["library"] / med["nmap"],
        "all_sets_equal": all(r["same_open_set"] for r in rounds),
        "nothing_missed": all(
            not r[f"{k}_missing"] for r in rounds for k in ("nmap", "command", "library")
        ),
    }


def table(rounds: list[dict[str, Any]], totals: dict[str, Any]) -> Table:
    """Per-round wall times and the medians."""
    out = Table(title=f"Full 65,535-port loopback scan ({LISTENERS} listeners)")
    out.add_column("round")
    for name in ("nmap -sT -T4", "opensocket scan", "vs nmap", "scan() in-process", "vs nmap"):
        out.add_column(name, justify="right")
    out.add_column("same open set")
    for i, r in enumerate(rounds, 1):
        out.add_row(
            str(i),
            f"{r['nmap_s']:.3f} s",
            f"{r['command_s']:.3f} s",
            fmt_ratio(r["command_s"] / r["nmap_s"]),
            f"{r['library_s']:.3f} s",
            fmt_ratio(r["library_s"] / r["nmap_s"]),
            "yes" if r["same_open_set"] else "NO",
        )
    out.add_row(
        "median",
        f"{totals['nmap_s']:.3f} s",
        f"{totals['command_s']:.3f} s",
        fmt_ratio(totals["command_ratio"]),
        f"{totals['library_s']:.3f} s",
        fmt_ratio(totals["library_ratio"]),
        "yes" if totals["all_sets_equal"] else "NO",
    )
    return out


def in_private_netns(argv: list[str]) -> int:
    """Run this script again inside a network namespace of its own (only lo, only our
    listeners: other processes' ports cannot differ between the two scans), then delete it."""
    name = f"osbench-scan-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        cmd = ["ip", "netns", "exec", name, sys.executable, __file__, *argv, "--no-netns"]
        return subprocess.run(cmd, timeout=3600, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True, timeout=10)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table and the targets, write the JSON."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default="bench-scan.json", metavar="FILE")
    parser.add_argument(
        "--no-netns",
        action="store_true",
        help="scan the host's own loopback (default as root: a private network namespace)",
    )
    args = parser.parse_args(argv)
    if shutil.which("nmap") is None:
        print("nmap is required (apt-get install nmap)", file=sys.stderr)
        return 1
    if not args.no_netns and os.geteuid() == 0 and shutil.which("ip"):
        return in_private_netns(argv)
    console = Console()
    started = time.time()
    listeners = Listeners()
    try:
        rounds = [one_round(listeners.ports) for _ in range(args.rounds)]
    finally:
        listeners.close()
    totals = summary(rounds)
    verdicts = [
        Verdict("scan -p- command wall / nmap -sT -T4", totals["command_ratio"], GOAL, False, "x"),
        Verdict("scan() library wall / nmap -sT -T4", totals["library_ratio"], GOAL, False, "x"),
        Verdict("open sets equal (every round)", float(totals["all_sets_equal"]), 1.0, True, ""),
        Verdict("no listener missed (every round)", float(totals["nothing_missed"]), 1.0, True, ""),
    ]
    m = machine()
    console.print(f"[bold]machine[/bold]: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
                  f"commit {m['commit']}, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    console.print(table(rounds, totals))
    console.print(verdict_table(verdicts))
    report = {
        "command": " ".join(["python", "bench/scan.py", *argv]),
        "network_namespace": os.path.basename(os.readlink("/proc/self/ns/net")),
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": m,
        "nmap": " ".join(NMAP),
        "ours": " ".join(["opensocket", *OURS[3:]]),
        "listeners": listeners.ports,
        "rounds": rounds,
        "summary": totals,
        "targets": [{**asdict(v), "status": v.status, "gap": v.gap} for v in verdicts],
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.json}")
    return 0 if all(v.status == "PASS" for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
