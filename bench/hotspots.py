"""Profile one side of one foundation benchmark and print where its time goes.

    python bench/hotspots.py throughput a 64 --side rx               # cProfile, top 25
    python bench/hotspots.py throughput c2 1024 --side tx --tool py-spy
    python bench/hotspots.py latency uvloop --side rx --tool py-spy
    python bench/hotspots.py stream default --side rx
    python bench/hotspots.py churn opensocket --side tx --quick

The first argument is a section of foundation.py (throughput, latency, stream, churn), the
second a row key there (throughput: a, a', b, c1, c2, c3, d, e, f; latency and stream:
default, uvloop, sync, ...; churn: opensocket, lean, naive), then the message size for
throughput. ``--side rx`` profiles the server (receiver, or echo server), ``--side tx`` the
client. cProfile counts every call (and slows
Python-heavy code down, so shares shift toward Python); py-spy samples without slowing the
program and, with --native, shows time inside C extensions and system calls.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _conns as conns
import foundation as fd
from _harness import Case, PeerFn, run_case


def _profiled(
    pipe: Any, *, _target: PeerFn, _tool: str, _out: str, _native: bool, **params: Any
) -> dict[str, Any]:
    """Run a peer under cProfile, or with py-spy attached to this process."""
    if _tool == "cprofile":
        prof = cProfile.Profile()
        prof.enable()
        try:
            return _target(pipe, **params)
        finally:
            prof.disable()
            prof.dump_stats(_out)
    cmd = ["py-spy", "record", "--pid", str(os.getpid()), "--format", "raw", "-r", "997"]
    cmd += ["-o", _out] + (["--native"] if _native else [])
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # let py-spy attach before the measured work starts
    try:
        return _target(pipe, **params)
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its samples out on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)


def _collapsed_report(path: str, top: int) -> str:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    own_lines: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own_lines[frames[-1]] += count
        own[_function(frames[-1])] += count
        for frame in {_function(f) for f in frames}:
            inclusive[frame] += count
    out = [f"{total} samples", ""]
    for title, counter in (("self", own), ("self, by line", own_lines), ("incl", inclusive)):
        out += [f"{title} %   function"]
        out += [f"{100 * n / total:6.1f}   {name}" for name, n in counter.most_common(top)]
        out += [""]
    return "\n".join(out)


def _function(frame: str) -> str:
    """A py-spy frame without its line number: 'name (file.py:12)' -> 'name (file.py)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})" if where else name


def _find(section: str, key: str) -> fd.Impl:
    if section == "churn":
        clients = {
            "opensocket": conns.churn_client,
            "lean": conns.lean_churn_client,
            "naive": conns.churn_client,
        }
        if key not in clients:
            raise SystemExit(f"churn rows: {', '.join(clients)}")
        return fd.Impl(key, f"churn {key}", conns.idle_server, clients[key])
    impls = {"throughput": fd.THROUGHPUT, "latency": fd.LATENCY, "stream": fd.STREAM}[section]
    for impl in impls:
        if impl.key == key:
            return impl
    raise SystemExit(f"no row {key!r} in {section}; rows: {[i.key for i in impls]}")


def _params(section: str, impl: fd.Impl, size: int, plan: fd.Plan) -> dict[str, Any]:
    if section == "churn":
        return {
            "impl": "naive" if impl.key == "naive" else "opensocket",
            "loop": "default",
            "count": plan.churn,
            "cap": plan.churn_cap,
            "workers": plan.churn_workers,
            "wait": plan.churn_cap + 30.0,
        }
    if section == "throughput":
        return {**impl.params, "size": size, "count": plan.counts[size], "cap": plan.cap}
    if section == "stream":
        return {**impl.params, "size": fd.MIB, "count": plan.stream_messages, "cap": 20.0}
    return {
        **impl.params,
        "size": fd.LATENCY_SIZE,
        "count": plan.lat_count,
        "warmup": plan.lat_warmup,
        "cap": plan.cap,
        "wait": plan.cap + 30.0,
    }


def main(argv: list[str] | None = None) -> int:
    """Profile one side of one benchmark row."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("section", choices=("throughput", "latency", "stream", "churn"))
    parser.add_argument("key")
    parser.add_argument("size", nargs="?", type=int, default=64)
    parser.add_argument("--side", choices=("rx", "tx"), default="rx")
    parser.add_argument("--tool", choices=("cprofile", "py-spy"), default="cprofile")
    parser.add_argument("--native", action="store_true", help="py-spy: include C frames")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="use the --quick counts")
    args = parser.parse_args(argv)
    impl = _find(args.section, args.key)
    plan = fd.QUICK if args.quick else fd.FULL
    params = _params(args.section, impl, args.size, plan)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "profile.out")
        wrap = {"_tool": args.tool, "_out": out, "_native": args.native}
        server, client = impl.server, impl.client
        if args.side == "rx":
            case = Case(_profiled, client, {**params, **wrap, "_target": server}, timeout=120.0)
        else:
            case = Case(server, _profiled, {**params, **wrap, "_target": client}, timeout=120.0)
        if args.section == "latency":
            case.pin = sorted(os.sched_getaffinity(0))[-1]
        server_result, client_result = run_case(_strip(case, args.side))
        print(f"server: {server_result}\nclient: {client_result}\n")
        if args.tool == "cprofile":
            text = io.StringIO()
            stats = pstats.Stats(out, stream=text)
            stats.sort_stats("tottime").print_stats(args.top)
            print(text.getvalue())
        else:
            print(_collapsed_report(out, args.top))
    return 0


def _strip(case: Case, side: str) -> Case:
    """Keep the profiling arguments away from the peer that is not profiled."""
    wrapped = case.server if side == "rx" else case.client
    plain = case.client if side == "rx" else case.server

    def plain_peer(pipe: Any, **params: Any) -> dict[str, Any]:
        clean = {k: v for k, v in params.items() if not k.startswith("_")}
        return plain(pipe, **clean)

    if side == "rx":
        return Case(wrapped, plain_peer, case.params, case.pin, case.timeout)
    return Case(plain_peer, wrapped, case.params, case.pin, case.timeout)


if __name__ == "__main__":
    sys.exit(main())
