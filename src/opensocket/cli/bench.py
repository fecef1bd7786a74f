"""``opensocket bench URL``: an iperf3-like client, and ``opensocket bench serve``: its server.

Throughput over TCP, TLS and UDP (loss, jitter and reordering like iperf3), parallel streams,
reverse mode, and message rate / round-trip latency over the framed protocol. ``--json``
prints the result document (schema opensocket.bench/1); ``--plot`` draws it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any, Final

from ..errors import ConfigError, OpenSocketError
from ..tools._bench_proto import SCHEMA, BenchParams, parse_size
from ..tools.bench import (
    DEFAULT_PORT,
    HANDSHAKE_TIMEOUT,
    BenchResult,
    BenchServer,
    bench_address,
    make_params,
    run_client,
)
from ._common import add_tls_args, check_positive, print_json, tls_from

__all__ = ["HELPS", "configure", "execute"]

HELP: Final = "measure throughput, loss, message rate and latency against a bench server"
HELPS: Final = {"bench": HELP, "bench serve": "run a bench server (like iperf3 -s)"}

CLIENT_EPILOG: Final = f"""\
examples:
  opensocket bench 127.0.0.1                     10 s TCP throughput to port {DEFAULT_PORT}
  opensocket bench host:5300 -P 4 -t 5 -l 1M     4 streams, 5 s, 1 MiB writes, port 5300
  opensocket bench host -R                       the server sends
  opensocket bench udp://host -b 100M            UDP at 100 Mbit/s: loss, jitter
  opensocket bench tls://host --tls-ca ca.pem    TLS throughput
  opensocket bench host --mode rtt --plot rtt.png
  opensocket bench host --mode rate -l 64 -i 0 --json

URL is HOST[:PORT] (tcp) or tcp://, tls://, udp:// HOST[:PORT]; the port defaults to
{DEFAULT_PORT}. Sizes take K/M/G suffixes (binary: 128K = 131072 bytes); bitrates too (decimal
bits/s: 100M = 100,000,000). Ctrl-C prints the summary so far. Exit status: 0 done, 1 failed
(no server, not a bench server, TLS, refused; or the --plot file could not be written after
the results were printed), 2 bad options (a --plot folder that is missing or not writable is
found before the test), 130 interrupted.
"""

SERVE_EPILOG: Final = f"""\
examples:
  opensocket bench serve                                  tcp://*:{DEFAULT_PORT}
  opensocket bench serve --listen tcp://127.0.0.1:0 -1    one test, then exit
  opensocket bench serve --listen tls://*:{DEFAULT_PORT} --tls-cert cert.pem --tls-key key.pem

One test runs at a time (like iperf3; others are told the server is busy) unless
--max-tests says more. Every test uses the listen port only, as iperf3 does: TCP and TLS
data streams connect to it, UDP streams use the same port number over UDP. Behind a
firewall, open that port for TCP and (for UDP tests) UDP.
"""


def configure(parser: argparse.ArgumentParser, name: str = "bench") -> None:
    """The options of ``bench`` or ``bench serve``."""
    if name == "bench serve":
        _configure_serve(parser)
    else:
        _configure_client(parser)
    parser.add_argument("--json", action="store_true", help="print results as JSON")


def _configure_client(parser: argparse.ArgumentParser) -> None:
    parser.epilog = CLIENT_EPILOG
    parser.add_argument(
        "url",
        metavar="URL",
        help=f"the bench server: HOST[:PORT], tcp://, tls:// or udp:// (port {DEFAULT_PORT})",
    )
    add = parser.add_argument
    add("-t", "--time", type=float, default=10.0, metavar="SECONDS", help="duration (10)")
    add(
        "-i",
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="report every (1); 0 turns interval reports off",
    )
    add("-P", "--parallel", type=int, default=1, metavar="N", help="parallel streams (1)")
    add(
        "-l",
        "--length",
        default=None,
        metavar="BYTES",
        help="write size (128K), UDP datagram size (1400) or message size (64)",
    )
    add(
        "-b",
        "--bitrate",
        default=None,
        metavar="BITS",
        help="target bits/s per stream; 0 for unlimited (UDP default 1M, else unlimited)",
    )
    add("-R", "--reverse", action="store_true", help="the server sends, the client receives")
    add("-u", "--udp", action="store_true", help="UDP throughput (same as a udp:// URL)")
    add(
        "--no-gso",
        action="store_true",
        help="UDP: one datagram per system call, as iperf3 does (default: up to 64 per call "
        "with UDP GSO where the kernel supports it)",
    )
    add(
        "--mode",
        choices=("throughput", "rate", "rtt"),
        default="throughput",
        help="throughput (default); rate: framed messages/s; rtt: round-trip latency",
    )
    add("--plot", metavar="FILE.png", help="draw throughput (and latency) to a PNG file")
    add(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up connecting after (10)",
    )
    add_tls_args(parser, server=False)


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.epilog = SERVE_EPILOG
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="URL",
        help=f"address to listen on, repeatable (default: tcp://*:{DEFAULT_PORT})",
    )
    parser.add_argument(
        "--max-tests", type=int, default=1, metavar="N", help="tests at once (default: 1)"
    )
    parser.add_argument(
        "-1", "--one-off", action="store_true", help="exit after one test (like iperf3 -1)"
    )
    add_tls_args(parser, server=True)


def execute(args: argparse.Namespace) -> int:
    """Run the client or the server."""
    if args.command == "bench serve":
        return _serve(args)
    return _client(args)


# ---- client --------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> int:
    """Check every option, then print the banner and run the test (iperf3's order)."""
    check_positive(args.time, "-t/--time")
    check_positive(args.connect_timeout, "--connect-timeout")
    length = int(parse_size(args.length, "-l/--length")) if args.length else 0
    bitrate = parse_size(args.bitrate, "-b/--bitrate", rate=True) if args.bitrate else None
    scheme = bench_address(args.url).scheme
    if args.udp and scheme == "tls":
        raise ConfigError("-u/--udp and a tls:// URL do not mix: UDP tests are not encrypted")
    protocol = "udp" if args.udp else scheme
    tls = tls_from(args, server=False)
    if tls is not None and protocol != "tls":
        raise ConfigError("TLS options (--tls-*) apply to tls:// URLs only: use tls://HOST:PORT")
    addr, params = make_params(
        args.url,
        protocol=protocol,
        mode=args.mode,
        streams=args.parallel,
        duration=args.time,
        interval=args.interval,
        length=length,
        bitrate=bitrate,
        reverse=args.reverse,
        gso=not args.no_gso,
    )
    if args.plot:
        from ..tools.bench_plot import _pyplot

        _pyplot()  # matplotlib missing: say so before the test, not after it
        _check_plot_path(args.plot)
    printer = _IntervalPrinter(params, show=not args.json and params.interval > 0)
    if not args.json:
        print(
            f"Connecting to {protocol}://{addr.hostport} "
            f"({protocol} {params.mode}, {params.streams} stream(s))",
            flush=True,
        )
    try:
        result = run_client(
            args.url,
            protocol=protocol,
            mode=params.mode,
            streams=params.streams,
            duration=params.duration,
            interval=params.interval,
            length=params.length,
            bitrate=params.bitrate,
            reverse=params.reverse,
            gso=params.gso,
            tls=tls,
            connect_timeout=args.connect_timeout,
            handshake_timeout=min(args.connect_timeout, HANDSHAKE_TIMEOUT),
            on_interval=printer.print,
        )
    except KeyboardInterrupt:
        _interrupted(printer, args.json)
        return 130
    if args.json:
        print_json(result.data)
    else:
        print("\n".join(summary_lines(result)), flush=True)
    return _plot(result, args.plot, quiet=args.json) if args.plot else 0


def _check_plot_path(path: str) -> None:
    """ConfigError unless the PNG can be written: found out before the test, not after it."""
    if os.path.isdir(path):
        raise ConfigError(f"--plot {path} is a folder: give a file name such as {path}/bench.png")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(
            f"--plot: the folder {folder} does not exist: create it or choose another path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--plot: cannot write in {folder} (permission denied)")


def _plot(result: BenchResult, path: str, *, quiet: bool) -> int:
    """Draw the PNG once the result is out; a failure now is a warning (exit 1), since the
    measurements were already printed."""
    from ..tools.bench_plot import plot_result

    try:
        plot_result(result, path)
    except OpenSocketError as exc:
        print(f"opensocket bench: warning: {exc} (the results above are complete)", file=sys.stderr)
        return 1
    if not quiet:
        print(f"plot written to {path}")
    return 0


def _interrupted(printer: _IntervalPrinter, as_json: bool) -> None:
    """Ctrl-C: the summary of the intervals measured so far, as iperf3 prints it."""
    records = printer.records
    total = sum(r["sum"]["bytes"] for r in records)
    seconds = records[-1]["end"] if records else 0.0
    role = "receiver" if printer.params.reverse else "sender"
    print("opensocket bench: interrupted", file=sys.stderr)
    if as_json:
        print_json(
            {
                "schema": SCHEMA,
                "interrupted": True,
                "params": printer.params.to_dict(),
                "intervals": records,
                "exit": 130,
            }
        )
        return
    print("- - - - - - - - - - - - - - - - - - - - - - - - -")
    if not records:
        print("interrupted before the first interval report: nothing to summarise")
        return
    bps = total * 8 / seconds if seconds > 0 else 0.0
    print(
        f"[SUM]   0.00-{seconds:<6.2f} sec {_bytes(total)}  {_rate(bps)}  {role} "
        "(interrupted: the intervals reported so far)",
        flush=True,
    )


def _rate(bps: float) -> str:
    for unit, scale in (("Gbits/sec", 1e9), ("Mbits/sec", 1e6), ("Kbits/sec", 1e3)):
        if bps >= scale:
            return f"{bps / scale:7.2f} {unit}"
    return f"{bps:7.2f} bits/sec"


def _bytes(n: float) -> str:
    for unit, scale in (("GBytes", 1024**3), ("MBytes", 1024**2), ("KBytes", 1024)):
        if n >= scale:
            return f"{n / scale:7.2f} {unit}"
    return f"{n:7.0f} Bytes "


def _unit(params: dict[str, Any]) -> str:
    """What the packet counts count: messages (rate/rtt) or datagrams (UDP)."""
    return "messages" if params["mode"] != "throughput" else "datagrams"


def _counts(entry: dict[str, Any], unit: str) -> str:
    text = f"{_bytes(entry['bytes'])}  {_rate(entry['bits_per_second'])}"
    if entry["packets"] is not None:
        text += f"  {entry['packets']:>9} {unit}"
    return text


class _IntervalPrinter:
    """Keeps every interval record (for Ctrl-C) and prints them unless ``show`` is false."""

    def __init__(self, params: BenchParams, *, show: bool) -> None:
        self.params, self.show = params, show
        self.unit = _unit(params.to_dict())
        self.records: list[dict[str, Any]] = []
        self.header = False

    def print(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if not self.show:
            return
        if not self.header:
            print("[ ID] Interval           Transfer     Bitrate")
            self.header = True
        span = f"{record['start']:6.2f}-{record['end']:<6.2f} sec"
        rows = record["streams"] if self.params.streams > 1 else []
        for stream in rows:
            print(f"[{stream['id']:3d}] {span} {_counts(stream, self.unit)}")
        label = "SUM" if self.params.streams > 1 else f"{record['streams'][0]['id']:3d}"
        print(f"[{label}] {span} {_counts(record['sum'], self.unit)}")
        sys.stdout.flush()


def summary_lines(result: BenchResult) -> list[str]:
    """The end-of-test summary, iperf3 style."""
    end = result.data["end"]
    unit = _unit(result.data["start"]["params"])
    lines = ["- - - - - - - - - - - - - - - - - - - - - - - - -"]
    for role in ("sender", "receiver"):
        side = end[role]
        line = (
            f"[SUM]   0.00-{side['seconds']:<6.2f} sec {_bytes(side['bytes'])}  "
            f"{_rate(side['bits_per_second'])}  {role}"
        )
        if side["packets"] is not None and unit == "messages":
            line += f"  {side['packets']} messages"
        if role == "receiver" and "lost" in side:
            line += (
                f"  jitter {side['jitter_ms']:.3f} ms  lost {side['lost']}/{side['expected']} "
                f"({side['lost_percent']:.2g}%)  out of order {side['out_of_order']}"
            )
        lines.append(line)
    if end["messages_per_second"] is not None:
        lines.append(f"messages: {end['messages_per_second']:,.0f}/s")
    latency = end["latency"]
    if latency:
        lines.append(
            "latency: "
            + "  ".join(
                f"{k[:-3]} {latency[k]:.3f} ms"
                for k in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")
            )
            + f"  ({latency['count']} round trips)"
        )
    return lines


# ---- server --------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    if args.max_tests < 1:
        raise ConfigError(f"--max-tests must be at least 1 (got {args.max_tests})")
    urls = args.listen or [f"tcp://*:{DEFAULT_PORT}"]
    finished = threading.Event()

    def on_result(peer: str, result: BenchResult) -> None:
        if args.json:
            scheme = result.data["start"]["params"]["protocol"]
            print_json({"peer": f"{scheme}://{peer}", **result.data})
        else:
            params = result.data["start"]["params"]
            print(
                f"test from {peer}: {params['protocol']} {params['mode']}, "
                f"{params['streams']} stream(s){', reverse' if params['reverse'] else ''}"
            )
            print("\n".join(summary_lines(result)[1:]), flush=True)
        if args.one_off:
            finished.set()

    def on_error(peer: str, message: str) -> None:
        print(f"test from {peer} failed: {message}", file=sys.stderr, flush=True)
        if args.one_off:
            finished.set()

    server = BenchServer(
        urls,
        tls=tls_from(args, server=True),
        max_tests=args.max_tests,
        on_result=on_result,
        on_error=on_error,
    ).start()
    previous = _stop_on_sigterm(finished)
    try:
        addresses = ", ".join(map(str, server.addresses))
        if args.json:
            print_json({"listening": [str(a) for a in server.addresses]})
        else:
            print(f"bench server listening on {addresses}\npress Ctrl-C to stop", flush=True)
        while not finished.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _stop_on_sigterm(finished: threading.Event) -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda *_: finished.set())
