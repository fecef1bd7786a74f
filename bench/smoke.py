"""Smoke check of the benchmark suite for CI: it runs, and every row produced a number.

    python bench/smoke.py                 # runs foundation.py --quick (under a minute)
    python bench/smoke.py --only latency  # a subset

No timed assertions: a slow machine passes; only a crash, an error row, a missing section or
a malformed report fails. Exit status 0 on success, 1 with the reasons on failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VALUE_KEYS = {
    "throughput": "msgs_per_s",
    "latency": "p50_us",
    "stream": "gb_per_s",
    "connections": "result",
}
SYNC_MISSING = "n/a (sync runtime missing)"


def problems(report: dict[str, Any], sections: list[str]) -> list[str]:
    """Everything wrong with a report (empty when it is sound)."""
    found = []
    for name in sections:
        rows = report.get("sections", {}).get(name)
        if not rows:
            found.append(f"section {name!r} is missing or empty")
            continue
        for row in rows:
            label = f"{name}: {row.get('key')} {row.get('label', '')} {row.get('size', '')}"
            if row.get("error") == SYNC_MISSING:
                continue  # the blocking runtime may not exist yet; reported, not failed
            if row.get("error"):
                found.append(f"{label}: {row['error'].splitlines()[-1]}")
            elif not row.get(VALUE_KEYS[name]):
                found.append(f"{label}: no {VALUE_KEYS[name]}")
    if not report.get("targets"):
        found.append("no targets evaluated")
    for target in report.get("targets", []):
        if target.get("status") not in ("PASS", "MISS", "n/a"):
            found.append(f"target {target.get('target')!r} has status {target.get('status')!r}")
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the quick benchmarks in a subprocess and check the JSON they write."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="throughput,latency,stream,connections")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = [sys.executable, str(HERE / "foundation.py"), "--quick", "--only", args.only]
        cmd += ["--json", str(out)]
        proc = subprocess.run(cmd, timeout=args.timeout, check=False)
        if not out.exists():
            print(f"smoke: FAIL: foundation.py exited {proc.returncode} without a report")
            return 1
        report = json.loads(out.read_text())
    found = problems(report, sections)
    if proc.returncode != 0 and not found:
        found.append(f"foundation.py exited {proc.returncode}")
    for problem in found:
        print(f"smoke: FAIL: {problem}")
    if found:
        return 1
    rows = sum(len(report["sections"][s]) for s in sections)
    print(f"smoke: OK: {rows} rows in {report['seconds']} s, {len(report['targets'])} targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
