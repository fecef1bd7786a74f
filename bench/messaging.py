"""Messaging-pattern benchmarks: opensocket's asyncio pattern sockets against pyzmq.

    flock /tmp/opensocket-bench.lock python bench/messaging.py            # a few minutes
    flock /tmp/opensocket-bench.lock python bench/messaging.py --quick    # under a minute
    python bench/messaging.py --json out.json --only pushpull,pubsub

Four workloads, each next to its pyzmq equivalent in the same run, every peer in its own
process on 127.0.0.1 (opensocket on uvloop):

- push/pull one-way throughput, 64 B and 1 KiB (pyzmq PUSH/PULL, default marks);
- request/reply round trip, one outstanding, both processes pinned to CPU 0 (pyzmq REQ/REP);
- pipelined request/reply, 100 outstanding (pyzmq DEALER/ROUTER);
- pub/sub to 4 subscriber processes: deliveries per second and drops (pyzmq PUB/SUB at its
  default high-water mark drops; ours runs with the BLOCK policy and must deliver all).

Every loop is bounded in count and time; every child process is ended by its PID.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rich.console import Console
from rich.table import Table

import _msg_peers as mp
import _other_peers as other
from _harness import BenchError, Case, LoadMeter, Peer, PeerFn, run_case
from _report import Verdict, fmt_num, fmt_ratio, machine, verdict_table

SECTIONS = ("pushpull", "reqrep", "pipeline", "pubsub")
SIZES = (64, 1024)
SUBSCRIBERS = 4
WINDOW = 100


@dataclass(frozen=True)
class Plan:
    """Counts and caps of one run."""

    push_count: int
    lat_count: int
    lat_warmup: int
    pipe_count: int
    pub_count: int
    cap: float  # seconds a sender may run before it stops early
    repeat: int


FULL = Plan(1_000_000, 20_000, 2_000, 200_000, 200_000, 10.0, 2)
QUICK = Plan(200_000, 3_000, 500, 30_000, 40_000, 4.0, 1)


def best(runs: list[dict[str, Any]], key: str, higher: bool) -> dict[str, Any]:
    """The best of repeated runs (noise on a shared machine only ever slows a run down)."""
    valid = [r for r in runs if r.get(key) is not None]
    if not valid:
        raise BenchError(f"no run produced {key}")
    return (max if higher else min)(valid, key=lambda r: r[key])


def repeat(plan: Plan, fn: Any, key: str, higher: bool) -> dict[str, Any]:
    """Run ``fn`` ``plan.repeat`` times and keep the best."""
    return {**best([fn() for _ in range(plan.repeat)], key, higher), "runs": plan.repeat}


# ---- push / pull -----------------------------------------------------------------------------


def pushpull(plan: Plan) -> list[dict[str, Any]]:
    """One-way throughput rows for each size: pyzmq, ours per message, ours batched."""
    rows = []
    impls: list[tuple[str, PeerFn, PeerFn, dict[str, Any]]] = [
        ("pyzmq PUSH/PULL send()/recv()", other.zmq_receiver, other.zmq_sender, {}),
        ("opensocket send()/recv()", mp.os_puller, mp.os_pusher, {"batch": False}),
        ("opensocket send_many()/recv_many()", mp.os_puller, mp.os_pusher, {"batch": True}),
    ]
    for size in SIZES:
        for name, server, client, extra in impls:
            params = {
                "size": size,
                "count": plan.push_count,
                "cap": plan.cap,
                "prefetch": 1000,
                **extra,
            }

            def once(s: PeerFn = server, c: PeerFn = client, p: dict[str, Any] = params) -> Any:
                got, sent = run_case(Case(s, c, p, timeout=plan.cap + 40))
                rate = got["count"] / got["elapsed"] if got["elapsed"] else None
                return {
                    "msgs_per_s": rate,
                    "received": got["count"],
                    "sent": sent["sent"],
                    "rx_cpu": got["cpu"],
                    "tx_cpu": sent["cpu"],
                    "other_load": sent["other_load"],
                }

            row = repeat(plan, once, "msgs_per_s", True)
            rows.append({"workload": "push/pull", "impl": name, "size": size, **row})
    return rows


# ---- request / reply -------------------------------------------------------------------------


def reqrep(plan: Plan) -> list[dict[str, Any]]:
    """Round trip p50/p99, one outstanding, both processes pinned to CPU 0."""
    params = {
        "size": 64,
        "count": plan.lat_count,
        "warmup": plan.lat_warmup,
        "cap": plan.cap,
        "wait": plan.cap + 30,
    }
    rows = []
    for name, server, client in (
        ("pyzmq REQ/REP", other.zmq_rep_server, other.zmq_req_client),
        ("opensocket Requester/Replier (uvloop)", mp.os_replier, mp.os_requester),
    ):

        def once(s: PeerFn = server, c: PeerFn = client) -> Any:
            _, got = run_case(Case(s, c, params, pin=0, timeout=plan.cap + 40))
            return got

        row = repeat(plan, once, "p50_us", False)
        rows.append({"workload": "req/rep", "impl": name, "size": 64, **row})
    return rows


def pipeline(plan: Plan) -> list[dict[str, Any]]:
    """Requests per second with ``WINDOW`` outstanding."""
    params = {
        "size": 64,
        "count": plan.pipe_count,
        "window": WINDOW,
        "cap": plan.cap,
        "wait": plan.cap + 30,
    }
    rows = []
    for name, server, client in (
        ("pyzmq DEALER/ROUTER", mp.zmq_router, mp.zmq_dealer),
        ("opensocket Requester/Replier (uvloop)", mp.os_replier, mp.os_pipeliner),
    ):

        def once(s: PeerFn = server, c: PeerFn = client) -> Any:
            _, got = run_case(Case(s, c, params, timeout=plan.cap + 40))
            rate = got["count"] / got["elapsed"] if got["elapsed"] else None
            return {
                "req_per_s": rate,
                "count": got["count"],
                "cpu": got["cpu"],
                "other_load": got["other_load"],
            }

        row = repeat(plan, once, "req_per_s", True)
        rows.append({"workload": "pipelined req/rep", "impl": name, "size": 64, **row})
    return rows


# ---- publish / subscribe ---------------------------------------------------------------------


def _pubsub_once(plan: Plan, publisher: PeerFn, subscriber: PeerFn) -> dict[str, Any]:
    params = {
        "size": 64,
        "count": plan.pub_count,
        "cap": plan.cap,
        "subscribers": SUBSCRIBERS,
        "idle": 1.0,
        "wait": plan.cap + 30,
    }
    deadline = time.monotonic() + plan.cap + 60
    meter = LoadMeter()
    pub = Peer(publisher, params, None)
    subs: list[Peer] = []
    try:
        address = pub.expect("ready", time.monotonic() + 15)
        subs = [Peer(subscriber, {**params, "address": address}, None) for _ in range(SUBSCRIBERS)]
        for sub in subs:
            sub.expect("ready", time.monotonic() + 15)
        pub.send("go")
        sent = pub.expect("result", deadline)
        for sub in subs:
            sub.send("done")
        got = [sub.expect("result", deadline) for sub in subs]
    finally:
        for sub in subs:
            sub.end()
        pub.end()
    delivered = sum(g["count"] for g in got)
    firsts = [g["first"] for g in got if g["first"] is not None]
    lasts = [g["last"] for g in got if g["last"] is not None]
    elapsed = max(lasts) - min(firsts) if firsts else 0.0
    expected = sent["sent"] * SUBSCRIBERS
    return {
        "deliveries_per_s": delivered / elapsed if elapsed else None,
        "published": sent["sent"],
        "delivered": delivered,
        "lost": expected - delivered,
        "lost_share": (expected - delivered) / expected if expected else None,
        "pub_cpu": sent["cpu"],
        "other_load": meter.stop(),
    }


def pubsub(plan: Plan) -> list[dict[str, Any]]:
    """Deliveries per second to 4 subscriber processes, and what was lost."""
    rows = []
    for name, publisher, subscriber in (
        ("pyzmq PUB/SUB (default HWM)", mp.zmq_publisher, mp.zmq_subscriber),
        ("opensocket publish_many()/recv_many() (BLOCK)", mp.os_publisher, mp.os_subscriber),
    ):
        row = repeat(
            plan,
            lambda p=publisher, s=subscriber: _pubsub_once(plan, p, s),
            "deliveries_per_s",
            True,
        )
        rows.append({"workload": "pub/sub x4", "impl": name, "size": 64, **row})
    return rows


# ---- verdicts and report ---------------------------------------------------------------------


def _ratio(rows: list[dict[str, Any]], key: str, ref: str, impl: str, size: int) -> float | None:
    def find(name: str) -> float | None:
        row = next((r for r in rows if r["impl"].startswith(name) and r["size"] == size), None)
        return None if row is None else row.get(key)

    ours, theirs = find(impl), find(ref)
    if ours is None or not theirs:
        return None
    return ours / theirs


def verdicts(results: dict[str, list[dict[str, Any]]]) -> list[Verdict]:
    """The issue's targets, as ratios to pyzmq."""
    out = []
    pp = results.get("pushpull", [])
    for impl in ("opensocket send()/recv()", "opensocket send_many()/recv_many()"):
        measured = _ratio(pp, "msgs_per_s", "pyzmq", impl, 64)
        out.append(Verdict(f"push/pull 64 B msgs/s vs pyzmq: {impl}", measured, 1.0, True, "x"))
    rr = results.get("reqrep", [])
    if rr:
        measured = _ratio(rr, "p50_us", "pyzmq", "opensocket", 64)
        out.append(
            Verdict("req/rep p50 vs pyzmq REQ/REP (uvloop, pinned)", measured, 0.5, False, "x")
        )
    pl = results.get("pipeline", [])
    if pl:
        measured = _ratio(pl, "req_per_s", "pyzmq", "opensocket", 64)
        out.append(
            Verdict("pipelined req/rep (100) vs pyzmq DEALER/ROUTER", measured, 2.0, True, "x")
        )
    ps = results.get("pubsub", [])
    if ps:
        measured = _ratio(ps, "deliveries_per_s", "pyzmq", "opensocket", 64)
        ours = next((r for r in ps if r["impl"].startswith("opensocket")), {})
        if ours.get("lost"):
            measured = 0.0  # the target requires every message delivered
        out.append(Verdict("pub/sub x4 deliveries/s vs pyzmq, none lost", measured, 2.0, True, "x"))
    return out


def add_ratios(results: dict[str, list[dict[str, Any]]]) -> None:
    """Each row's ratio to the pyzmq row of its workload and size."""
    keys = {
        "pushpull": "msgs_per_s",
        "reqrep": "p50_us",
        "pipeline": "req_per_s",
        "pubsub": "deliveries_per_s",
    }
    for section, rows in results.items():
        key = keys[section]
        for row in rows:
            row["vs_pyzmq"] = _ratio(rows, key, "pyzmq", row["impl"], row["size"])


def table(results: dict[str, list[dict[str, Any]]]) -> Table:
    """One table for every row."""
    t = Table(title="Messaging patterns vs pyzmq (loopback, separate processes)")
    for name in ("workload", "implementation", "size"):
        t.add_column(name)
    for name in ("result", "vs pyzmq", "detail", "other load"):
        t.add_column(name, justify="right")
    for section, rows in results.items():
        for row in rows:
            t.add_row(
                row["workload"], row["impl"], f"{row['size']} B", *_cells(section, row), _load(row)
            )
    return t


def _load(row: dict[str, Any]) -> str:
    load = row.get("other_load")
    return "—" if load is None else f"{load:.2f}"


def _cells(section: str, row: dict[str, Any]) -> tuple[str, str, str]:
    ratio = fmt_ratio(row.get("vs_pyzmq"))
    if section == "pushpull":
        return f"{fmt_num(row['msgs_per_s'])} msg/s", ratio, f"rx CPU {row['rx_cpu']:.0%}"
    if section == "reqrep":
        return f"p50 {row['p50_us']:.1f} µs", ratio, f"p99 {row['p99_us']:.1f} µs"
    if section == "pipeline":
        return f"{fmt_num(row['req_per_s'])} req/s", ratio, f"CPU {row['cpu']:.0%}"
    lost = row["lost"]
    share = row["lost_share"] or 0.0
    return (
        f"{fmt_num(row['deliveries_per_s'])} deliv/s",
        ratio,
        f"{row['delivered']:,} delivered, {lost:,} lost ({share:.0%})",
    )


def markdown(results: dict[str, list[dict[str, Any]]], checks: list[Verdict]) -> str:
    """The tables as markdown, for docs/benchmarks.md."""
    lines = [
        "| workload | implementation | size | result | vs pyzmq | detail | other load |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for section, rows in results.items():
        for row in rows:
            cells = _cells(section, row)
            lines.append(
                f"| {row['workload']} | {row['impl']} | {row['size']} B | "
                + " | ".join(cells)
                + f" | {_load(row)} |"
            )
    lines += ["", "| target | measured | goal | status | gap |", "|---|---:|---:|---|---|"]
    for v in checks:
        sign = ">=" if v.higher_is_better else "<="
        lines.append(
            f"| {v.target} | {fmt_ratio(v.measured)} | {sign} {v.goal:.2f}x | "
            f"**{v.status}** | {v.gap} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections, print the tables, write JSON (and markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, one run each")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--json", default="bench-messaging.json", help="where to write JSON")
    parser.add_argument("--markdown", help="also write the tables as markdown here")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    chosen = [s for s in args.only.split(",") if s]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    console = Console()
    started = time.monotonic()
    runners = {"pushpull": pushpull, "reqrep": reqrep, "pipeline": pipeline, "pubsub": pubsub}
    results: dict[str, list[dict[str, Any]]] = {}
    for section in SECTIONS:
        if section in chosen:
            console.print(f"[bold]{section}[/bold] ...")
            results[section] = runners[section](plan)
    add_ratios(results)
    checks = verdicts(results)
    console.print(table(results))
    console.print(verdict_table(checks))
    report = {
        "machine": machine(),
        "plan": asdict(plan),
        "seconds": time.monotonic() - started,
        "results": results,
        "verdicts": [{**asdict(v), "status": v.status} for v in checks],
    }
    Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if args.markdown:
        Path(args.markdown).write_text(markdown(results, checks))
    console.print(f"wrote {args.json} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
