"""``opensocket stat``: list sockets like ``ss -tuanp`` / ``netstat -tunap``, or watch them live.

Started often and expected to be quick: nothing heavy is imported unless ``--watch`` needs rich.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ..errors import ConfigError
from ..tools.stat import SocketRow, count_states, list_sockets, normalize_state

if TYPE_CHECKING:
    from rich.console import RenderableType

NAME: Final = "stat"
HELP: Final = "list sockets with their state and process, like ss -tuanp (--watch: live)"

_EPILOG: Final = """\
lists TCP and UDP sockets (IPv4 and IPv6) by default, every state, sorted by protocol, local
address and port; --tcp, --udp and --unix choose protocols (combine them). The process column
is PID/name of each process holding the socket (a socket shared after fork has several);
sockets of processes you may not inspect show none (run as root to see every owner).
States are named as netstat does (ESTABLISHED, TIME_WAIT, ...); --state also takes ss
spellings (estab, time-wait). UDP and Unix sockets without a peer are UNCONN. Recv-Q and
Send-Q are as in ss: bytes queued, and for a listener the connections waiting for accept()
and the backlog (Unix sockets too, from the kernel's unix_diag). --no-processes drops the
PID/Program column. --pid of a process that does not exist is an error (exit 2).
--watch redraws in place on a terminal; piped (without --json) it prints a full-width
table per refresh, each after a '--- refresh N ...' line.

examples:
  opensocket stat                       # every TCP and UDP socket
  opensocket stat --tcp --listening     # like ss -tlnp
  opensocket stat --port 8080           # sockets with 8080 as local or remote port
  opensocket stat --state established --pid 1234
  opensocket stat --unix --listening
  opensocket stat --watch --interval 0.5 --count 20
  opensocket stat --json | jq '.sockets[] | select(.state == "LISTEN")'
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stat``."""
    parser.epilog = _EPILOG
    protos = parser.add_argument_group("protocols (default: --tcp --udp)")
    protos.add_argument("-t", "--tcp", action="store_true", help="TCP sockets")
    protos.add_argument("-u", "--udp", action="store_true", help="UDP sockets")
    protos.add_argument("-x", "--unix", action="store_true", help="Unix domain sockets")
    family = protos.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    family.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    filters = parser.add_argument_group("filters")
    filters.add_argument(
        "-l", "--listening", action="store_true", help="listening (and unconnected UDP) only"
    )
    filters.add_argument("--port", type=int, metavar="N", help="local or remote port N")
    filters.add_argument("--pid", type=int, metavar="N", help="sockets held by process N")
    filters.add_argument(
        "--state",
        action="append",
        default=[],
        metavar="S",
        help="only state S (LISTEN, ESTABLISHED, TIME_WAIT, ...); repeatable, or comma-separated",
    )
    parser.add_argument(
        "--no-processes", action="store_true", help="skip finding owners (faster, as ss without -p)"
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON document (a line per refresh)"
    )
    watch = parser.add_argument_group("live view")
    watch.add_argument("-w", "--watch", action="store_true", help="refresh until Ctrl-C")
    watch.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes (1)"
    )
    watch.add_argument("-c", "--count", type=int, metavar="N", help="stop after N refreshes")


def _protocols(args: argparse.Namespace) -> list[str]:
    chosen = [p for p in ("tcp", "udp", "unix") if getattr(args, p)] or ["tcp", "udp"]
    if args.family and "unix" in chosen and len(chosen) > 1:
        chosen.remove("unix")  # like ss: -4/-6 leave Unix sockets out
    out = []
    for proto in chosen:
        if proto == "unix":
            if args.family:
                raise ConfigError("-4/-6 do not apply to Unix sockets (--unix)")
            out.append("unix")
            continue
        if args.family in (None, 4):
            out.append(proto)
        if args.family in (None, 6):
            out.append(proto + "6")
    return out


def _states(args: argparse.Namespace) -> list[str]:
    from ..tools.stat import STATES

    typed = [s.strip() for text in args.state for s in text.split(",") if s.strip()]
    for text in typed:
        if normalize_state(text) not in STATES:
            raise ConfigError(
                f"--state {text!r} is not a socket state: one of {', '.join(STATES)}"
                " (or ss spellings: estab, time-wait, ...)"
            )
    return [normalize_state(text) for text in typed]


def _check(args: argparse.Namespace) -> None:
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535 (got {args.port})")
    if args.interval <= 0:
        raise ConfigError(
            f"--interval must be a positive number of seconds (got {args.interval:g})"
        )
    if args.count is not None and args.count < 1:
        raise ConfigError(f"--count must be at least 1 (got {args.count})")
    if args.count is not None and not args.watch:
        raise ConfigError("--count applies to --watch only")
    if args.no_processes and args.pid is not None:
        raise ConfigError("--pid needs the process lookup: drop --no-processes")
    if args.pid is not None and not _process_exists(args.pid):
        raise ConfigError(f"--pid {args.pid}: no such process (check the PID, e.g. with ps)")


def _process_exists(pid: int) -> bool:
    """Signal 0 checks that a process exists without sending anything."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _rows(args: argparse.Namespace, protocols: list[str], states: list[str]) -> list[SocketRow]:
    return list_sockets(
        protocols,
        processes=not args.no_processes,
        listening=args.listening,
        port=args.port,
        pid=args.pid,
        states=states,
    )


def _process(row: SocketRow) -> str:
    return ",".join(f"{o.pid}/{o.name}" for o in row.owners)


_HEADERS = ("Proto", "State", "Recv-Q", "Send-Q", "Local Address", "Peer Address", "PID/Program")


def _cells(row: SocketRow, processes: bool = True) -> tuple[str, ...]:
    proto = f"u_{row.kind[:3]}" if row.proto == "unix" else row.proto
    remote = "*" if row.proto == "unix" else row.remote
    cells = (proto, row.state, str(row.recv_q), str(row.send_q), row.local, remote)
    return (*cells, _process(row)) if processes else cells


def _headers(processes: bool) -> tuple[str, ...]:
    return _HEADERS if processes else _HEADERS[:-1]


def format_table(rows: Sequence[SocketRow], *, processes: bool = True) -> str:
    """Aligned plain-text columns, netstat style (PID/Program only with ``processes``)."""
    table = [_headers(processes), *(_cells(r, processes) for r in rows)]
    widths = [max(map(len, column)) for column in zip(*table, strict=True)][:-1]
    line = " ".join(f"{{:<{w}}}" for w in widths) + " {}"  # one format string for every row
    return "\n".join(line.format(*cells).rstrip() for cells in table)


def _json(doc: dict[str, Any]) -> str:
    import json  # only --json pays for it

    return json.dumps(doc)


def _document(rows: Sequence[SocketRow]) -> dict[str, Any]:
    return {
        "time": round(time.time(), 3),
        "counts": count_states(rows),
        "total": len(rows),
        "sockets": [r.as_dict() for r in rows],
    }


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _render(rows: Sequence[SocketRow], refresh: int, processes: bool) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    counts = count_states(rows)
    title = Text(f"{len(rows)} sockets (refresh {refresh}, {time.strftime('%H:%M:%S')})")
    summary = Table(show_edge=False)
    for state in counts:
        summary.add_column(state, justify="right")
    summary.add_row(*(str(n) for n in counts.values()))
    listing = Table(show_edge=False, pad_edge=False)
    for header in _headers(processes):
        listing.add_column(header)
    for row in rows[:200]:  # a screenful is what a live view can show
        listing.add_row(*_cells(row, processes))
    return Group(title, summary, listing)


def _stream(args: argparse.Namespace, protocols: list[str], states: list[str]) -> int:
    """--watch into a pipe or file: a line of JSON, or a full-width table, per refresh."""
    refresh = 0
    processes = not args.no_processes
    try:
        while args.count is None or refresh < args.count:
            if refresh:
                time.sleep(args.interval)
            refresh += 1
            rows = _rows(args, protocols, states)
            if args.json:
                _write(_json({"refresh": refresh, **_document(rows)}))
            else:
                title = f"--- refresh {refresh}, {time.strftime('%H:%M:%S')}: {len(rows)} sockets"
                _write(title + "\n" + format_table(rows, processes=processes))
    except KeyboardInterrupt:
        pass
    return 0


def _watch(args: argparse.Namespace, protocols: list[str], states: list[str]) -> int:
    if args.json or not sys.stdout.isatty():
        # rich would squeeze a table into 80 columns when stdout is not a terminal
        return _stream(args, protocols, states)
    from rich.live import Live

    refresh = 0
    processes = not args.no_processes
    with Live(_render([], 0, processes), auto_refresh=False, redirect_stdout=False) as live:
        try:
            while args.count is None or refresh < args.count:
                if refresh:
                    time.sleep(args.interval)
                refresh += 1
                rows = _rows(args, protocols, states)
                live.update(_render(rows, refresh, processes), refresh=True)
        except KeyboardInterrupt:
            pass
    return 0


def execute(args: argparse.Namespace) -> int:
    """List the sockets once, or refresh a live view with --watch."""
    _check(args)
    protocols, states = _protocols(args), _states(args)
    if args.watch:
        return _watch(args, protocols, states)
    rows = _rows(args, protocols, states)
    if args.json:
        _write(_json(_document(rows)))
    else:
        _write(format_table(rows, processes=not args.no_processes))
    return 0
