"""``opensocket echo``: an echo client that times round trips, and ``opensocket echo serve``.

The server echoes framed messages (any codec the client picks), raw bytes (``--raw``) or UDP
datagrams, on one or more addresses at once, and prints the command and the Python lines that
talk to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shlex
import sys
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .. import aio
from ..address import Address, parse_address
from ..aio import Connection, DatagramEndpoint, ReliableConnection, ReliableServer, Server, Stream
from ..codecs import get_codec
from ..errors import (
    BadMagic,
    CloseCode,
    CodecError,
    ConfigError,
    ConnectionClosed,
    ConnectionClosedOK,
    HandshakeError,
    ReadTimeout,
    UnexpectedFrame,
)
from ..options import ProtocolOptions, ServerLimits, TLSOptions
from ..rudp import RudpOptions
from ._common import (
    add_limit_args,
    add_protocol_args,
    add_tls_args,
    add_uvloop_arg,
    check_positive,
    check_tls_flags,
    limits_from,
    print_json,
    protocol_from,
    reject_framed_flags,
    socket_options,
    stop_on_signals,
    tls_from,
)
from .pipe import StdinSource

__all__ = [
    "HELP",
    "HELPS",
    "EchoService",
    "add_server_args",
    "check_server_args",
    "configure",
    "connect_commands",
    "execute",
    "reachable_address",
    "serve_echo",
    "tls_client_files",
]

HELP: Final = "send lines to an echo server and time the replies; 'echo serve' runs one"
HELPS: Final = {
    "echo": HELP,
    "echo serve": "run an echo server: framed (any codec), raw bytes (--raw) or UDP",
}
CHUNK: Final = 64 * 1024

_CLIENT_EPILOG: Final = """\
each line of stdin (or of the terminal) is one message; every reply is printed with its
round-trip time, and a summary ends the run. Exit code 1 when a reply is missing or the
connection fails. With --codec json (or msgpack) a line that is valid JSON is sent as that
value, any other line as a string.

Ctrl-C ends the run with the summary so far (exit code 130).

examples:
  opensocket echo tcp://127.0.0.1:9000                    # type lines, see the echoes
  opensocket echo tcp://127.0.0.1:9000 --count 5 --interval 0.2 --message hello
  printf 'a\\nb\\n' | opensocket echo tcp://127.0.0.1:9000 --json
  opensocket echo tcp://127.0.0.1:9000 --codec json       # JSON payloads (echo serve accepts them)
  opensocket echo tcp://127.0.0.1:9001 --raw              # line-oriented raw stream
  opensocket echo udp://127.0.0.1:9002 --count 3
  opensocket echo rudp://127.0.0.1:9004 --codec json      # reliable UDP
  opensocket echo tls://localhost:9443 --tls-ca certs/ca.pem

run an echo server with 'opensocket echo serve URL' (see 'opensocket echo serve --help').
"""

_SERVER_EPILOG: Final = """\
prints the bound addresses (the real port when port 0 was asked) and the command that
connects to each; --json prints one JSON line instead, whose "listeners" give each address
with its mode (framed, raw, rudp or udp) and command. Runs until Ctrl-C or SIGTERM, then
closes every connection gracefully and prints a summary. A framed server accepts the codecs
bytes and json, and msgpack when it is installed (pip install 'opensocket[msgpack]'), unless
--codec narrows them. The framed-protocol options (--codec, --secret-env, ...) do not apply to
--raw or to udp:// and rudp:// addresses, nor the TLS options to anything but tls://
addresses. A rudp:// (reliable UDP) address echoes every message on the channel it came on,
whatever the client's codec.

examples:
  opensocket echo serve tcp://127.0.0.1:9000
  opensocket echo serve tcp://127.0.0.1:0 --json            # port 0: the system picks one
  opensocket echo serve tcp://127.0.0.1:9000 --codec json   # JSON payloads only
  opensocket echo serve tcp://127.0.0.1:9001 --raw          # talk to it with nc or socat
  opensocket echo serve udp://127.0.0.1:9002
  opensocket echo serve rudp://127.0.0.1:9004               # reliable UDP
  opensocket echo serve unix:///tmp/echo.sock 'tcp://[::1]:9000'
  opensocket cert                                           # makes certs/ for the next line
  opensocket echo serve tls://127.0.0.1:9443 \\
      --tls-cert certs/server.pem --tls-key certs/server-key.pem
"""


def configure(parser: argparse.ArgumentParser, name: str = "echo") -> None:
    """Arguments of ``echo`` (client) or ``echo serve``."""
    if name == "echo serve":
        _configure_server(parser)
        return
    parser.epilog = _CLIENT_EPILOG
    parser.add_argument(
        "url", metavar="URL", help="tcp://, tls://, unix://, udp:// or rudp:// address"
    )
    parser.add_argument("--raw", action="store_true", help="raw byte stream, one line per message")
    parser.add_argument("-c", "--count", type=int, metavar="N", help="send N messages, not stdin")
    parser.add_argument("-m", "--message", metavar="TEXT", help="what to send (default: hello)")
    parser.add_argument(
        "-i", "--interval", type=float, default=0.0, metavar="S", help="pause between messages"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="wait this long for each reply, and to connect (default: 5)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per reply")
    add_tls_args(parser, server=False)
    add_protocol_args(parser)
    add_uvloop_arg(parser)


def _configure_server(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _SERVER_EPILOG
    parser.add_argument(
        "urls",
        nargs="+",
        metavar="URL",
        help="tcp://, tls://, unix://, udp:// or rudp:// addresses",
    )
    parser.add_argument("--raw", action="store_true", help="echo raw bytes instead of messages")
    add_server_args(parser)


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """Options of an echo server."""
    parser.add_argument("--json", action="store_true", help="print the addresses as JSON")
    add_limit_args(parser)
    add_tls_args(parser, server=True)
    add_protocol_args(parser, server=True)
    add_uvloop_arg(parser)


def execute(args: argparse.Namespace) -> int:
    """Run the echo client or, for ``echo serve``, the server."""
    if args.command == "echo serve":
        return serve_echo(args, args.urls)
    return _run_client(args)


# ---- the server ------------------------------------------------------------------------------


def default_codecs() -> tuple[str, ...]:
    """Every codec this installation can decode (msgpack needs its package)."""
    names = ["bytes", "json"]
    try:
        get_codec("msgpack")
        names.append("msgpack")
    except ConfigError:
        pass
    return tuple(names)


async def echo_messages(conn: Connection) -> None:
    """Send every message back, a batch at a time."""
    try:
        while True:
            await conn.send_many(await conn.recv_batch())
    except CodecError as exc:
        await conn.close(CloseCode.INVALID_PAYLOAD, str(exc))


async def echo_reliable(conn: ReliableConnection) -> None:
    """Send every reliable-UDP message back on the channel it came on."""
    with contextlib.suppress(ConnectionClosedOK):
        while True:
            channel, message = await conn.recv_message()
            await conn.send(message, channel=channel)


class EchoService:
    """Echo servers on several addresses: framed or raw streams, reliable UDP, and UDP."""

    def __init__(
        self,
        *,
        raw: bool = False,
        protocol: ProtocolOptions | None = None,
        tls: TLSOptions | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self.raw = raw
        self.protocol = protocol or ProtocolOptions(codecs=default_codecs())
        self.tls = tls
        self.limits = limits or ServerLimits()
        self.servers: list[Server | ReliableServer] = []
        self.endpoints: list[DatagramEndpoint] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._streams: set[Stream] = set()  # raw connections, closed first on stop
        self._datagrams = 0
        self._datagram_bytes = 0
        self._stopping = False
        self.started = 0.0

    def mode(self, addr: Address) -> str:
        """What ``addr`` echoes: ``framed`` messages, ``raw`` bytes or ``udp`` datagrams."""
        if addr.is_datagram:
            return "udp"
        if addr.is_rudp:
            return "rudp"
        return "raw" if self.raw else "framed"

    @property
    def addresses(self) -> list[Address]:
        """Every bound address, with real ports."""
        bound = [a for s in self.servers for a in s.addresses]
        return bound + [e.local_address for e in self.endpoints]

    async def start(self, urls: Sequence[str | Address]) -> None:
        """Bind every address; on failure close what was opened and raise."""
        addrs = [parse_address(u) for u in urls]
        try:
            for group in ([a for a in addrs if a.is_tls], [a for a in addrs if _plain(a)]):
                if group:
                    await self._serve(group)
            reliable: list[str | Address] = [a for a in addrs if a.is_rudp]
            if reliable:
                # the bytes codec echoes whatever the client's codec encoded
                self.servers.append(
                    await aio.serve(
                        reliable,
                        echo_reliable,
                        codec="bytes",
                        limits=self.limits,
                        rudp=RudpOptions(),
                    )
                )
            for addr in (a for a in addrs if a.is_datagram):
                endpoint = await aio.open_datagram(addr, bind=True)
                self.endpoints.append(endpoint)
                self._tasks.append(asyncio.ensure_future(self._echo_datagrams(endpoint)))
        except BaseException:
            await self.stop()
            raise
        self.started = time.monotonic()

    async def _serve(self, group: list[Address]) -> None:
        handler = self._echo_stream if self.raw else echo_messages
        tls = self.tls if group[0].is_tls else None
        server = await aio.serve(
            list(group), handler, raw=self.raw, protocol=self.protocol, tls=tls, limits=self.limits
        )
        self.servers.append(server)

    async def _echo_stream(self, stream: Stream) -> None:
        if self._stopping:
            return
        self._streams.add(stream)
        try:
            while data := await stream.recv(CHUNK):
                await stream.send_all(data)
        finally:
            self._streams.discard(stream)

    async def _echo_datagrams(self, endpoint: DatagramEndpoint) -> None:
        try:
            while True:
                data, peer = await endpoint.recv_from()
                self._datagrams += 1
                self._datagram_bytes += len(data)
                await endpoint.send_to(data, peer)
        except ConnectionClosedOK:
            pass

    async def stop(self) -> None:
        """Stop accepting, end every connection gracefully, close the UDP sockets."""
        self._stopping = True
        await asyncio.gather(*(s.close() for s in list(self._streams)))
        await asyncio.gather(*(s.close(0) for s in self.servers))
        for endpoint in self.endpoints:
            endpoint.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def summary(self) -> dict[str, Any]:
        """Totals: connections, messages (framed and UDP), bytes in and out."""
        stats = [s.stats for s in self.servers]
        return {
            "connections": sum(s.accepted for s in stats),
            "messages": sum(s.messages_in for s in stats) + self._datagrams,
            "bytes_in": sum(s.bytes_in for s in stats) + self._datagram_bytes,
            "bytes_out": sum(s.bytes_out for s in stats) + self._datagram_bytes,
            "seconds": round(time.monotonic() - self.started, 3),
        }


Extra = Callable[[argparse.Namespace, EchoService], list[str]]


def _plain(addr: Address) -> bool:
    return not addr.is_tls and not addr.is_datagram and not addr.is_rudp


def reachable_address(addr: Address) -> Address:
    """The address a local client dials for a bound one (wildcards become loopback)."""
    if addr.host in ("::", "0.0.0.0"):
        return Address(addr.scheme, "127.0.0.1", addr.port)
    return addr


def _client_flags(args: argparse.Namespace, service: EchoService, addr: Address) -> str:
    mode = service.mode(addr)
    flags = []
    if mode == "raw":
        flags.append("--raw")
    if addr.is_tls:
        flags += _tls_flags(args)
    if mode == "framed":
        if args.codec is not None:  # narrowed: the client's default (bytes) may be refused
            flags.append(f"--codec {shlex.quote(service.protocol.codecs[0])}")
        if args.secret_env:
            flags.append(f"--secret-env {shlex.quote(args.secret_env)}")
        elif args.secret_file:
            flags.append(f"--secret-file {shlex.quote(args.secret_file)}")
    return "".join(f" {f}" for f in flags)


def tls_client_files(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    """CA, client certificate and key a client needs for this server (None: not needed).

    Without --tls-ca the CA is looked for beside the certificate, where 'opensocket cert'
    writes it; a self-signed certificate is its own CA.
    """
    folder = Path(args.tls_cert or ".").parent
    beside = folder / "ca.pem"
    ca = args.tls_ca or (str(beside) if beside.is_file() else str(args.tls_cert))
    if (args.tls_client_auth or "none") == "none":
        return ca, None, None
    cert, key = _client_pair(folder)
    return ca, str(cert), str(key)


def _client_pair(folder: Path) -> tuple[Path, Path]:
    """client.pem, else the one NAME.pem made by 'opensocket cert --client NAME', in ``folder``."""
    default = folder / "client.pem", folder / "client-key.pem"
    if default[0].is_file():
        return default
    named = [
        (cert, folder / f"{cert.stem}-key.pem")
        for cert in sorted(folder.glob("*.pem"))
        if cert.stem not in ("ca", "server") and not cert.stem.endswith("-key")
    ]
    named = [(cert, key) for cert, key in named if key.is_file()]
    return named[0] if len(named) == 1 else default


def _tls_flags(args: argparse.Namespace) -> list[str]:
    ca, cert, key = tls_client_files(args)
    flags = [f"--tls-ca {shlex.quote(ca)}"]
    if cert is not None and key is not None:
        flags.append(f"--tls-cert {shlex.quote(cert)} --tls-key {shlex.quote(key)}")
    return flags


def connect_commands(args: argparse.Namespace, service: EchoService) -> list[str]:
    """The ``opensocket echo`` command line that reaches each bound address."""
    return [
        f"opensocket echo {reachable_address(a)}{_client_flags(args, service, a)}"
        for a in service.addresses
    ]


def _describe(service: EchoService, addr: Address) -> str:
    mode = service.mode(addr)
    if mode == "udp":
        return "UDP datagrams"
    if mode == "rudp":
        return "reliable UDP messages"
    if mode == "raw":
        return "raw bytes"
    return "framed: " + ", ".join(service.protocol.codecs)


def _listener(service: EchoService, addr: Address, command: str) -> dict[str, Any]:
    mode = service.mode(addr)
    out: dict[str, Any] = {"address": str(addr), "mode": mode}
    if mode == "framed":
        out["codecs"] = list(service.protocol.codecs)
    out["connect"] = command
    return out


def _announce(args: argparse.Namespace, service: EchoService, title: str, extra: Extra) -> None:
    commands = connect_commands(args, service)
    if args.json:
        pairs = zip(service.addresses, commands, strict=True)
        print_json(
            {
                "event": "listening",
                "addresses": [str(a) for a in service.addresses],
                "connect": commands,
                "listeners": [_listener(service, a, c) for a, c in pairs],
            }
        )
        return
    lines = []
    for addr, command in zip(service.addresses, commands, strict=True):
        lines += [f"{title} listening on {addr} ({_describe(service, addr)})", f"  {command}"]
    lines += extra(args, service)
    lines.append("press Ctrl-C to stop")
    print("\n".join(lines), flush=True)


def _report(args: argparse.Namespace, summary: dict[str, Any], title: str) -> None:
    if args.json:
        print_json({"event": "stopped", **summary})
        return
    counts = ", ".join(
        _plural(summary[key], noun)
        for key, noun in (
            ("connections", "connection"),
            ("messages", "message"),
            ("bytes_in", "byte in"),
            ("bytes_out", "byte out"),
        )
    )
    print(f"{title} stopped after {summary['seconds']:.1f}s: {counts}", flush=True)


def _plural(count: int, noun: str) -> str:
    word, _, rest = noun.partition(" ")
    return f"{count} {word if count == 1 else word + 's'}{' ' + rest if rest else ''}"


def check_server_args(args: argparse.Namespace, addrs: Sequence[Address]) -> None:
    """ConfigError for options that do not fit the addresses (they would be ignored)."""
    check_tls_flags(args, addrs)
    if any(a.is_tls for a in addrs) and not args.tls_cert:
        raise ConfigError(
            "tls:// addresses need --tls-cert and --tls-key (`opensocket cert` makes a "
            "development set in ./certs)"
        )
    if getattr(args, "raw", False):
        if any(a.is_rudp for a in addrs):
            raise ConfigError("--raw does not apply to rudp:// addresses (they carry messages)")
        reject_framed_flags(args, "--raw byte streams")
    elif all(a.is_datagram for a in addrs):
        reject_framed_flags(args, "udp:// datagrams")
    elif all(a.is_rudp for a in addrs):
        reject_framed_flags(args, "rudp:// addresses")


def python_snippet(args: argparse.Namespace, service: EchoService) -> list[str]:
    """Three lines of Python (``python -m asyncio``) that talk to the first stream address."""
    streams = [a for a in service.addresses if not a.is_datagram]
    if not streams or service.raw:
        return []
    url = reachable_address(streams[0])
    modules, options = "opensocket", [f'"{url}"']
    codec = "bytes"  # what connect() offers by default
    if args.codec is not None:  # narrowed: the default codec may be refused
        codec = service.protocol.codecs[0]
        options.append(f'codec="{codec}"')
    if args.secret_env:
        modules += ", os"
        options.append(f'secret=os.environ["{args.secret_env}"]')
    elif args.secret_file:
        options.append(f'secret=open("{args.secret_file}", "rb").read().strip()')
    if url.is_tls:
        ca, cert, key = tls_client_files(args)
        files = [f'ca_file="{ca}"'] + ([f'cert_file="{cert}"', f'key_file="{key}"'] if cert else [])
        options.append(f"tls=opensocket.TLSOptions({', '.join(files)})")
    hello = '"hello"' if codec == "json" else 'b"hello"'  # json has no bytes
    return [
        "in Python (python -m asyncio):",
        f"  >>> import {modules}",
        f"  >>> conn = await opensocket.connect({', '.join(options)})",
        f"  >>> await conn.send({hello}); await conn.recv()",
    ]


def serve_echo(
    args: argparse.Namespace,
    urls: Sequence[str],
    *,
    title: str = "echo server",
    extra: Extra = python_snippet,
) -> int:
    """Run echo servers on ``urls`` until SIGINT/SIGTERM; return 0 after a clean shutdown.

    ``extra`` adds lines to the start banner (by default three lines of Python that connect).
    """
    check_server_args(args, [parse_address(u) for u in urls])
    service = EchoService(
        raw=getattr(args, "raw", False),
        protocol=protocol_from(args, codecs=default_codecs()),
        tls=tls_from(args, server=True),
        limits=limits_from(args),
    )

    async def main() -> None:
        with stop_on_signals() as stop:
            await service.start(urls)
            try:
                _announce(args, service, title, extra)
                await stop.wait()
            finally:
                await service.stop()
        _report(args, service.summary(), title)

    aio.run(main(), use_uvloop=not args.no_uvloop)
    return 0


# ---- the client ------------------------------------------------------------------------------


class _FramedLink:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.structured = conn.codec.name != "bytes"

    def unreachable(self) -> str:
        """Streams fail loudly on their own: a timeout has no hidden cause to name."""
        return ""

    def message(self, line: bytes) -> Any:
        if not self.structured:
            return line
        text = line.decode(errors="surrogateescape")
        try:
            return json.loads(text)
        except ValueError:
            return text

    async def send(self, message: Any) -> None:
        await self.conn.send(message)

    async def receive(self, timeout: float) -> Any:
        return await self.conn.recv(timeout=timeout)

    def expected(self, message: Any) -> Any:
        return message

    async def close(self) -> None:
        await self.conn.close()


class _RawLink:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def unreachable(self) -> str:
        """Streams fail loudly on their own: a timeout has no hidden cause to name."""
        return ""

    def message(self, line: bytes) -> bytes:
        return line + b"\n"

    async def send(self, message: bytes) -> None:
        await self.stream.send_all(message)

    async def receive(self, timeout: float) -> bytes:
        line = await self.stream.readline(timeout=timeout)
        if not line:
            raise ConnectionClosedOK(CloseCode.NORMAL, "the server closed the stream", by_peer=True)
        return line

    def expected(self, message: bytes) -> bytes:
        return message

    async def close(self) -> None:
        await self.stream.close()


class _DatagramLink:
    def __init__(self, endpoint: DatagramEndpoint) -> None:
        self.endpoint = endpoint

    def message(self, line: bytes) -> bytes:
        return line

    async def send(self, message: bytes) -> None:
        await self.endpoint.send(message)

    async def receive(self, timeout: float) -> bytes:
        return await self.endpoint.recv(timeout=timeout)

    def expected(self, message: bytes) -> bytes:
        return message

    async def close(self) -> None:
        self.endpoint.close()

    def unreachable(self) -> str:
        """Why no reply came, when the peer's host said so ("" otherwise)."""
        if not self.endpoint.refused:
            return ""
        where = self.endpoint.remote_address
        return f": {where} answered 'port unreachable' (is the echo server running?)"


Link = _FramedLink | _RawLink | _DatagramLink


def _shown(reply: Any) -> Any:
    """A reply as JSON-friendly text: bytes decoded (undecodable bytes as escapes)."""
    if isinstance(reply, bytes | bytearray):
        return bytes(reply).rstrip(b"\r\n").decode(errors="backslashreplace")
    return reply


@dataclass
class _Tally:
    sent: int = 0
    received: int = 0
    late: int = 0  # replies that timed out and may still arrive
    rtts: list[float] = field(default_factory=list)
    error: str | None = None
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        rtts = self.rtts
        out: dict[str, Any] = {
            "sent": self.sent,
            "received": self.received,
            "lost": self.sent - self.received,
        }
        if rtts:
            out["rtt_ms"] = {
                "min": round(min(rtts), 3),
                "avg": round(math.fsum(rtts) / len(rtts), 3),
                "max": round(max(rtts), 3),
            }
        if self.error:
            out["error"] = self.error
        if self.interrupted:
            out["interrupted"] = True
        return out


async def _open_link(args: argparse.Namespace, addr: Address) -> Link:
    options = socket_options(args.timeout)
    if addr.is_datagram:
        return _DatagramLink(await aio.open_datagram(addr, options=options))
    if addr.is_rudp:
        codec = args.codec.split(",")[0] if args.codec else "bytes"
        return _FramedLink(await aio.connect(addr, options=options, codec=codec))
    tls = tls_from(args, server=False)
    if args.raw:
        return _RawLink(await aio.connect(addr, raw=True, tls=tls, options=options))
    try:
        conn = await aio.connect(addr, tls=tls, options=options, protocol=protocol_from(args))
    except (BadMagic, UnexpectedFrame) as exc:
        raise HandshakeError(
            f"{exc}: {addr.hostport} does not speak the opensocket framed protocol "
            "(for a plain byte stream, such as 'echo serve --raw', add --raw)"
        ) from exc
    return _FramedLink(conn)


async def _exchange(link: Link, line: bytes, args: argparse.Namespace, tally: _Tally) -> None:
    """Send one message and wait for its echo; replies that come too late are skipped."""
    message = link.message(line)
    expected = link.expected(message)
    start = time.perf_counter()
    await link.send(message)
    tally.sent += 1
    deadline = start + args.timeout
    while True:
        try:
            reply = await link.receive(max(deadline - time.perf_counter(), 0.001))
        except ReadTimeout:
            tally.late += 1
            why = link.unreachable()
            print(f"no reply within {args.timeout:g}s{why}", file=sys.stderr, flush=True)
            return
        if tally.late and reply != expected:
            tally.late -= 1  # the echo of an earlier message that timed out
            continue
        break
    rtt = (time.perf_counter() - start) * 1000
    tally.received += 1
    tally.rtts.append(rtt)
    if args.json:
        print_json({"reply": _shown(reply), "rtt_ms": round(rtt, 3)})
    else:
        shown = _shown(reply)
        text = repr(shown) if isinstance(shown, str) else json.dumps(shown, default=str)
        print(f"reply {text} {rtt:.3f} ms", flush=True)


async def _scripted(args: argparse.Namespace) -> AsyncGenerator[bytes, None]:
    payload = (args.message if args.message is not None else "hello").encode()
    for i in range(args.count if args.count is not None else 1):
        if i and args.interval > 0:
            await asyncio.sleep(args.interval)
        yield payload


async def _typed(args: argparse.Namespace) -> AsyncGenerator[bytes, None]:
    source = StdinSource()
    reader = await source.open()
    if source.is_terminal:
        print("type a line and press Enter to send it; Ctrl-D ends", file=sys.stderr, flush=True)
    try:
        while line := await reader.readline():
            yield line.rstrip(b"\r\n") if line.endswith(b"\n") else line
    finally:
        source.close()


async def _exchanges(args: argparse.Namespace, addr: Address, tally: _Tally) -> None:
    link = await _open_link(args, addr)
    lines = _scripted(args) if args.count is not None or args.message is not None else _typed(args)
    try:
        async for line in lines:
            await _exchange(link, line, args, tally)
    except ConnectionClosed as exc:
        tally.error = str(exc)
    finally:
        await lines.aclose()
        await link.close()


async def _client(args: argparse.Namespace, addr: Address) -> _Tally:
    """Run the exchanges; Ctrl-C (or SIGTERM) stops them and keeps the tally so far."""
    tally = _Tally()
    with stop_on_signals() as stop:
        work = asyncio.ensure_future(_exchanges(args, addr, tally))
        interrupt = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((work, interrupt), return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupt.cancel()
            if not work.done():
                tally.interrupted = True
                work.cancel()
            await asyncio.gather(work, interrupt, return_exceptions=True)
        if not tally.interrupted:
            work.result()  # a failure to connect ends the run with its error
    return tally


def _check_client_args(args: argparse.Namespace, addr: Address) -> None:
    if args.count is not None and args.count < 0:
        raise ConfigError(f"--count must be 0 or more (got {args.count})")
    check_positive(args.timeout, "--timeout")
    if args.interval < 0:
        raise ConfigError(f"--interval must be 0 or more seconds (got {args.interval:g})")
    check_tls_flags(args, [addr])
    if addr.is_datagram:
        reject_framed_flags(args, "udp:// datagrams")
    elif addr.is_rudp:
        if args.raw:
            raise ConfigError("--raw does not apply to rudp:// addresses (they carry messages)")
        reject_framed_flags(args, "rudp:// addresses", allow=("--codec",))
    elif args.raw:
        reject_framed_flags(args, "--raw byte streams")


def _run_client(args: argparse.Namespace) -> int:
    addr = parse_address(args.url)
    _check_client_args(args, addr)
    tally = aio.run(_client(args, addr), use_uvloop=not args.no_uvloop)
    if tally.interrupted:
        code = 130
    else:
        code = 0 if tally.received == tally.sent and not tally.error else 1
    summary = tally.summary()
    if tally.interrupted and sys.stderr.isatty():
        print(file=sys.stderr)  # past the ^C the terminal echoed
    if tally.error:
        print(f"opensocket echo: error: {tally.error}", file=sys.stderr)
    if args.json:
        print_json({**summary, "exit": code})
    else:
        rtt = summary.get("rtt_ms")
        times = (
            f", rtt min/avg/max {rtt['min']:.3f}/{rtt['avg']:.3f}/{rtt['max']:.3f} ms"
            if rtt
            else ""
        )
        print(f"sent {tally.sent}, received {tally.received}, lost {summary['lost']}{times}")
    return code
