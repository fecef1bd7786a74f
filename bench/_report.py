"""Targets, tables and the JSON report of the foundation benchmarks."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MB = 1e6
GB = 1e9


@dataclass
class Verdict:
    """One target: a measured value against a goal (both as ratios or absolute values)."""

    target: str
    measured: float | None
    goal: float
    higher_is_better: bool
    unit: str

    @property
    def status(self) -> str:
        """PASS, MISS, or n/a when the row could not be measured."""
        if self.measured is None:
            return "n/a"
        ok = self.measured >= self.goal if self.higher_is_better else self.measured <= self.goal
        return "PASS" if ok else "MISS"

    @property
    def gap(self) -> str:
        """How far off a miss is, as the change the measured value needs."""
        if self.measured is None or self.status == "PASS" or self.measured == 0:
            return ""
        change = self.goal / self.measured - 1.0
        return f"needs {change:+.0%}"


def fmt_ratio(value: float | None) -> str:
    """A ratio to the reference, or an em dash."""
    return "—" if value is None else f"{value:.2f}x"


def fmt_num(value: float | None, digits: int = 0) -> str:
    """A number with thousands separators, or an em dash."""
    return "—" if value is None else f"{value:,.{digits}f}"


def fmt_cpu(value: float | None) -> str:
    """A CPU share as a percentage of one core."""
    return "—" if value is None else f"{value * 100:.0f}%"


def fmt_load(row: dict[str, Any]) -> str:
    """Cores used by other processes during the kept run, and how many runs it took."""
    load = row.get("other_load")
    if load is None:
        return "—"
    runs = row.get("runs", 1)
    return f"{load:.2f}" + (f" ({runs} runs)" if runs > 1 else "")


def throughput_table(rows: list[dict[str, Any]]) -> Table:
    """Section 1: one-way framed throughput."""
    table = Table(title="1. One-way throughput (loopback TCP, separate processes)")
    for name in ("row", "implementation", "send API", "receive API", "size"):
        table.add_column(name)
    for name in ("msgs/s", "MB/s", "vs pyzmq", "rx CPU", "tx CPU", "other load"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            row["key"],
            row["label"],
            row["tx"],
            row["rx"],
            f"{row['size']:,} B",
            row.get("error_short") or fmt_num(row.get("msgs_per_s")),
            fmt_num(row.get("mb_per_s"), 1),
            fmt_ratio(row.get("vs_zmq")),
            fmt_cpu(row.get("rx_cpu")),
            fmt_cpu(row.get("tx_cpu")),
            fmt_load(row),
        )
    return table


def latency_table(rows: list[dict[str, Any]]) -> Table:
    """Section 2: request/reply latency."""
    table = Table(title="2. Request/reply round trip (one outstanding, both pinned to one core)")
    table.add_column("implementation")
    for name in ("p50 µs", "p99 µs", "mean µs", "p50 vs pyzmq", "samples", "other load"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            row["label"],
            row.get("error_short") or fmt_num(row.get("p50_us"), 1),
            fmt_num(row.get("p99_us"), 1),
            fmt_num(row.get("mean_us"), 1),
            fmt_ratio(row.get("vs_zmq")),
            fmt_num(row.get("samples")),
            fmt_load(row),
        )
    return table


def stream_table(rows: list[dict[str, Any]], total: int) -> Table:
    """Section 3: bulk stream of 1 MiB messages."""
    title = f"3. Bulk stream: {total / 2**30:g} GiB as 1 MiB messages (plain TCP)"
    table = Table(title=title)
    table.add_column("implementation")
    for name in ("GB/s", "rx CPU", "tx CPU", "other load"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            row["label"],
            row.get("error_short") or fmt_num(row.get("gb_per_s"), 2),
            fmt_cpu(row.get("rx_cpu")),
            fmt_cpu(row.get("tx_cpu")),
            fmt_load(row),
        )
    return table


def conns_table(rows: list[dict[str, Any]]) -> Table:
    """Section 4: connection churn and idle memory."""
    table = Table(title="4. Connections (default asyncio loop unless noted)")
    table.add_column("measurement")
    table.add_column("implementation")
    table.add_column("result", justify="right")
    table.add_column("detail")
    table.add_column("other load", justify="right")
    for row in rows:
        table.add_row(
            row["what"],
            row["label"],
            row.get("error_short") or row["result"],
            row["detail"],
            fmt_load(row),
        )
    return table


def verdict_table(verdicts: list[Verdict]) -> Table:
    """Every target with PASS/MISS and how far off a miss is."""
    table = Table(title="Targets")
    table.add_column("target")
    table.add_column("measured", justify="right")
    table.add_column("goal", justify="right")
    table.add_column("status")
    table.add_column("gap")
    for v in verdicts:
        op = ">=" if v.higher_is_better else "<="
        measured = "—" if v.measured is None else f"{v.measured:,.2f}{v.unit}"
        style = {"PASS": "green", "MISS": "red"}.get(v.status, "yellow")
        table.add_row(
            v.target,
            measured,
            f"{op} {v.goal:,.2f}{v.unit}",
            f"[{style}]{v.status}[/{style}]",
            v.gap,
        )
    return table


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = models[0] if models else "unknown"
    except OSError:
        info["cpu"] = "unknown"
    for module in ("opensocket", "uvloop", "zmq"):
        try:
            info[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            info[module] = None
    try:
        import zmq

        info["libzmq"] = zmq.zmq_version()
    except ImportError:
        info["libzmq"] = None
    root = Path(__file__).resolve().parent.parent
    try:
        git = ["git", "-C", str(root)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        # git diff neither writes the index nor anything else: read-only
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--"], timeout=10).returncode
        info["commit"] = f"{head}+changes" if dirty == 1 else head
    except (OSError, subprocess.TimeoutExpired):
        info["commit"] = None
    return info


def print_report(report: dict[str, Any], verdicts: list[Verdict], console: Console) -> None:
    """Print every section that ran, then the targets."""
    m = report["machine"]
    console.print(
        f"[bold]machine[/bold]: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
        f"uvloop {m['uvloop']}, pyzmq {m['zmq']} (libzmq {m['libzmq']}), "
        f"commit {m['commit']}, mode {report['mode']}"
    )
    sections = report["sections"]
    if "throughput" in sections:
        console.print(throughput_table(sections["throughput"]))
    if "latency" in sections:
        console.print(latency_table(sections["latency"]))
    if "stream" in sections:
        console.print(stream_table(sections["stream"], report["plan"]["stream_bytes"]))
    if "connections" in sections:
        console.print(conns_table(sections["connections"]))
    console.print(verdict_table(verdicts))


def write_json(path: str, report: dict[str, Any], verdicts: list[Verdict]) -> None:
    """Save the whole report, targets included."""
    data = {
        **report,
        "targets": [{**asdict(v), "status": v.status, "gap": v.gap} for v in verdicts],
    }
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


# ---- markdown (for docs/benchmarks.md) -----------------------------------------------------


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---" if i < 1 else "--:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return [*lines, ""]


def markdown(report: dict[str, Any], verdicts: list[Verdict]) -> str:
    """The report as markdown tables: what docs/benchmarks.md shows."""
    m = report["machine"]
    out = [
        f"Measured {report.get('date', '')} with `{report['command']}` in {report['seconds']} s "
        f"on {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, uvloop {m['uvloop']}, "
        f"pyzmq {m['zmq']} (libzmq {m['libzmq']}), commit {m['commit']}.",
        "",
    ]
    sections = report["sections"]
    if "throughput" in sections:
        out += ["**1. One-way throughput**", ""]
        out += _md_table(
            ["row", "implementation", "send", "receive", "size", "msgs/s", "MB/s", "vs pyzmq",
             "rx CPU", "tx CPU", "other load"],
            [
                [r["key"], r["label"], r["tx"], r["rx"], f"{r['size']:,} B",
                 r.get("error_short") or fmt_num(r.get("msgs_per_s")),
                 fmt_num(r.get("mb_per_s"), 1), fmt_ratio(r.get("vs_zmq")),
                 fmt_cpu(r.get("rx_cpu")), fmt_cpu(r.get("tx_cpu")), fmt_load(r)]
                for r in sections["throughput"]
            ],
        )  # fmt: skip
    if "latency" in sections:
        out += [
            "**2. Request/reply round trip** (64 B, one outstanding, both pinned to one CPU)",
            "",
        ]
        out += _md_table(
            ["implementation", "p50 µs", "p99 µs", "mean µs", "p50 vs pyzmq", "other load"],
            [
                [r["label"], r.get("error_short") or fmt_num(r.get("p50_us"), 1),
                 fmt_num(r.get("p99_us"), 1), fmt_num(r.get("mean_us"), 1),
                 fmt_ratio(r.get("vs_zmq")), fmt_load(r)]
                for r in sections["latency"]
            ],
        )  # fmt: skip
    if "stream" in sections:
        total = report["plan"]["stream_bytes"] / 2**30
        out += [f"**3. Bulk stream** ({total:g} GiB as 1 MiB messages, plain TCP)", ""]
        out += _md_table(
            ["implementation", "GB/s", "rx CPU", "tx CPU", "other load"],
            [
                [r["label"], r.get("error_short") or fmt_num(r.get("gb_per_s"), 2),
                 fmt_cpu(r.get("rx_cpu")), fmt_cpu(r.get("tx_cpu")), fmt_load(r)]
                for r in sections["stream"]
            ],
        )  # fmt: skip
    if "connections" in sections:
        out += ["**4. Connections** (server on the default asyncio loop)", ""]
        out += _md_table(
            ["measurement", "implementation", "result", "detail"],
            [
                [r["what"], r["label"], r.get("error_short") or r["result"], r["detail"]]
                for r in sections["connections"]
            ],
        )
    out += ["**Targets**", ""]
    out += _md_table(
        ["target", "measured", "goal", "status", "gap"],
        [
            [
                v.target,
                "—" if v.measured is None else f"{v.measured:,.2f}{v.unit}",
                f"{'>=' if v.higher_is_better else '<='} {v.goal:,.2f}{v.unit}",
                f"**{v.status}**",
                v.gap,
            ]
            for v in verdicts
        ],
    )
    return "\n".join(out)
