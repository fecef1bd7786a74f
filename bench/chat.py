"""Chat hub benchmark: idle connections per hub process, and room fan-out next to python-socketio.

    flock /tmp/opensocket-bench.lock python bench/chat.py --json-out chat.json
    python bench/chat.py --quick            # a smoke run, under a minute

Every server runs in its own process: the hub as ``bench/_chat_hub.py`` (``serve_chat`` on
uvloop, what ``opensocket chat serve`` runs), python-socketio as ``bench/_chat_sio.py`` (its
AsyncServer on aiohttp, uvloop). The clients
run in ``--generators`` forked processes (uvloop) with the lean protocol clients of
``_chat_wire.py``: raw framed protocol for the hub's native port, raw WebSocket for the hub's
``/ws`` and for Socket.IO (Engine.IO v4 / Socket.IO v5, WebSocket transport only).

Fan-out: ``--clients`` clients join one room; ``--senders`` of them each keep ``--window``
messages in flight (or pace ``--rate`` messages/s in total) for ``--seconds``. Every member,
the sender included, receives each message. Reported: deliveries per second, delivery latency
(send to receipt, CLOCK_MONOTONIC across processes), and the books: sent x members =
delivered + lost. A round disturbed by other processes (over ``--max-load`` cores) is run
again with the same clients, up to ``--retries`` times; the least disturbed one is kept.
Connections: ``--conns`` idle native clients in rooms of ``--room-size``; the hub's RSS
before and after, and whether a fresh client still gets in and gets an answer.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import resource
import signal
import sys
import time
from array import array
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from _chat_load import fanout_peer, fresh_peer, idle_peer
from _chat_servers import Running, start_hub, start_sio
from _chat_wire import now_ns
from _harness import BenchError, Peer, _busy_seconds, wait_quiet
from _report import Verdict, _md_table, fmt_num, fmt_ratio, machine, verdict_table

NOFILE = 65_536
KINDS = ("native", "ws", "socketio")
LABELS = {
    "native": "opensocket hub, native (framed, json)",
    "ws": "opensocket hub, WebSocket /ws",
    "socketio": "python-socketio AsyncServer (aiohttp)",
}


def raise_nofile(want: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE (soft and, as root, hard) so children inherit it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(hard, want) if os.geteuid() == 0 else hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
        return target
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


T0 = time.monotonic()


def log(text: str) -> None:
    """Progress on stderr, with the seconds since the start."""
    print(f"  [{time.monotonic() - T0:6.1f}] {text}", file=sys.stderr, flush=True)


# ---- fan-out -----------------------------------------------------------------------------


def _shares(total: int, parts: int) -> list[tuple[int, int]]:
    base, extra = divmod(total, parts)
    out, first = [], 0
    for i in range(parts):
        n = base + (1 if i < extra else 0)
        out.append((first, n))
        first += n
    return out


def _start_server(kind: str, args: argparse.Namespace, tmp: Path) -> Running:
    if kind == "socketio":
        return start_sio(tmp)
    profile = f"{args.profile}.{kind}" if args.profile else None
    return start_hub(tmp, max_conns=args.clients + 100, profile=profile)


def fanout_row(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One implementation: start its server, run the room, collect the books."""
    row: dict[str, Any] = {"kind": kind, "label": LABELS[kind]}
    log(f"fan-out: {LABELS[kind]}")
    server = _start_server(kind, args, tmp)
    peers: list[Peer] = []
    try:
        wire = kind
        port = server.web_port if wire in ("ws", "socketio") else server.native_port
        base = {"kind": wire, "host": "127.0.0.1", "port": port, "senders": args.senders,
                "sample_every": args.sample_every, "window": args.window, "rate": args.rate,
                "size": args.size, "concurrency": 50, "timeout": 30.0}  # fmt: skip
        for first, count in _shares(args.clients, args.generators):
            peers.append(Peer(fanout_peer, {**base, "first": first, "count": count}, None))
        row.update(_drive(kind, peers, server, args))
    except BenchError as exc:
        row["error"] = str(exc).strip().splitlines()[-1]
        log(f"[error] {kind}: {exc}")
        row["server_log"] = server.log_tail()
    finally:
        for peer in peers:
            peer.end()
        server.stop()
        log(f"{kind} done")
    return row


def _drive(
    kind: str, peers: list[Peer], server: Running, args: argparse.Namespace
) -> dict[str, Any]:
    """Rounds with the same joined clients: again while other processes load the machine."""
    ready = [p.expect("ready", time.monotonic() + 120.0) for p in peers]
    log("clients ready")
    short = [r for r in ready if r["errors"]]
    if short:
        raise BenchError(f"clients failed to join: {short[0]['errors']}")
    rounds: list[dict[str, Any]] = []
    while True:
        rounds.append(_round(kind, peers, server, args, ready))
        if rounds[-1]["other_load"] <= args.max_load or len(rounds) > args.retries:
            break
        log("the machine was busy: measuring again")
    for p in peers:
        p.send(("done",))
    for p in peers:
        p.expect("result", time.monotonic() + 30.0)
    kept = min(rounds, key=lambda r: r["other_load"])  # the least disturbed round
    return {**kept, "rounds": len(rounds), "all_msgs_per_s": [r["msgs_per_s"] for r in rounds]}


def _round(
    kind: str,
    peers: list[Peer],
    server: Running,
    args: argparse.Namespace,
    ready: list[dict[str, Any]],
) -> dict[str, Any]:
    wait_quiet(args.max_load, 3.0)
    start = now_ns() + 200_000_000
    end = start + int(args.seconds * 1e9)
    cpu0 = server.cpu_seconds()
    busy0, wall0, own0 = _busy_seconds(), time.monotonic(), time.process_time()
    profile = args.profile and kind != "socketio"
    if profile:
        server.signal(signal.SIGUSR1)  # cProfile over the send window and the drain only
    for p in peers:
        p.send(("go", start, end))
    limit = time.monotonic() + args.seconds + 60.0
    sent = sum(p.expect("sent", limit) for p in peers)
    for p in peers:
        p.send(("expect", sent))
    log(f"sent {sent:,}; draining")
    results = [p.expect("round", limit + 20.0) for p in peers]
    if profile:
        server.signal(signal.SIGUSR2)  # the last round's profile is the one kept on disk
    server_cpu = server.cpu_seconds() - cpu0
    books = _books(results, sent, start, server_cpu, args, ready)
    ours = server_cpu + sum(r["cpu_s"] for r in results) + time.process_time() - own0
    wall = time.monotonic() - wall0
    books["other_load"] = max(_busy_seconds() - busy0 - ours, 0.0) / wall
    log(
        f"{books['msgs_per_s']:,.0f} msgs/s, p99 {books['p99_ms'] or 0:.1f} ms, "
        f"other processes used {books['other_load']:.2f} cores"
    )
    return books


def _books(
    results: list[dict[str, Any]],
    sent: int,
    start: int,
    server_cpu: float,
    args: argparse.Namespace,
    ready: list[dict[str, Any]],
) -> dict[str, Any]:
    delivered = sum(r["delivered"] for r in results)
    expected = sent * args.clients
    last = max(r["last_ns"] for r in results)
    span = max((last - start) / 1e9, 1e-9)
    lat = array("q")
    for r in results:
        lat.frombytes(r["lat"])
    samples = sorted(lat)
    n = len(samples)

    def pick(q: float) -> float | None:
        return samples[min(n - 1, int(q * n))] / 1e6 if n else None

    gen_cpu = sum(r["cpu_s"] for r in results) / max(r["wall_s"] for r in results)
    return {
        "clients": args.clients,
        "senders": args.senders,
        "sent": sent,
        "expected": expected,
        "delivered": delivered,
        "lost": expected - delivered,
        "disconnected": sum(r["closed"] for r in results),
        "min_count": min(r["min_count"] for r in results),
        "max_count": max(r["max_count"] for r in results),
        "closed_reasons": sorted({x for r in results for x in r["closed_reasons"]}),
        "span_s": span,
        "msgs_per_s": delivered / span,
        "sent_per_s": sent / span,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "p999_ms": pick(0.999),
        "max_ms": samples[-1] / 1e6 if n else None,
        "samples": n,
        "server_cpu": server_cpu / span,
        "gen_cpu": gen_cpu,
        "setup_s": max(r["setup_s"] for r in ready),
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row against python-socketio in the same run."""
    ref = next((r for r in rows if r["kind"] == "socketio" and not r.get("error")), None)
    for row in rows:
        ok = ref is not None and not row.get("error")
        row["vs_sio"] = row["msgs_per_s"] / ref["msgs_per_s"] if ok and ref else None
        p99, ref99 = row.get("p99_ms"), ref.get("p99_ms") if ref else None
        row["p99_vs_sio"] = p99 / ref99 if ok and p99 and ref99 else None


# ---- idle connections --------------------------------------------------------------------


def conns_row(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Open ``--conns`` idle native clients; the hub's memory per client; a fresh client."""
    target = args.conns
    row: dict[str, Any] = {"target": target, "generators": args.generators}
    log(f"connections: {target:,} idle native clients")
    server = start_hub(tmp, max_conns=target + 100, profile=None)
    peers: list[Peer] = []
    try:
        row["hub_nofile"] = server.nofile()
        time.sleep(0.5)
        row["rss0_kib"] = server.rss_kib()
        base = {"host": "127.0.0.1", "port": server.native_port, "room_size": args.room_size,
                "concurrency": 200, "timeout": 30.0, "hold": 180.0}  # fmt: skip
        for first, count in _shares(target, args.generators):
            peers.append(Peer(idle_peer, {**base, "first": first, "count": count}, None))
        ready = [p.expect("ready", time.monotonic() + 150.0) for p in peers]
        row["connected"] = sum(r["connected"] for r in ready)
        row["errors"] = sorted({e for r in ready for e in r["errors"]})[:5]
        row["setup_s"] = max(r["setup_s"] for r in ready)
        time.sleep(1.0)
        row["rss1_kib"] = server.rss_kib()
        row["hub_fds"] = server.fd_count()
        if row["connected"]:
            row["kib_per_client"] = (row["rss1_kib"] - row["rss0_kib"]) / row["connected"]
        fresh = Peer(fresh_peer, {"kind": "native", "host": "127.0.0.1",
                                  "port": server.native_port, "timeout": 10.0}, None)  # fmt: skip
        try:
            row["fresh"] = fresh.expect("result", time.monotonic() + 20.0)
        finally:
            fresh.end()
        for p in peers:
            p.send("stop")
        row["alive"] = sum(p.expect("result", time.monotonic() + 30.0)["alive"] for p in peers)
        if row["connected"] < target or row["errors"]:
            row["server_log"] = server.log_tail()
    except BenchError as exc:
        row["error"] = str(exc).strip().splitlines()[-1]
        row["server_log"] = server.log_tail()
        log(f"[error] connections: {exc}")
    finally:
        for p in peers:
            p.end()
        server.stop()
    return row


# ---- report ------------------------------------------------------------------------------

FANOUT_HEADER = ["implementation", "delivered msgs/s", "vs socketio", "p50 ms", "p99 ms",
                 "p99 vs socketio", "sent", "delivered", "lost", "server CPU",
                 "clients CPU", "other load"]  # fmt: skip
CONNS_HEADER = ["target", "connected", "still open", "hub RSS before", "hub RSS after",
                "per idle client", "hub fds", "fresh client join / ping", "setup"]  # fmt: skip


def _fanout_cells(r: dict[str, Any]) -> list[str]:
    if r.get("error"):
        return [r["label"], "error: " + r["error"][:60], *[""] * (len(FANOUT_HEADER) - 2)]
    lost = f"{r['lost']:,}" + (f" ({r['disconnected']} dropped)" if r["disconnected"] else "")
    return [
        r["label"], fmt_num(r["msgs_per_s"]), fmt_ratio(r["vs_sio"]), fmt_num(r["p50_ms"], 1),
        fmt_num(r["p99_ms"], 1), fmt_ratio(r["p99_vs_sio"]), fmt_num(r["sent"]),
        fmt_num(r["delivered"]), lost, f"{r['server_cpu'] * 100:.0f}%",
        f"{r['gen_cpu'] * 100:.0f}%", _load(r),
    ]  # fmt: skip


def _load(r: dict[str, Any]) -> str:
    rounds = r.get("rounds", 1)
    return f"{r['other_load']:.2f}" + (f" ({rounds} rounds)" if rounds > 1 else "")


def _conns_cells(r: dict[str, Any]) -> list[str]:
    if r.get("error") and "connected" not in r:
        return [fmt_num(r["target"]), "error: " + r["error"][:60], *[""] * 7]
    fresh = r.get("fresh", {})
    fresh_cell = (
        f"{fresh['join_ms']:.1f} / {fresh['ping_ms']:.1f} ms" if fresh.get("ok")
        else "FAILED " + str(fresh.get("error", ""))[:40]
    )  # fmt: skip
    per = r.get("kib_per_client")
    return [
        fmt_num(r["target"]), fmt_num(r["connected"]), fmt_num(r.get("alive")),
        f"{r['rss0_kib'] / 1024:,.1f} MiB", f"{r['rss1_kib'] / 1024:,.1f} MiB",
        "—" if per is None else f"{per:,.1f} KiB", fmt_num(r.get("hub_fds")), fresh_cell,
        f"{r['setup_s']:.1f} s",
    ]  # fmt: skip


def verdicts(report: dict[str, Any]) -> list[Verdict]:
    """The issue's targets."""
    out: list[Verdict] = []
    conns = report.get("connections")
    if conns is not None:
        fresh_ok = conns.get("fresh", {}).get("ok")
        got = conns.get("alive") if fresh_ok else 0
        goal = conns["target"] if report["mode"] == "quick" else 10_000
        out.append(Verdict(f"idle clients in one hub, fresh client served (of {goal:,})",
                           got, goal, True, ""))  # fmt: skip
    rows = {r["kind"]: r for r in report.get("fanout", [])}
    room = f"{report['args'].clients:,}-client room"
    for kind in ("native", "ws"):
        r = rows.get(kind)
        if r is None:
            continue
        name = "native" if kind == "native" else "WebSocket"
        if not report["args"].rate:  # a paced run offers the same rate to all: no throughput
            out.append(
                Verdict(f"{name}: {room} msgs/s vs socketio", r.get("vs_sio"), 3.0, True, "x")
            )
        out += [
            Verdict(f"{name}: p99 latency vs socketio", r.get("p99_vs_sio"), 1.0, False, "x"),
        ]  # fmt: skip
    return out


def _plan(args: argparse.Namespace) -> str:
    mode = f"window {args.window}/sender" if not args.rate else f"{args.rate:g} msgs/s paced"
    return (
        f"{args.clients:,} clients in one room, {args.senders} senders ({mode}), "
        f"{args.size}-char texts, {args.seconds:g} s, {args.generators} client processes"
    )


def print_report(report: dict[str, Any], found: list[Verdict], console: Console) -> None:
    """Tables on stdout."""
    m = report["machine"]
    console.print(
        f"[bold]machine[/bold]: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
        f"uvloop {m['uvloop']}, python-socketio {report['socketio']}, commit {m['commit']}, "
        f"mode {report['mode']}"
    )
    if report.get("fanout"):
        table = Table(title="Fan-out: " + _plan(report["args"]))
        for i, name in enumerate(FANOUT_HEADER):
            table.add_column(name, justify="left" if i == 0 else "right")
        for r in report["fanout"]:
            table.add_row(*_fanout_cells(r))
        console.print(table)
    if report.get("connections"):
        table = Table(title="Idle native clients in one hub process")
        for name in CONNS_HEADER:
            table.add_column(name, justify="right")
        table.add_row(*_conns_cells(report["connections"]))
        console.print(table)
    console.print(verdict_table(found))


def markdown(report: dict[str, Any], found: list[Verdict]) -> str:
    """The tables as markdown for docs/benchmarks.md."""
    m = report["machine"]
    out = [
        f"Measured {report['date']} with `{report['command']}` in {report['seconds']} s on "
        f"{m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, uvloop {m['uvloop']}, "
        f"python-socketio {report['socketio']}, commit {m['commit']}.",
        "",
    ]
    if report.get("fanout"):
        out += [f"**Fan-out: {_plan(report['args'])}**", ""]
        out += _md_table(FANOUT_HEADER, [_fanout_cells(r) for r in report["fanout"]])
    if report.get("connections"):
        out += ["**Idle native clients in one hub process**", ""]
        out += _md_table(CONNS_HEADER, [_conns_cells(report["connections"])])
    out += ["**Targets**", ""]
    out += _md_table(
        ["target", "measured", "goal", "status", "gap"],
        [[v.target, "—" if v.measured is None else f"{v.measured:,.2f}{v.unit}",
          f"{'>=' if v.higher_is_better else '<='} {v.goal:,.2f}{v.unit}",
          f"**{v.status}**", v.gap] for v in found],
    )  # fmt: skip
    return "\n".join(out)


# ---- command line ------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (every value bounded)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run (under a minute)")
    p.add_argument("--json-out", metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the tables as markdown")
    p.add_argument("--only", choices=("fanout", "conns"), help="run one part only")
    p.add_argument(
        "--rows",
        default=",".join(KINDS),
        help="fan-out rows, from native,ws,socketio (default: all three)",
    )
    p.add_argument("--clients", type=int, default=1000, help="room members (1000)")
    p.add_argument("--senders", type=int, default=10, help="members that send (10)")
    p.add_argument("--window", type=int, default=2, help="messages in flight per sender (2)")
    p.add_argument("--rate", type=float, default=0.0, help="paced total msgs/s (0: window)")
    p.add_argument("--seconds", type=float, default=10.0, help="send window (10)")
    p.add_argument("--size", type=int, default=64, help="characters per message text (64)")
    p.add_argument("--sample-every", type=int, default=10, help="latency on every k-th client")
    p.add_argument("--conns", type=int, default=10_000, help="idle clients (10000)")
    p.add_argument("--room-size", type=int, default=50, help="idle clients per room (50)")
    p.add_argument("--generators", type=int, default=2, help="client processes (2)")
    p.add_argument("--max-load", type=float, default=0.25, help="cores others may use (0.25)")
    p.add_argument("--retries", type=int, default=2, help="extra rounds when others load it")
    p.add_argument(
        "--profile", metavar="PATH", help="cProfile the hub's send window: PATH.native, PATH.ws"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.seconds, args.conns = min(args.clients, 300), 2.0, 2000
        args.retries = 0
    args.rows = [r for r in args.rows.split(",") if r]
    bad = [r for r in args.rows if r not in KINDS]
    checks = [
        (not bad, f"--rows: unknown {bad}"),
        (2 <= args.clients <= 5000, "--clients must be 2..5000"),
        (1 <= args.senders <= min(100, args.clients), "--senders must be 1..100 (<= clients)"),
        (1 <= args.window <= 1000, "--window must be 1..1000"),
        (0 <= args.rate <= 1e6, "--rate must be 0..1e6"),
        (0.5 <= args.seconds <= 60, "--seconds must be 0.5..60"),
        (24 <= args.size <= 2000, "--size must be 24..2000"),
        (1 <= args.sample_every <= 1000, "--sample-every must be 1..1000"),
        (1 <= args.conns <= 30_000, "--conns must be 1..30000"),
        (1 <= args.room_size <= 1000, "--room-size must be 1..1000"),
        (1 <= args.generators <= 4, "--generators must be 1..4"),
        (0 <= args.retries <= 5, "--retries must be 0..5"),
    ]
    for ok, message in checks:
        if not ok:
            p.error(message)
    return args


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the parts asked for; print the tables; return the report."""
    args = parse_args(argv)
    started = time.monotonic()
    nofile = raise_nofile()
    report: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": "python bench/chat.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "socketio": importlib.metadata.version("python-socketio"),
        "nofile": nofile,
    }
    import tempfile

    with tempfile.TemporaryDirectory(prefix="opensocket-chat-bench-") as tmp:
        if args.only != "conns":
            rows = [fanout_row(kind, args, Path(tmp)) for kind in args.rows]
            add_ratios(rows)
            report["fanout"] = rows
        if args.only != "fanout":
            report["connections"] = conns_row(args, Path(tmp))
    report["args"] = args
    report["seconds"] = round(time.monotonic() - started, 1)
    found = verdicts(report)
    print_report(report, found, Console(width=180))
    targets = [{**asdict(v), "status": v.status, "gap": v.gap} for v in found]
    report["args"] = vars(args)
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({**report, "targets": targets}, indent=2, default=str) + "\n"
        )
    report["args"] = args
    if args.markdown:
        Path(args.markdown).write_text(markdown(report, found) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    """0 when every part produced numbers (targets never fail the run)."""
    report = run(argv)
    failed = [r for r in report.get("fanout", []) if r.get("error")]
    conns = report.get("connections") or {}
    return 1 if failed or conns.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
