"""``opensocket scan``: a TCP connect (or UDP) port scanner, like ``nmap -sT`` / ``nmap -sU``.

Output: a table per host (default), one JSON document (``--json``) or nmap's grep-able lines
(``--grep``, as ``nmap -oG -``). A progress bar goes to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import sys
from collections.abc import Iterator
from typing import Final

from .. import __version__, aio
from ..errors import ConfigError
from ..tools.scan import (
    DEFAULT_BANNER_TIMEOUT,
    DEFAULT_CONCURRENCY,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    LIST_CLOSED_UP_TO,
    HostReport,
    PortResult,
    PortState,
    Progress,
    ScanReport,
    scan,
)
from ._common import add_uvloop_arg, check_at_least, check_positive, print_json

__all__ = ["HELP", "NAME", "configure", "execute", "format_grep", "format_table"]

NAME: Final = "scan"
HELP: Final = "scan ports: TCP connect (like nmap -sT) or UDP (--udp), with banners and JSON"
BANNER_WIDTH: Final = 60

_EPILOG: Final = """\
targets: host names, IPv4/IPv6 addresses, ranges (127.0.0.1-5, 127.0.0.1-127.0.0.9) and CIDR
blocks (127.0.0.0/30, one address per host as nmap does). Ports: 22,80,8000-8100, '-' for
all 65535, -1024, 60000-, or service names as printed (ssh,http-proxy); -p may be repeated
(the lists are merged). Without --ports: 1-1024 and the well-known ports above 1024 (TCP),
or the well-known UDP ports (--udp). Host names resolve to IPv4 first, as with nmap; -6
scans their IPv6 address instead, and -4/-6 skip literal addresses of the other family.

output: closed ports are listed (table and --json "closed_ports") when at most 25 ports
were scanned, or always with --show-closed; otherwise they are counted. --json has the
scanned ports as a compact spec ("scanned": "1-1024,8080"). The BANNER column appears
with --banner.

states: open (connected / UDP answered), closed (refused / ICMP port unreachable), filtered
(no answer after --retries, or an ICMP unreachable), open|filtered (UDP: silence). A port that
does not answer is probed again before it is called filtered: a full listen backlog drops
SYNs too. Remote hosts rate-limit ICMP (Linux: about one port-unreachable per second), so a
UDP scan beyond loopback needs --rate and patience, as with nmap -sU.

exit code 0 when the scan completed (whatever the states), 1 when no target resolved, 2 for
a bad target, port spec or option.

examples:
  opensocket scan 127.0.0.1                        # the default ports
  opensocket scan localhost -p 22,80,8000-8100
  opensocket scan localhost -p ssh,http-proxy -p 9000   # names as scan prints them
  opensocket scan 127.0.0.1 -p- --open             # every port, only open ones shown
  opensocket scan ::1 127.0.0.1-3 -p 1-1024 --json
  opensocket scan 127.0.0.1 -p 22,25,80 --banner   # read what each open port says first
  opensocket scan 127.0.0.1 -p- --grep | grep /open/
  opensocket scan 127.0.0.1 --udp -p 53,123,5353   # closed ports answer ICMP unreachable
  opensocket scan 127.0.0.1 -p- --rate 2000 --concurrency 100   # gentle
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``scan``."""
    parser.epilog = _EPILOG
    parser.add_argument("targets", nargs="+", metavar="TARGET", help="hosts, ranges or CIDRs")
    parser.add_argument(
        "-p",
        "--ports",
        metavar="SPEC",
        action="append",
        help="ports: 22,80,8000-8100, '-' for all; repeatable (default: well-known)",
    )
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    family.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    parser.add_argument("--udp", action="store_true", help="UDP scan instead of TCP connect")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"wait this long for an answer to each probe (default: {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        metavar="N",
        help=f"probe an unanswered port N more times (default: {DEFAULT_RETRIES})",
    )
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"probes awaiting an answer at once (default: {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        metavar="PPS",
        help="at most PPS probes per second (default: no limit)",
    )
    parser.add_argument("--banner", action="store_true", help="read what open TCP ports send first")
    parser.add_argument(
        "--banner-timeout",
        type=float,
        default=DEFAULT_BANNER_TIMEOUT,
        metavar="S",
        help=f"wait this long for a banner (default: {DEFAULT_BANNER_TIMEOUT:g})",
    )
    parser.add_argument("--open", action="store_true", help="show only open ports")
    parser.add_argument(
        "--show-closed",
        action="store_true",
        help=f"list closed ports too (default: only when at most {LIST_CLOSED_UP_TO} are scanned)",
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON document")
    out.add_argument("--grep", action="store_true", help="grep-able lines (like nmap -oG -)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_uvloop_arg(parser)
    # -4/-6 make argparse read every negative number as an option: '-p -1024' and
    # '--retries -1' would not parse. Exact options still match before this rule applies.
    parser._has_negative_number_optionals.clear()


def execute(args: argparse.Namespace) -> int:
    """Run the scan and print the report."""
    check_positive(args.timeout, "--timeout")
    check_positive(args.rate, "--rate")
    check_positive(args.banner_timeout, "--banner-timeout")
    check_at_least(args.concurrency, "-c/--concurrency", 1)
    check_at_least(args.retries, "--retries", 0)
    if args.open and args.show_closed:
        raise ConfigError("--open and --show-closed contradict each other: choose one")
    _raise_fd_limit(args.concurrency)
    with _progress_bar(args) as progress:
        report = aio.run(_scan(args, progress), use_uvloop=not args.no_uvloop)
    for target, why in report.unresolved:
        print(f"opensocket scan: warning: skipped {target}: {why}", file=sys.stderr)
    show_closed = True if args.show_closed else None
    if args.json:
        print_json(report.to_dict(open_only=args.open, show_closed=show_closed))
    elif args.grep:
        sys.stdout.write(format_grep(report, open_only=args.open))
    else:
        table = format_table(
            report, open_only=args.open, show_closed=args.show_closed, banner=args.banner
        )
        sys.stdout.write(table)
    sys.stdout.flush()
    return 0


_FAMILIES: Final = {0: 0, 4: socket.AF_INET, 6: socket.AF_INET6}


async def _scan(args: argparse.Namespace, progress: Progress | None) -> ScanReport:
    return await scan(
        args.targets,
        ",".join(args.ports) if args.ports else None,
        timeout=args.timeout,
        concurrency=args.concurrency,
        rate=args.rate,
        retries=args.retries,
        banner=args.banner,
        banner_timeout=args.banner_timeout,
        udp=args.udp,
        family=_FAMILIES[args.family or 0],
        progress=progress,
    )


def _raise_fd_limit(concurrency: int) -> None:
    """Each probe in flight holds a descriptor: lift the soft limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = concurrency + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


@contextlib.contextmanager
def _progress_bar(args: argparse.Namespace) -> Iterator[Progress | None]:
    """A rich progress bar on stderr, only on a terminal (never in pipes, logs or tests)."""
    if args.no_progress or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    bar = Bar(
        "scanning",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("scan", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


# ---- output ----------------------------------------------------------------------------------


def _banner_text(banner: bytes | None, width: int = BANNER_WIDTH) -> str:
    """The first line of a banner, printable, cut to ``width``."""
    if not banner:
        return ""
    line = banner.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "backslashreplace")
    line = "".join(ch if ch.isprintable() else "?" for ch in line)
    return line if len(line) <= width else line[: width - 1] + "…"


def _shown(host: HostReport, open_only: bool, show_closed: bool) -> list[PortResult]:
    if open_only:
        return [r for r in host.ports if r.state is PortState.OPEN]
    closed = show_closed or len(host.scanned) <= LIST_CLOSED_UP_TO
    return list(host.results(include_closed=closed))


def _host_name(host: HostReport) -> str:
    return f"{host.hostname} ({host.address})" if host.hostname else host.address


def _host_table(host: HostReport, open_only: bool, show_closed: bool, banner: bool) -> list[str]:
    rows: list[tuple[str, ...]] = [
        (f"{r.port}/{r.protocol}", str(r.state), r.service or "", _banner_text(r.banner))
        for r in _shown(host, open_only, show_closed)
    ]
    if not banner:
        rows = [row[:3] for row in rows]
    lines = [f"scan report for {_host_name(host)}"]
    if rows:
        header = ("PORT", "STATE", "SERVICE", "BANNER")[: len(rows[0])]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
    hidden = len(host.scanned) - len(rows)
    if hidden:
        what = "ports that are not open" if open_only else f"closed {host.protocol} ports"
        lines.append(f"not shown: {hidden} {what}")
    return lines


def format_table(
    report: ScanReport, *, open_only: bool = False, show_closed: bool = False, banner: bool = False
) -> str:
    """The human-readable report: a table per host (BANNER column with ``banner``) and a
    summary line."""
    lines: list[str] = []
    for host in report.hosts:
        lines += [*_host_table(host, open_only, show_closed, banner), ""]
    count = len(report.hosts)
    lines.append(
        f"scanned {count} host{'s' if count != 1 else ''}, {len(report.ports)} "
        f"{report.protocol} port{'s' if len(report.ports) != 1 else ''} each in "
        f"{report.seconds:.2f} s: {report.open_count} open"
    )
    return "\n".join(lines) + "\n"


def _grep_field(text: str) -> str:
    """A field of -oG output: '/' and ',' separate fields there, so they are replaced."""
    return text.replace("/", "|").replace(",", " ")


def _grep_port(result: PortResult) -> str:
    service = _grep_field(result.service or "")
    version = _grep_field(_banner_text(result.banner))
    return f"{result.port}/{result.state}/{result.protocol}//{service}//{version}/"


def format_grep(report: ScanReport, *, open_only: bool = False) -> str:
    """One line per host in nmap's grep-able format (``-oG``)."""
    lines = [f"# opensocket {__version__} scan: {len(report.ports)} {report.protocol} ports"]
    for host in report.hosts:
        name = f"{host.address} ({host.hostname or ''})"
        results = [r for r in host.ports if not open_only or r.state is PortState.OPEN]
        fields = [f"Host: {name}", "Ports: " + ", ".join(_grep_port(r) for r in results)]
        ignored = len(host.scanned) - len(results)
        if ignored:
            state = "non-open" if open_only else "closed"
            fields.append(f"Ignored State: {state} ({ignored})")
        lines.append("\t".join(fields))
    lines.append(
        f"# opensocket done: {len(report.hosts)} hosts scanned in {report.seconds:.2f} seconds"
    )
    return "\n".join(lines) + "\n"
