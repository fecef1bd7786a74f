"""``opensocket http serve [DIR]`` serves a folder over HTTP(S); ``http get URL`` fetches one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import stat
import sys
import time
import typing
import urllib.parse
from collections.abc import Iterator
from typing import IO, Any, Final, TextIO

from .. import tls as tlsmod
from ..address import Address
from ..aio import run
from ..errors import BinaryOutputRefused, ConfigError, OpenSocketError
from ..http import HttpLimits, HttpServer, serve_http
from ..http.access import LOG_FORMATS, BufferedLineHandler, SharedLines
from ..http.client import HttpError, MalformedResponse, ResponseStream, open_response
from ..http.server import HSTS_MAX_AGE, access_log, bind_http, check_redirect, http_address
from ..options import TLSOptions
from ..prefork import run_workers
from ._common import (
    add_limit_args,
    add_tls_args,
    add_uvloop_arg,
    check_positive,
    check_tls_flags,
    limits_from,
    print_json,
    reachable_addresses,
    report_interrupted,
    stop_on_signals,
    tls_from,
)

__all__ = ["DEFAULT_LISTEN", "HELP", "NAME", "configure", "execute"]

NAME: Final = "http"
HELP: Final = (
    "HTTP/1.1 tools: 'http serve [DIR]' serves a folder over HTTP or HTTPS, "
    "'http get URL' fetches a URL"
)
DEFAULT_LISTEN: Final = "127.0.0.1:8000"

_EPILOG: Final = f"""\
serves DIR (default: the current folder) on {DEFAULT_LISTEN} unless --listen says otherwise,
prints the URL to open, and runs until Ctrl-C or SIGTERM (exit code 0 after a clean shutdown).
Files are answered with ETag/Last-Modified, conditional requests and Range requests; a folder
shows its index.html or a listing. Nothing outside DIR is ever served, nor hidden files unless
--show-hidden. Every request is logged on stdout (--access-log common, combined or json;
--quiet for none); with --access-log json the start banner is a JSON line too. Over TLS,
responses carry HSTS (--hsts-max-age), except to localhost and IP addresses.

examples:
  opensocket http serve                                   # the current folder on {DEFAULT_LISTEN}
  opensocket http serve ./site --listen 127.0.0.1:0       # port 0: the system picks one
  opensocket http serve ./site --workers 4                # four processes, one port
  opensocket cert                                         # makes certs/ for the next line
  opensocket http serve ./site --listen https://127.0.0.1:8443 \\
      --tls-cert certs/server.pem --tls-key certs/server-key.pem
  opensocket http serve ./site --listen http://127.0.0.1:8080 --listen https://127.0.0.1:8443 \\
      --tls-cert certs/server.pem --tls-key certs/server-key.pem --redirect-https
"""

GET_EPILOG: Final = """\
The body goes to stdout (a binary body is not written to a terminal unless -o - asks for it),
or with -o FILE into FILE.part, renamed to FILE once complete; a device or a pipe given as FILE
is written in place, and a symlink is followed. The ETag (or Last-Modified) of the download is
kept in FILE.part.validator: -C resumes FILE.part with a Range request sent with If-Range, so a
file that changed on the server is downloaded again from the start instead of spliced (and so
is a FILE.part without a validator). A URL without a scheme is taken as http://. Redirects
are followed (--max-redirects, never from https:// to http://); https:// certificates are
verified (--tls-ca to trust a private CA).
Exit code 0 for a 2xx or 304 status, 1 for any other status or a failure, 2 for a usage error.

examples:
  opensocket http get http://127.0.0.1:8000/                 # the body on stdout
  opensocket http get 127.0.0.1:8000/notes.txt               # no scheme: http://
  opensocket http get -i https://example.org/ --tls-ca ca.pem  # status line and headers too
  opensocket http get -o big.iso -C http://127.0.0.1:8000/big.iso  # download, resuming
  opensocket http get --json -o out.bin http://127.0.0.1:8000/f  # a summary on stdout
"""
_ALSO: Final = 3  # other machines' URLs named in the banner (a host may have many)
_GOOD: Final = frozenset({304})


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``http``: the ``serve`` and ``get`` actions and their options."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="run a web server on a folder",
        description="Serve a folder over HTTP or HTTPS.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _verbosity(serve)
    _configure_serve(serve)
    get = actions.add_parser(
        "get",
        help="fetch a URL (http:// or https://)",
        description="Fetch a URL over HTTP/1.1 or HTTPS: the body on stdout, or -o FILE.",
        epilog=GET_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _verbosity(get)
    configure_get(get)


def _verbosity(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a -v before the action (``http -v get``) is not reset by the action's default.
    parser.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging"
    )


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default=".", metavar="DIR", help="folder to serve")
    add_uvloop_arg(parser)
    parser.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help=f"HOST:PORT, http://, https:// (tcp://, tls://) to listen on; repeatable "
        f"(default {DEFAULT_LISTEN})",
    )
    parser.add_argument("--show-hidden", action="store_true", help="serve and list dot-files too")
    parser.add_argument(
        "--keepalive-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="close idle keep-alive connections after this long (default: 15)",
    )
    parser.add_argument(
        "--access-log",
        choices=LOG_FORMATS,
        default="common",
        help="access log on stdout: common (default), combined or json (one object a line)",
    )
    parser.add_argument("--quiet", action="store_true", help="no access log")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="serve from N processes sharing the listening sockets (default 1; about one per "
        "core); a worker that dies is replaced; --max-connections, --max-per-ip and --rate "
        "count per worker",
    )
    parser.add_argument(
        "--hsts-max-age",
        type=int,
        default=HSTS_MAX_AGE,
        metavar="SECONDS",
        help="Strict-Transport-Security max-age on https:// responses (default 31536000, a "
        "year; 0: none); never sent to localhost or IP addresses",
    )
    parser.add_argument(
        "--redirect-https",
        action="store_true",
        help="answer requests on the http:// addresses with a redirect to the https:// one",
    )
    add_tls_args(parser, server=True)
    add_limit_args(parser)


@contextlib.contextmanager
def _access_to_stdout(enabled: bool, *, shared: bool = False) -> Iterator[None]:
    """Access-log lines, bare, on stdout while the server runs (a web server's main output);
    ``shared``: other worker processes write there too, so lines go out whole."""
    if not enabled:
        yield
        return
    stream = typing.cast(TextIO, SharedLines(sys.stdout.fileno())) if shared else sys.stdout
    handler = BufferedLineHandler(stream)  # one write per 0.5 s under load, not per line
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level, old_propagate = access_log.level, access_log.propagate
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    try:
        yield
    finally:
        access_log.removeHandler(handler)
        handler.flush()
        access_log.setLevel(old_level)
        access_log.propagate = old_propagate


def _serve_settings(args: argparse.Namespace) -> tuple[list[Address], dict[str, Any]]:
    """The addresses and ``serve_http`` keywords the options ask for (ConfigError if wrong)."""
    addrs = [http_address(u) for u in args.listen or [DEFAULT_LISTEN]]
    check_tls_flags(args, addrs)
    if args.keepalive_timeout <= 0:
        raise ConfigError("--keepalive-timeout must be a positive number of seconds")
    if args.workers < 1:
        raise ConfigError(f"--workers must be 1 or more, not {args.workers}")
    if not os.path.isdir(args.dir):
        raise ConfigError(f"{args.dir!r} is not a folder: give the folder to serve")
    check_redirect(addrs, args.redirect_https)
    if args.hsts_max_age < 0:
        raise ConfigError(f"--hsts-max-age must be 0 (none) or seconds, not {args.hsts_max_age}")
    return addrs, {
        "hsts_max_age": args.hsts_max_age,
        "tls": tls_from(args, server=True),
        "limits": HttpLimits(keepalive_timeout=args.keepalive_timeout),
        "server_limits": limits_from(args),
        "show_hidden": args.show_hidden,
        "log_format": args.access_log,
        "redirect_https": args.redirect_https,
    }


async def _run(args: argparse.Namespace, sockets: list[list[socket.socket]] | None = None) -> int:
    addrs, settings = _serve_settings(args)
    worker = sockets is not None  # one of --workers: the parent announced the addresses
    with stop_on_signals() as stop, _access_to_stdout(not args.quiet, shared=worker):
        server = await serve_http(addrs, args.dir, sockets=sockets, **settings)
        if not worker:
            _banner(args, addrs, server.files.root, server.urls)
        try:
            await stop.wait()
        finally:
            await _close(server, stop, hurry=not worker)
    return 0


async def _close(server: HttpServer, stop: asyncio.Event, *, hurry: bool) -> None:
    """Let the responses in flight finish, saying so; a second Ctrl-C drops them (not in a
    worker: the parent's SIGTERM follows the terminal's SIGINT there, and the parent waits)."""
    busy = server.in_flight
    if busy and hurry:
        grace = server.server_limits.shutdown_grace
        again = "; Ctrl-C again to stop now"
        print(
            f"stopping: letting {busy} response(s) in flight finish (up to {grace:g} s{again})",
            file=sys.stderr,
            flush=True,
        )
    stop.clear()
    closing = asyncio.ensure_future(server.close())
    second = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({closing, second}, return_when=asyncio.FIRST_COMPLETED)
        if second.done() and hurry:
            server.hurry()
        await closing
    finally:
        second.cancel()


def _banner(args: argparse.Namespace, addrs: list[Address], root: str, urls: list[str]) -> None:
    """Where to open the site: ``open URL`` lines (a JSON line with --access-log json, which
    keeps stdout all JSON); a wildcard address is named as localhost, plus this machine's
    addresses for other machines."""
    star = any(addr.is_wildcard for addr in addrs)  # '*' binds IPv4 and IPv6 on one socket
    local, remote = [], []
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.hostname not in ("0.0.0.0", "::") or parts.port is None:
            local.append(url)
            continue
        local.append(f"{parts.scheme}://localhost:{parts.port}/")
        wildcard = Address("tcp", "*" if star else parts.hostname, parts.port)
        remote += [f"{parts.scheme}://{a.hostport}/" for a in reachable_addresses(wildcard)]
    workers = f" from {args.workers} worker processes" if args.workers > 1 else ""
    if args.access_log == "json":
        info = {"event": "listening", "root": root, "urls": local, "other_machines": remote}
        print_json({**info, "workers": args.workers})
        return
    print(f"serving {root}{workers}")
    for url in local:
        print(f"open {url}")
    if remote:
        more = ", ".join(remote[:_ALSO]) + (", ..." if len(remote) > _ALSO else "")
        print(f"  from other machines: {more}")
    sys.stdout.flush()


def _run_workers(args: argparse.Namespace) -> int:
    """Bind here, announce, then serve from ``--workers`` forked processes."""
    addrs, settings = _serve_settings(args)
    if any(addr.is_tls for addr in addrs):
        tlsmod.server_context(settings["tls"])  # unreadable files: said once, by the parent
    sockets, urls = bind_http(addrs)
    try:
        _banner(args, addrs, os.path.realpath(args.dir), urls)
        return run_workers(
            args.workers, lambda: run(_run(args, sockets), use_uvloop=not args.no_uvloop)
        )
    finally:
        for socks in sockets:
            for sock in socks:
                sock.close()


def execute(args: argparse.Namespace) -> int:
    """Run the web server until SIGINT/SIGTERM, or fetch a URL."""
    if args.action == "get":
        return execute_get(args)
    if args.workers > 1:
        return _run_workers(args)
    try:
        return run(_run(args), use_uvloop=not args.no_uvloop)
    except KeyboardInterrupt:  # pragma: no cover - signals are handled by stop_on_signals
        print("interrupted", file=sys.stderr)
        return 130


# ---- http get --------------------------------------------------------------------------------

_VALIDATOR: Final = ".validator"  # FILE.part.validator: the ETag or date If-Range sends on -C
_TEXT_WORDS: Final = ("json", "xml", "javascript", "ecmascript")
_RESUME_HINT: Final = "run the same command with -C to resume"


def configure_get(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``http get``."""
    parser.add_argument(
        "url", metavar="URL", help="http:// or https:// URL to fetch (no scheme: http://)"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the body to FILE (via FILE.part); - writes it to stdout, even binary",
    )
    parser.add_argument(
        "-C",
        "--continue",
        dest="resume",
        action="store_true",
        help="with -o: resume an interrupted download from FILE.part (Range with If-Range)",
    )
    parser.add_argument(
        "-i", "--include", action="store_true", help="print the status line and headers"
    )
    parser.add_argument(
        "-I", "--head", action="store_true", help="send HEAD: the status line and headers only"
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="send this request header; repeatable",
    )
    parser.add_argument(
        "--max-redirects",
        type=int,
        default=5,
        metavar="N",
        help="redirects to follow (default: 5; 0: print the redirect response itself)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="limit for connecting, for the response head and for each wait for data (default: 30)",
    )
    parser.add_argument(
        "--progress",
        action="store_true",
        help="with -o: show the progress bar even when stderr is not a terminal",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary on stdout (the body goes to -o FILE, or nowhere)",
    )
    add_tls_args(parser, server=False)


def _request_headers(args: argparse.Namespace) -> list[tuple[str, str]]:
    headers = []
    for line in args.header:
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name or any(c in name for c in " \t\r\n") or "\n" in value:
            raise ConfigError(f"-H {line!r}: a header is 'Name: value', on one line")
        headers.append((name, value))
    return headers


def _check_get(args: argparse.Namespace) -> None:
    check_positive(args.timeout, "--timeout")
    if args.max_redirects < 0:
        raise ConfigError("--max-redirects must be 0 (do not follow) or more")
    if args.resume and not args.output:
        raise ConfigError("-C/--continue resumes a download: give the file with -o FILE")
    if args.resume and args.output == "-":
        raise ConfigError(
            "-C/--continue resumes a download into a file: -o - (stdout) cannot be resumed"
        )
    if args.json and (args.include or args.head):
        raise ConfigError("--json already holds the status and headers: drop -i/-I")
    if args.json and args.output == "-":
        raise ConfigError("--json prints the summary on stdout: give -o FILE for the body")


def _with_scheme(url: str) -> str:
    """``host:port/path`` is taken as http://, as curl does."""
    return url if "://" in url else "http://" + url.strip()


@dataclasses.dataclass(frozen=True, slots=True)
class _Output:
    """Where the body goes: stdout (``path`` None), a device or FIFO written in place
    (``direct``), or a regular file written as PATH.part and renamed to PATH once complete."""

    path: str | None = None
    direct: bool = False

    @property
    def part(self) -> str | None:
        """The partial download beside a regular file; None for stdout, a device or a FIFO."""
        return None if self.path is None or self.direct else self.path + ".part"


def _output(args: argparse.Namespace) -> _Output:
    """Resolve -o: ``-`` is stdout; a symlink is followed, so its target is the file replaced."""
    if args.output is None or args.output == "-":
        return _Output()
    if args.output.endswith(os.sep):
        raise ConfigError(f"-o {args.output} names a folder: give a file name")
    try:  # through symlinks as open() goes, /proc magic links (/dev/stdout) included
        st: os.stat_result | None = os.stat(args.output)
    except OSError:  # missing (the usual case), or unreadable: open() says why later
        st = None
    if st is not None and _is_stdout(st):
        return _Output()  # /dev/stdout redirected to a file: written as stdout, never replaced
    mode = None if st is None else st.st_mode
    if mode is not None and stat.S_ISDIR(mode):
        raise ConfigError(f"-o {args.output} is a folder: give a file name")
    if mode is not None and not stat.S_ISREG(mode):
        if args.resume:
            raise ConfigError(
                f"-C cannot resume into -o {args.output}: it is not a regular file (a device or "
                "a pipe is written in place, as the body arrives); drop -C"
            )
        return _Output(args.output, direct=True)
    path = os.path.realpath(args.output)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise ConfigError(f"-o {args.output}: the folder {folder} does not exist")
    return _Output(path)


def _is_stdout(st: os.stat_result) -> bool:
    try:
        return os.path.samestat(st, os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):  # no stdout (closed, or not a real file)
        return False


def _head_bytes(response: ResponseStream) -> bytes:
    lines = [f"HTTP/{response.http_version} {response.status} {response.reason}"]
    lines += [f"{name}: {value}" for name, value in response.raw_headers or response.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _resume_offset(response: ResponseStream, offset: int) -> int:
    """Where the body starts in the file: ``offset`` on a matching 206, 0 on a full answer."""
    if response.status != 206:
        return 0
    value = response.header("content-range") or ""
    unit, _, rest = value.partition(" ")
    start = rest.partition("-")[0]
    if unit != "bytes" or not start.isdigit() or int(start) != offset:
        raise MalformedResponse(
            f"{response.url} answered 206 with Content-Range {value!r}, not the bytes from "
            f"{offset} that were asked for"
        )
    return offset


def _already_complete(response: ResponseStream, offset: int) -> bool:
    """A 416 to ``bytes=offset-`` with ``Content-Range: bytes */offset``: nothing is missing."""
    return response.status == 416 and response.header("content-range") == f"bytes */{offset}"


def _validator(response: ResponseStream) -> str | None:
    """What If-Range can check on a resume: a strong ETag, else Last-Modified (RFC 9110 13.1.5)."""
    etag = response.header("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.header("last-modified")


def _saved_validator(part: str) -> str | None:
    try:
        with open(part + _VALIDATOR, encoding="latin-1") as handle:
            value = handle.read(1024).strip()
    except OSError:
        return None
    return value if value and not any(c in value for c in "\r\n\0") else None


def _save_validator(part: str, response: ResponseStream) -> None:
    """Keep the validator of a download that starts over; without one, -C cannot resume it."""
    value = _validator(response)
    if value is None:
        _forget_validator(part)
        return
    with open(part + _VALIDATOR, "w", encoding="latin-1") as handle:
        handle.write(value + "\n")


def _forget_validator(part: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part + _VALIDATOR)


def _resume_from(part: str) -> tuple[int, str | None]:
    """The size of FILE.part to resume after and its validator, or 0 to start over."""
    size = os.path.getsize(part) if os.path.isfile(part) else 0
    if not size:
        return 0, None
    validator = _saved_validator(part)
    if validator is None:
        # a Range alone could splice two versions of a file that changed on the server
        print(f"no validator saved for {part}: downloading again from the start", file=sys.stderr)
        return 0, None
    return size, validator


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int | None, done: int, name: str) -> None:
        self.bar: Any = None
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
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
        )
        self.task = self.bar.add_task(name, total=total, completed=done)
        self.bar.start()

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=count)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


async def _download(
    args: argparse.Namespace, out: _Output, response: ResponseStream, offset: int
) -> int:
    """Write the body to FILE.part (appending after ``offset``), then rename it to FILE; a
    device or FIFO is written in place."""
    assert out.path is not None
    part = out.part
    start = _resume_offset(response, offset)
    length = response.content_length
    show = args.progress or sys.stderr.isatty()
    bar = _Progress(show, None if length is None else start + length, start, args.output)
    try:
        if part is None:
            with open(out.path, "wb") as handle:
                await _copy(response, handle, bar)
        else:
            with open(part, "r+b" if start else "wb") as handle:
                handle.seek(start)
                handle.truncate()
                if not start:  # after the truncation: a validator never sits beside older bytes
                    _save_validator(part, response)
                await _copy(response, handle, bar)
    except OSError as exc:
        name = exc.filename or part or out.path
        kept = f" (what was written is kept: fix the cause and {_RESUME_HINT})" if part else ""
        raise HttpError(f"cannot write {name}: {exc.strerror or exc}{kept}") from exc
    except OpenSocketError:
        if part is not None:
            print(f"the partial download is kept in {part}: {_RESUME_HINT}", file=sys.stderr)
        raise
    finally:
        bar.stop()
    if part is not None:
        os.replace(part, out.path)
        _forget_validator(part)
    return start


async def _copy(response: ResponseStream, out: IO[bytes], bar: _Progress) -> None:
    async for chunk in response.chunks():
        out.write(chunk)
        bar.advance(len(chunk))


def _looks_binary(response: ResponseStream, first: bytes) -> bool:
    """Curl's rule (NUL bytes), plus a Content-Type that is not text (unknown: NULs decide)."""
    if b"\0" in first:
        return True
    mime = (response.header("content-type") or "").partition(";")[0].strip().lower()
    return bool(mime) and not mime.startswith("text/") and not any(w in mime for w in _TEXT_WORDS)


async def _to_stdout(response: ResponseStream, stdout: IO[bytes], terminal: bool) -> None:
    """The body on stdout; on a ``terminal``, a binary body is refused before any of it."""
    checked = not terminal
    async for chunk in response.chunks():
        if not checked and chunk:
            checked = True
            if _looks_binary(response, chunk):
                raise BinaryOutputRefused(
                    "binary output can mess up your terminal: use -o FILE "
                    "(or -o - to write it anyway)"
                )
        stdout.write(chunk)


async def _get(args: argparse.Namespace) -> int:
    _check_get(args)
    url = _with_scheme(args.url)
    out = _output(args)
    headers = _request_headers(args)
    method = "HEAD" if args.head else "GET"
    to_file = out.path is not None and method == "GET"
    part = out.part if to_file else None
    offset, validator = _resume_from(part) if part and args.resume else (0, None)
    if offset and validator:
        headers += [("Range", f"bytes={offset}-"), ("If-Range", validator)]
    began = time.monotonic()
    resumed_from = 0
    stdout = sys.stdout.buffer
    async with open_response(
        url,
        method=method,
        headers=headers,
        tls=_client_tls(args),
        max_redirects=args.max_redirects,
        timeout=args.timeout,
    ) as response:
        good = 200 <= response.status < 300 or response.status in _GOOD
        if args.include or args.head:
            sys.stdout.flush()
            stdout.write(_head_bytes(response))
        if part and out.path and _already_complete(response, offset):
            os.replace(part, out.path)
            _forget_validator(part)
            good, resumed_from = True, offset
        elif to_file and good and response.status != 304:
            resumed_from = await _download(args, out, response, offset)
        elif out.path is not None or args.json:
            async for _ in response.chunks():
                pass  # read and counted, not kept: an error page is not the file asked for
        else:
            terminal = args.output is None and sys.stdout.isatty()
            await _to_stdout(response, stdout, terminal)
        stdout.flush()
    if args.json:
        print_json(_summary(args, url, response, resumed_from, time.monotonic() - began))
    if not good:
        print(
            f"opensocket {NAME}: error: {response.url} answered {response.status} "
            f"{response.reason}".rstrip(),
            file=sys.stderr,
        )
        return 1
    return 0


def _client_tls(args: argparse.Namespace) -> TLSOptions | None:
    tls = tls_from(args, server=False)
    return None if tls is None else dataclasses.replace(tls, handshake_timeout=args.timeout)


def _summary(
    args: argparse.Namespace,
    url: str,
    response: ResponseStream,
    resumed_from: int,
    seconds: float,
) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for name, value in response.headers:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return {
        "url": url,
        "final_url": response.url,
        "redirects": list(response.redirects),
        "status": response.status,
        "reason": response.reason,
        "http_version": response.http_version,
        "headers": headers,
        "bytes": response.bytes_read,
        "resumed_from": resumed_from,
        "seconds": round(seconds, 6),
        "file": os.path.abspath(args.output) if args.output else None,
    }


def _kept_part(args: argparse.Namespace) -> str | None:
    """The FILE.part an interrupted download left, if any."""
    try:
        part = _output(args).part
    except OpenSocketError:
        return None
    return part if part is not None and os.path.isfile(part) else None


def execute_get(args: argparse.Namespace) -> int:
    """Fetch a URL; exit 0 for 2xx and 304, 1 otherwise."""
    try:
        return asyncio.run(_get(args))
    except KeyboardInterrupt:
        part = _kept_part(args)
        hint = f"the partial download is kept in {part}: {_RESUME_HINT}" if part else ""
        return report_interrupted("http get", json_mode=args.json, hint=hint)
