"""``opensocket bench URL``: an iperf3-like client, and ``opensocket bench serve``: its server.

Throughput over TCP, TLS and UDP (loss, jitter and reordering like iperf3), parallel streams,
reverse mode, and message rate / round-trip latency over the framed protocol. ``--json``
prints the result document (schema opensocket.bench/1); ``--plot`` draws it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, Final

from ..errors import ConfigError
from ..tools._bench_proto import parse_size
from ..tools.bench import DEFAULT_PORT, BenchResult, BenchServer, run_client
from ._common import add_tls_args, check_positive, print_json, tls_from

__all__ = ["HELPS", "configure", "execute"]

HELP: Final = "measure throughput, loss, message rate and latency against a bench server"
HELPS: Final = {"bench": HELP, "bench serve": "run a bench server (like iperf3 -s)"}

CLIENT_EPILOG: Final = f"""\
examples:
  opensocket bench tcp://127.0.0.1:{DEFAULT_PORT}                 10 s TCP throughput
  opensocket bench tcp://host:{DEFAULT_PORT} -P 4 -t 5 -l 1M      4 streams, 5 s, 1 MiB writes
  opensocket bench tcp://host:{DEFAULT_PORT} -R                   the server sends
  opensocket bench udp://host:{DEFAULT_PORT} -b 100M              UDP at 100 Mbit/s: loss, jitter
  opensocket bench tls://host:{DEFAULT_PORT} --tls-ca ca.pem      TLS throughput
  opensocket bench tcp://host:{DEFAULT_PORT} --mode rtt --plot rtt.png
  opensocket bench tcp://host:{DEFAULT_PORT} --mode rate -l 64 --json

Sizes take K/M/G suffixes (binary: 128K = 131072 bytes); bitrates too (decimal bits/s:
100M = 100,000,000). Exit status: 0 done, 1 failed (no server, TLS, refused), 2 bad options.
"""

SERVE_EPILOG: Final = f"""\
examples:
  opensocket bench serve                                  tcp://*:{DEFAULT_PORT}
  opensocket bench serve --listen tcp://127.0.0.1:0 -1    one test, then exit
  opensocket bench serve --listen tls://*:{DEFAULT_PORT} --tls-cert cert.pem --tls-key key.pem

One test runs at a time (like iperf3; others are told the server is busy) unless
--max-tests says more. UDP and framed-protocol tests use the same address; throughput data
streams use an ephemeral port the server opens for each test.
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
    parser.add_argument("url", metavar="URL", help="the bench server: tcp://, tls:// or udp://")
    add = parser.add_argument
    add("-t", "--time", type=float, default=10.0, metavar="SECONDS", help="duration (10)")
    add("-i", "--interval", type=float, default=1.0, metavar="SECONDS", help="report every (1)")
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
    check_positive(args.time, "-t/--time")
    check_positive(args.interval, "-i/--interval")
    check_positive(args.connect_timeout, "--connect-timeout")
    length = int(parse_size(args.length, "-l/--length")) if args.length else 0
    bitrate = parse_size(args.bitrate, "-b/--bitrate", rate=True) if args.bitrate else None
    scheme = args.url.partition("://")[0].lower() if "://" in args.url else "tcp"
    protocol = "udp" if args.udp else scheme
    if args.udp and scheme == "tls":
        raise ConfigError("-u/--udp and a tls:// URL do not mix: UDP tests are not encrypted")
    tls = tls_from(args, server=False)
    if tls is not None and protocol != "tls":
        raise ConfigError("TLS options apply to tls:// URLs only")
    if args.plot:
        from ..tools.bench_plot import _pyplot

        _pyplot()  # matplotlib missing: say so before the test, not after it
    on_interval = None if args.json else _IntervalPrinter(args.parallel).print
    if not args.json:
        print(f"Connecting to {args.url} ({protocol} {args.mode}, {args.parallel} stream(s))")
    result = run_client(
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
        tls=tls,
        connect_timeout=args.connect_timeout,
        on_interval=on_interval,
    )
    if args.plot:
        from ..tools.bench_plot import plot_result

        plot_result(result, args.plot)
    if args.json:
        print_json(result.data)
    else:
        print("\n".join(summary_lines(result)))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


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


def _counts(entry: dict[str, Any]) -> str:
    text = f"{_bytes(entry['bytes'])}  {_rate(entry['bits_per_second'])}"
    if entry["packets"] is not None:
        text += f"  {entry['packets']:>9} packets"
    return text


class _IntervalPrinter:
    def __init__(self, streams: int) -> None:
        self.streams = streams
        self.header = False

    def print(self, record: dict[str, Any]) -> None:
        if not self.header:
            print("[ ID] Interval           Transfer     Bitrate")
            self.header = True
        span = f"{record['start']:6.2f}-{record['end']:<6.2f} sec"
        rows = record["streams"] if self.streams > 1 else []
        for stream in rows:
            print(f"[{stream['id']:3d}] {span} {_counts(stream)}")
        label = "SUM" if self.streams > 1 else f"{record['streams'][0]['id']:3d}"
        print(f"[{label}] {span} {_counts(record['sum'])}")
        sys.stdout.flush()


def summary_lines(result: BenchResult) -> list[str]:
    """The end-of-test summary, iperf3 style."""
    end = result.data["end"]
    lines = ["- - - - - - - - - - - - - - - - - - - - - - - - -"]
    for role in ("sender", "receiver"):
        side = end[role]
        line = (
            f"[SUM]   0.00-{side['seconds']:<6.2f} sec {_bytes(side['bytes'])}  "
            f"{_rate(side['bits_per_second'])}  {role}"
        )
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
        raise ConfigError("--max-tests must be at least 1")
    urls = args.listen or [f"tcp://*:{DEFAULT_PORT}"]
    finished = threading.Event()

    def on_result(peer: str, result: BenchResult) -> None:
        if args.json:
            print_json({"peer": peer, **result.data})
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
            print(f"bench server listening on {addresses}", flush=True)
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
