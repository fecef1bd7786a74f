"""ping and stat next to iputils ping and ss, in the same run.

    python bench/ping_stat.py [--rounds 5] [--count 20] [--runs 30] [--json out.json]

1. ping: our median loopback RTT (library, ``-c COUNT -i 0.01``, kernel receive timestamps)
   against the average iputils ``ping -c COUNT -i 0.01`` prints, 127.0.0.1 and ::1, rounds
   alternated. Target: ratio <= 2.
2. stat: wall time of the whole command ``python -m opensocket stat --tcp`` against
   ``ss -tanp`` (median of RUNS runs each, alternated). Target: ratio <= 2. Also measured, to
   show where the time goes: a bare interpreter, the opensocket package import, and the stat
   command loaded without the package's eager imports (what the lazy-import fix would give).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from opensocket.tools.ping import ping

PY = sys.executable
SRC = str(Path(__file__).resolve().parents[1] / "src")
# The stat command without opensocket/__init__.py's eager imports: a bare package object
# stands in for 'opensocket', so only cli/stat.py's own imports run (cli/__init__ is skipped).
LAZY = (
    f"import sys, types; pkg = types.ModuleType('opensocket'); pkg.__path__ = [{SRC!r} + "
    "'/opensocket']; sys.modules['opensocket'] = pkg; cli = types.ModuleType('opensocket.cli'); "
    f"cli.__path__ = [{SRC!r} + '/opensocket/cli']; sys.modules['opensocket.cli'] = cli; "
    "import argparse; from opensocket.cli import stat; p = argparse.ArgumentParser(); "
    "stat.configure(p); sys.exit(stat.execute(p.parse_args(['--tcp'])))"
)
AVG = re.compile(r"rtt min/avg/max/mdev = [\d.]+/([\d.]+)/")
TIME = re.compile(r"time=([\d.]+) ms")


def iputils(host: str, count: int) -> tuple[float, float]:
    """iputils ping's printed average and the median of its per-reply times (ms)."""
    out = subprocess.run(
        ["ping", "-c", str(count), "-i", "0.01", host],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    found = AVG.search(out)
    assert found, out
    return float(found[1]), statistics.median(float(t) for t in TIME.findall(out))


def ours(host: str, count: int) -> tuple[float, float]:
    """Our average and median RTT (ms)."""
    report = ping(host, count=count, interval=0.01, timeout=2.0)
    rtts = [e.rtt_us / 1000 for e in report.events if hasattr(e, "rtt_us") and e.rtt_us]
    assert report.stats.received == count, report.stats
    return statistics.fmean(rtts), statistics.median(rtts)


def bench_ping(rounds: int, count: int) -> list[dict[str, Any]]:
    """Alternate ours and iputils; keep the medians over rounds."""
    rows = []
    for host in ("127.0.0.1", "::1"):
        samples: dict[str, list[float]] = {
            "ours_avg": [],
            "ours_med": [],
            "ip_avg": [],
            "ip_med": [],
        }
        for _ in range(rounds):
            avg, med = ours(host, count)
            samples["ours_avg"].append(avg)
            samples["ours_med"].append(med)
            avg, med = iputils(host, count)
            samples["ip_avg"].append(avg)
            samples["ip_med"].append(med)
        row = {k: statistics.median(v) for k, v in samples.items()}
        row["host"] = host
        row["ratio"] = row["ours_med"] / row["ip_avg"]
        rows.append(row)
    return rows


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def bench_stat(runs: int) -> dict[str, Any]:
    """Median wall time (ms) of each command over ``runs`` alternated runs."""
    ss = shutil.which("ss")
    assert ss, "ss is required (apt-get install iproute2)"
    commands = {
        "ss -tanp": [ss, "-tanp"],
        "opensocket stat --tcp": [PY, "-m", "opensocket", "stat", "--tcp"],
        "stat without eager imports": [PY, "-c", LAZY],
        "python -c pass": [PY, "-c", "pass"],
        "python -I -S -c pass": [PY, "-I", "-S", "-c", "pass"],
        "python -c 'import opensocket'": [PY, "-c", "import opensocket"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(wall(argv) * 1000)
    medians = {name: statistics.median(v) for name, v in times.items()}
    base = medians["ss -tanp"]
    return {
        "runs": runs,
        "median_ms": medians,
        "ratio_to_ss": {name: value / base for name, value in medians.items()},
    }


def report(ping_rows: list[dict[str, Any]], stat: dict[str, Any]) -> None:
    console = Console()
    table = Table(title="ping: loopback RTT, ms (median over rounds); target ratio <= 2")
    for col in ("host", "ours median", "ours avg", "iputils avg", "iputils median", "ratio"):
        table.add_column(col, justify="right")
    for row in ping_rows:
        table.add_row(
            row["host"],
            f"{row['ours_med']:.3f}",
            f"{row['ours_avg']:.3f}",
            f"{row['ip_avg']:.3f}",
            f"{row['ip_med']:.3f}",
            f"{row['ratio']:.2f}x",
        )
    console.print(table)
    table = Table(title=f"stat: wall time, ms (median of {stat['runs']} runs); target <= 2x ss")
    for col in ("command", "median ms", "vs ss -tanp"):
        table.add_column(col, justify="right" if col != "command" else "left")
    for name, value in stat["median_ms"].items():
        table.add_row(name, f"{value:.1f}", f"{stat['ratio_to_ss'][name]:.2f}x")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="ping rounds per host")
    parser.add_argument("--count", type=int, default=20, help="pings per round")
    parser.add_argument("--runs", type=int, default=30, help="runs of each stat command")
    parser.add_argument("--json", type=Path, default=Path("bench/ping_stat.json"))
    args = parser.parse_args()
    ping_rows = bench_ping(args.rounds, args.count)
    stat = bench_stat(args.runs)
    report(ping_rows, stat)
    result = {
        "machine": {"python": platform.python_version(), "cpus": platform.machine()},
        "command": " ".join(sys.argv),
        "ping": ping_rows,
        "stat": stat,
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
