"""``opensocket send PATH... URL`` to ``opensocket receive --listen URL``, or the other way."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

from ..address import Address, stream_address
from ..errors import ConfigError
from ..transfer import Options, TransferSummary, generate_code, receive, send
from ._common import add_tls_args, print_json, reachable_addresses, report_interrupted, tls_from

__all__ = ["HELPS", "configure", "execute"]

HELPS: Final = {
    "send": "send files and folders to 'opensocket receive' (verified, resumable, encrypted)",
    "receive": "receive files and folders from 'opensocket send' into a folder",
}

_SEND_EPILOG: Final = """\
Either side may listen: 'send PATH... URL' connects to a 'receive --listen URL', and
'send --listen URL PATH...' waits for a 'receive URL'. Folders are sent recursively (relative
paths, sizes, times, permissions; empty folders; sparse files stay sparse). Every file is
verified with BLAKE3 (or SHA-256) and renamed into place only when it matches. An interrupted
transfer resumes where it stopped when the same commands are run again (files that arrived
complete, with the same size and time, are reported as already there and not sent again).

On tcp:// the listening side makes up a code phrase (unless --code or --no-code is given) that
the other side must give with --code: SPAKE2 authenticates both sides with it and the data is
encrypted (AES-256-GCM). tls:// uses certificates instead (--tls-* options).

examples:
  opensocket receive --listen tcp://0.0.0.0:9009 --dir inbox     # prints a code phrase
  opensocket send photos/ notes.txt tcp://192.168.1.20:9009 --code 482-ember-walnut-tiger
  opensocket send --listen tcp://0.0.0.0:9009 --code my-secret big.iso
  opensocket send --no-code --json big.iso tcp://127.0.0.1:9009   # plain TCP, JSON summary
  opensocket send report.pdf tls://files.example.org:9009 --tls-ca ca.pem
"""

_RECEIVE_EPILOG: Final = """\
Files land in --dir (default: the current folder, created if missing) and never outside it:
absolute paths, '..', symlinks, devices and invalid names from the sender are refused. An
existing file with the offered size and time counts as already there (ok, not sent again); one
that differs is not replaced unless --overwrite (or kept with --skip-existing). Free space is
checked first; a full disk keeps the partial file for a resume. Exit code 0 when every file
arrived verified, 1 otherwise, 2 for a usage error.

examples:
  opensocket receive --listen tcp://0.0.0.0:9009 --dir inbox     # prints a code phrase
  opensocket receive tcp://192.168.1.20:9009 --code 482-ember-walnut-tiger --dir inbox
  opensocket receive --listen unix:///tmp/xfer.sock --dir inbox --skip-existing
  opensocket receive --listen tls://0.0.0.0:9009 --tls-cert cert.pem --tls-key key.pem --dir in
"""

_SUFFIXES: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_ALTERNATIVES: Final = 3  # other addresses named in the hint (a host may have many)
_RESUME: Final = "run the same command again to resume"


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of ``send`` and ``receive``."""
    parser.epilog = _SEND_EPILOG if name == "send" else _RECEIVE_EPILOG
    if name == "send":
        parser.usage = (
            "opensocket send [options] PATH... URL\n"
            "       opensocket send [options] --listen URL PATH..."
        )
        parser.add_argument(
            "items",
            nargs="+",
            metavar="PATH",
            help="files and folders to send, then the receiver's address (tcp://, tls://, "
            "unix://); without URL when --listen is given",
        )
    else:
        parser.add_argument(
            "url", nargs="?", metavar="URL", help="the sender's address (unless --listen)"
        )
        parser.usage = (
            "opensocket receive [options] URL [--dir DIR]\n"
            "       opensocket receive [options] --listen URL [--dir DIR]"
        )
        parser.add_argument(
            "--dir", default=".", metavar="DIR", help="destination folder (default: .)"
        )
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--overwrite", action="store_true", help="replace existing files")
        group.add_argument(
            "--skip-existing", action="store_true", help="keep existing files, do not receive"
        )
    parser.add_argument("--listen", metavar="URL", help="wait for the other side on this address")
    code = parser.add_mutually_exclusive_group()
    code.add_argument("--code", metavar="PHRASE", help="code phrase shared with the other side")
    code.add_argument(
        "--no-code", action="store_true", help="no code phrase: plain tcp:// (trusted networks)"
    )
    if name == "send":
        parser.add_argument(
            "--compress", action="store_true", help="zstd-compress blocks that shrink"
        )
        parser.add_argument(
            "--rate-limit",
            metavar="BYTES",
            help="send at most this many bytes per second (suffix K, M, G)",
        )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up when the peer is silent this long (default: 60)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary")
    parser.add_argument(
        "--progress", action="store_true", help="progress bars even when stderr is not a TTY"
    )
    add_tls_args(parser, server=False)
    parser.add_argument(
        "--tls-client-auth",
        choices=("none", "optional", "required"),
        default=None,
        help="when listening on tls://: ask for client certificates",
    )


def _rate(text: str | None) -> float | None:
    if text is None:
        return None
    number, suffix = text.rstrip("Bb"), ""
    if number and number[-1].upper() in _SUFFIXES:
        number, suffix = number[:-1], number[-1].upper()
    try:
        value = float(number) * _SUFFIXES[suffix]
    except ValueError:
        raise ConfigError(f"--rate-limit {text!r} is not a number of bytes (like 10M)") from None
    if value <= 0:
        raise ConfigError("--rate-limit must be positive")
    return value


def _endpoint(args: argparse.Namespace) -> tuple[Address, list[str]]:
    """The address and, for send, the paths."""
    items = list(getattr(args, "items", []))
    if args.listen:
        url = args.listen
        if args.command == "receive" and args.url:
            raise ConfigError("give either URL or --listen URL, not both")
    elif args.command == "send":
        if len(items) < 2:
            raise ConfigError("give the paths to send and then the receiver's URL (or --listen)")
        url = items.pop()
    else:
        if not args.url:
            raise ConfigError("give the sender's URL, or --listen URL to wait for it")
        url = args.url
    if "://" not in url and any("://" in item for item in items):
        raise ConfigError(f"{url!r} is not a URL: the paths come first, the receiver's URL last")
    if url.split("://", 1)[0] in ("udp", "rudp"):
        raise ConfigError(f"{url}: files travel over tcp://, tls:// or unix:// addresses")
    addr = stream_address(url)
    return addr, items


def _tls(args: argparse.Namespace, addr: Address) -> Any:
    listening = bool(args.listen)
    if listening and args.tls_insecure:
        raise ConfigError("--tls-insecure applies to the connecting side only")
    if not listening and args.tls_client_auth:
        raise ConfigError("--tls-client-auth applies to the listening side only")
    tls = tls_from(args, server=listening)
    if tls is not None and not addr.is_tls:
        raise ConfigError(f"TLS options apply to tls:// addresses only, not {addr}")
    return tls


def _code(args: argparse.Namespace, addr: Address) -> str | None:
    if args.no_code or addr.is_tls or addr.is_unix:
        return args.code if args.code and not args.no_code else None
    if args.code is not None:
        if not args.code.strip():
            raise ConfigError("--code needs a phrase (or --no-code)")
        return str(args.code)
    if args.listen:
        return generate_code()
    return None


def _announce(args: argparse.Namespace, listen: Address, code: str | None) -> Any:
    other = "receive" if args.command == "send" else "send PATH..."

    def announce(addr: Address) -> None:
        print(f"listening on {addr}", file=sys.stderr, flush=True)
        if code is not None and args.code is None:
            print(f"code: {code}", file=sys.stderr, flush=True)
            # '*' as given, not the '::' the dual-stack socket reports: both families apply
            first, *others = reachable_addresses(listen.with_port(addr.port))
            print(
                f"on the other side run: opensocket {other} {first} --code {code}",
                file=sys.stderr,
            )
            if others:
                more = ", ".join(map(str, others[:_ALTERNATIVES]))
                more += ", ..." if len(others) > _ALTERNATIVES else ""
                print(f"  (this machine is also at {more})", file=sys.stderr)

    return announce


def execute(args: argparse.Namespace) -> int:
    """Run one transfer; exit 0 when every file arrived verified."""
    addr, paths = _endpoint(args)
    if args.timeout <= 0:
        raise ConfigError("--timeout must be a positive number of seconds")
    tls = _tls(args, addr)
    code = _code(args, addr)
    opts = Options(
        code=code,
        compress=getattr(args, "compress", False),
        overwrite=getattr(args, "overwrite", False),
        skip_existing=getattr(args, "skip_existing", False),
        rate_limit=_rate(getattr(args, "rate_limit", None)),
        timeout=args.timeout,
    )
    show = not args.quiet and (args.progress or sys.stderr.isatty())
    bars = Bars(show)
    common: dict[str, Any] = {
        "listen": bool(args.listen),
        "tls": tls,
        "options": opts,
        "progress": bars,
        "announce": _announce(args, addr, code),
    }
    try:
        if args.command == "send":
            summary: TransferSummary = send(paths, addr, **common)
        else:
            summary = receive(addr, args.dir, **common)
    except KeyboardInterrupt:
        bars.stop()  # before the message, or the bars would overdraw it
        hint = _RESUME if args.command == "send" or bars.begun else ""
        return report_interrupted(args.command, json_mode=args.json, hint=hint)
    finally:
        bars.stop()
    return _finish(args, summary)


def _finish(args: argparse.Namespace, summary: TransferSummary) -> int:
    for result in summary.files:
        if result.status == "failed":
            print(f"opensocket {args.command}: error: {result.error}", file=sys.stderr)
    if not args.quiet:
        print(summary_line(summary), file=sys.stderr)
    if args.json:
        print_json(summary.to_json())
    return 0 if summary.ok else 1


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""  # pragma: no cover - the loop returns


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def summary_line(summary: TransferSummary) -> str:
    """One line: files, bytes, time, average rate (and what was resumed, skipped, failed)."""
    verb = "sent" if summary.role == "send" else "received"
    moved = _size(summary.data_bytes)
    if summary.compress and _size(summary.wire_bytes) != moved:
        # compression: the data moved and what crossed the wire are two different numbers
        moved = f"{moved} of data moved as {_size(summary.wire_bytes)} on the wire"
    else:
        moved += " moved"
    ok = summary.count("ok") - summary.present
    parts = [
        f"{verb} {_plural(ok, 'file')} ({_size(summary.total_bytes)}, {moved}) "
        f"in {summary.seconds:.2f} s, {_size(summary.rate)}/s"
    ]
    if summary.present:
        parts.append(f"{_plural(summary.present, 'file')} already there")
    if summary.resumed_bytes:
        parts.append(f"{_size(summary.resumed_bytes)} resumed")
    skipped, why = summary.count("skipped"), _reasons(summary, "skipped")
    if skipped:
        parts.append(f"{skipped} skipped" + (f" ({why})" if why else ""))
    if summary.count("failed"):
        parts.append(f"{summary.count('failed')} failed")
    return "; ".join(parts) + f" [{summary.encryption}, {summary.hash}]"


def _reasons(summary: TransferSummary, status: str, most: int = 2) -> str:
    """Why files got ``status``: the distinct reasons, the first ``most`` of them."""
    reasons = list(dict.fromkeys(f.error for f in summary.files if f.status == status and f.error))
    return ", ".join(reasons[:most]) + (", ..." if len(reasons) > most else "")


class Bars:
    """Rich progress bars on stderr (overall and current file), or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        self.begun = False  # the files are agreed on: an interrupted run can resume
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
        )
        self.total = self.bar.add_task("total", total=None, visible=False)
        self.current: Any = None

    def start(self, files: int, total: int) -> None:
        """The overall bar."""
        self.begun = True
        if self.bar is not None:
            self.bar.update(self.total, total=total, visible=True, description=f"{files} files")
            self.bar.start()

    def file(self, name: str, size: int, done: int) -> None:
        """A bar for this file."""
        if self.bar is None:
            return
        if self.current is not None:
            self.bar.remove_task(self.current)
        shown = name if len(name) <= 40 else "..." + name[-37:]
        self.current = self.bar.add_task(shown, total=size, completed=done)
        self.bar.update(self.total, advance=done)

    def advance(self, count: int) -> None:
        """Both bars move."""
        if self.bar is not None and self.current is not None:
            self.bar.update(self.current, advance=count)
            self.bar.update(self.total, advance=count)

    def file_done(self, name: str, ok: bool) -> None:
        """Nothing to do: the next file replaces the bar."""

    def stop(self) -> None:
        """Remove the bars from the terminal."""
        if self.bar is not None:
            self.bar.stop()
