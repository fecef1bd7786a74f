"""``opensocket ping``: ICMP echo like iputils ping; TCP or UDP echo when ICMP is blocked."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any, Final

from ..errors import ConfigError, NameResolutionError
from ..tools._icmp import PingError, PingEvent, PingReply, PingTimeout, format_ms
from ..tools.ping import MIN_INTERVAL, Mode, Pinger
from ._common import check_at_least, check_positive, print_json

NAME: Final = "ping"
HELP: Final = "ping a host: ICMP echo, TCP connect (--tcp PORT) or UDP echo (--udp PORT)"

_EPILOG: Final = """\
modes:
  ICMP echo (default) uses a raw socket (root or CAP_NET_RAW), else the unprivileged ICMP
  socket when net.ipv4.ping_group_range allows it. --tcp PORT times a TCP connect (the
  handshake, then a normal close); a closed port answers with RST, which is printed as an
  error and counts as no reply, like tcping and paping (it proves the host is up, not the
  service). --udp PORT sends datagrams to an opensocket UDP echo server
  ('opensocket echo serve udp://HOST:PORT'); a closed UDP port answers with ICMP port
  unreachable, an error.

output and exit code as with iputils ping: one line per reply, then
  N packets transmitted, M received, X% packet loss, time Tms
  rtt min/avg/max/mdev = a/b/c/d ms
Ctrl-C ends the run with the summary. Exit code 0 when any reply came back, 1 when none did,
2 for bad options, a host that does not resolve, or an address of the other family than
-4/-6 ask for. Times come from kernel receive timestamps. A probe without an answer within
-W seconds is lost ('no answer yet for icmp_seq=N'); later answers are ignored.

interval: -i 0 sends the next probe as soon as the previous one is sent (no wait for the
answer). Below 0.002 s (iputils' floor for users) -c is required, so a fast run always ends.

sizes: -s is the payload. ICMP lines count the ICMP message (payload + 8); UDP lines and
the UDP banner count the UDP datagram's payload (opensocket's 8-byte probe header + -s).
-s and --icmp-socket do not apply to --tcp (it times a connect: no payload, no ICMP).

--json: one object per reply, error or timeout, then the summary (with -q: the summary
only); the summary's rtt_ms is null when no reply came back.

examples:
  opensocket ping 127.0.0.1 -c 4
  opensocket ping -6 localhost -c 3 -i 0.2
  opensocket ping example.com --tcp 443 -c 5
  opensocket echo serve udp://127.0.0.1:9000 &  opensocket ping 127.0.0.1 --udp 9000 -c 3
  opensocket ping 127.0.0.1 -c 10 -i 0.01 -q --json   # one line: the summary
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ping`` (iputils names where they exist)."""
    parser.epilog = _EPILOG
    parser.add_argument("host", metavar="HOST", help="host name or IP address")
    parser.add_argument("-c", "--count", type=int, metavar="COUNT", help="stop after COUNT probes")
    parser.add_argument(
        "-i",
        "--interval",
        type=float,
        default=1.0,
        metavar="INTERVAL",
        help=f"seconds between probes (default: 1; below {MIN_INTERVAL:g} only with -c)",
    )
    parser.add_argument(
        "-W",
        "--timeout",
        type=float,
        default=2.0,
        metavar="TIMEOUT",
        help="seconds to wait for each answer (default: 2)",
    )
    parser.add_argument(
        "-s",
        "--size",
        type=int,
        metavar="SIZE",
        help="payload bytes (default: 56; ICMP and UDP probes add an 8-byte header)",
    )
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    family.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tcp", type=int, metavar="PORT", help="time TCP connects to PORT")
    mode.add_argument(
        "--udp", type=int, metavar="PORT", help="ping an opensocket UDP echo server on PORT"
    )
    parser.add_argument(
        "--icmp-socket",
        choices=("auto", "raw", "dgram"),
        help="ICMP socket kind (default: auto: raw, else unprivileged datagram)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only the summary")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per answer, then the summary"
    )
    # -4/-6 make argparse read every negative number as an option, so '-i -1' would not
    # parse at all; exact options still match before this rule applies.
    parser._has_negative_number_optionals.clear()


def _family(args: argparse.Namespace) -> int:
    return {4: socket.AF_INET, 6: socket.AF_INET6}.get(args.family or 0, 0)


def _mode(args: argparse.Namespace) -> Mode:
    return "tcp" if args.tcp is not None else "udp" if args.udp is not None else "icmp"


def _check(args: argparse.Namespace) -> None:
    """Option errors naming the flag typed (the library names its keyword arguments)."""
    check_at_least(args.count, "-c/--count", 1)
    if args.interval < 0:
        raise ConfigError(f"-i/--interval must be >= 0 seconds (got {args.interval:g})")
    if args.interval < MIN_INTERVAL and args.count is None:
        raise ConfigError(
            f"-i/--interval below {MIN_INTERVAL:g} s needs -c COUNT, or the ping floods "
            f"without end (got {args.interval:g})"
        )
    check_positive(args.timeout, "-W/--timeout")
    limit = 65507 - 8 if args.udp is not None else 65507  # an IPv4 datagram's room
    if args.size is not None and not 0 <= args.size <= limit:
        raise ConfigError(f"-s/--size must be between 0 and {limit} bytes (got {args.size})")
    if _mode(args) == "tcp":
        flags = (("-s/--size", args.size), ("--icmp-socket", args.icmp_socket))
        given = [flag for flag, value in flags if value is not None]
        if given:
            verb = "does" if len(given) == 1 else "do"
            raise ConfigError(
                f"{' and '.join(given)} {verb} not apply to --tcp "
                "(it times a connect: no payload, no ICMP)"
            )
    if args.udp is not None and args.icmp_socket is not None:
        raise ConfigError("--icmp-socket applies to ICMP pings only, not to --udp")


def _pinger(args: argparse.Namespace) -> Pinger:
    mode = _mode(args)
    return Pinger(
        args.host,
        count=args.count,
        interval=args.interval,
        timeout=args.timeout,
        size=56 if args.size is None else args.size,
        mode=mode,
        port=args.tcp if args.tcp is not None else args.udp,
        family=_family(args),
        icmp_socket=args.icmp_socket or "auto",
    )


def _banner(pinger: Pinger) -> str:
    target = pinger.target
    name, size = target.host, pinger.report.size
    if pinger.report.mode == "tcp":
        return f"PING {name} ({target.address}) port {target.port}: TCP connect"
    if pinger.report.mode == "udp":
        return f"PING {name} ({target.address}) port {target.port}: UDP echo, {size + 8} bytes"
    if target.v6:
        return f"PING {name}({target.address}) {size} data bytes"
    return f"PING {name} ({target.address}) {size}({size + 28}) bytes of data."


def _line(pinger: Pinger, event: PingEvent) -> str:
    mode, target = pinger.report.mode, pinger.target
    tag = {"icmp": "icmp_seq", "udp": "udp_seq", "tcp": "tcp_seq"}[mode]
    if isinstance(event, PingReply):
        if mode == "tcp":
            text = f"connected to {event.address} port {target.port}: {tag}={event.seq}"
        elif mode == "udp":
            text = f"{event.size} bytes from {event.address} port {target.port}: {tag}={event.seq}"
        else:
            text = f"{event.size} bytes from {event.address}: {tag}={event.seq}"
        if event.ttl is not None:
            text += f" ttl={event.ttl}"
        text += f" time={format_ms(event.rtt_us)} ms"
        return text + (" (DUP!)" if event.duplicate else "")
    if isinstance(event, PingError):
        return f"From {event.address or target.address} {tag}={event.seq} {event.message}"
    return f"no answer yet for {tag}={event.seq}"


def _json_event(event: PingEvent) -> dict[str, Any]:
    if isinstance(event, PingReply):
        out: dict[str, Any] = {
            "event": "reply",
            "seq": event.seq,
            "from": event.address,
            "bytes": event.size,
            "ttl": event.ttl,
            "time_ms": event.rtt_ms,
        }
        if event.duplicate:
            out["duplicate"] = True
        return out
    if isinstance(event, PingError):
        rtt = None if event.rtt_us is None else event.rtt_us / 1000
        return {
            "event": "error",
            "seq": event.seq,
            "from": event.address,
            "message": event.message,
            "time_ms": rtt,
        }
    assert isinstance(event, PingTimeout)
    return {"event": "timeout", "seq": event.seq}


def _run(args: argparse.Namespace, pinger: Pinger) -> bool:
    """Print the events; return True when interrupted by Ctrl-C."""
    try:
        for event in pinger:
            if args.json:
                if not args.quiet:
                    print_json(_json_event(event))
            elif not args.quiet or isinstance(event, PingError):
                print(_line(pinger, event), flush=True)
    except KeyboardInterrupt:
        return True
    return False


def execute(args: argparse.Namespace) -> int:
    """Ping until COUNT probes are answered or lost (or Ctrl-C); print the summary."""
    _check(args)
    try:
        pinger = _pinger(args)
    except NameResolutionError as exc:
        # iputils exits 2 when the host does not resolve: it is the command line that is wrong
        raise ConfigError(str(exc)) from exc
    with pinger:
        if not args.json:
            print(_banner(pinger), flush=True)
        interrupted = _run(args, pinger)
    report = pinger.report
    code = 0 if report.ok else 1
    if args.json:
        print_json({"event": "summary", **report.as_dict(), "exit": code})
        return code
    if interrupted and sys.stdout.isatty():
        print()
    print(f"\n--- {pinger.target.host} ping statistics ---")
    print("\n".join(report.stats.summary_lines(report.elapsed_ms)), flush=True)
    return code
