"""``opensocket connect`` and ``opensocket listen``: netcat-like pipes between stdio and a peer.

Bytes go through unchanged (no framing). Stream peers (tcp, tls, unix) half-close when stdin
ends and the pipe lasts until the peer closes; when the peer ends its side first, stdin is still
sent until it ends. UDP sends each stdin chunk as one datagram.
stdin is read without blocking the event loop: through a pipe transport when it is a pipe,
socket or terminal, else by a reader thread (regular files, /dev/null, replaced streams).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import stat
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, Final

from .. import aio
from ..address import Address, parse_address
from ..aio import DatagramEndpoint, Stream
from ..errors import AddressError, ConfigError, ConnectionClosed, ConnectionClosedOK
from ..options import ServerLimits
from ._common import (
    add_tls_args,
    add_uvloop_arg,
    check_positive,
    check_tls_flags,
    socket_options,
    stop_on_signals,
    tls_from,
)

__all__ = ["HELPS", "StdinSource", "configure", "execute", "pipe_stream"]

log = logging.getLogger("opensocket.cli.pipe")

HELPS: Final = {
    "connect": "connect to a peer and pipe stdin/stdout through it (like netcat)",
    "listen": "accept one connection and pipe stdin/stdout through it (like netcat -l)",
}

CHUNK: Final = 64 * 1024
MAX_DATAGRAM: Final = 65000  # fits IPv4 and IPv6 UDP payload limits with room to spare
UDP_LINGER: Final = 1.0
KEEP_OPEN_QUEUE: Final = 16  # connections waiting for their turn with --keep-open

_EPILOGS: Final = {
    "connect": """\
stream peers (tcp, tls, unix): stdin goes to the peer, the peer's bytes go to stdout; when
stdin ends the sending side is shut down (half-close) and output continues until the peer
closes; when the peer ends its side first, stdin is still sent until it ends. UDP: each chunk
of stdin is one datagram; replies go to stdout; after stdin ends, replies are awaited for
--quit-after seconds (default 1).

examples:
  opensocket connect tcp://127.0.0.1:9000 < request.bin > reply.bin
  echo hello | opensocket connect udp://127.0.0.1:9000 -q 0.5   # wait 0.5 s for replies
  opensocket connect tls://localhost:9443 --tls-ca certs/ca.pem
  opensocket connect unix:///run/app.sock
""",
    "listen": """\
the bound address (with the real port when port 0 was asked) is printed on stderr. One
connection is served (another one arriving meanwhile is refused); --keep-open serves
connections one after another until Ctrl-C (up to 16 wait for their turn). UDP: datagrams
go to stdout and stdin goes to the last sender (stdin is not read before the first datagram
arrives).

examples:
  opensocket listen tcp://127.0.0.1:9000 > upload.bin
  opensocket listen tcp://127.0.0.1:0 --keep-open     # port 0: the system picks one
  opensocket listen udp://127.0.0.1:9000
  opensocket cert                                     # makes certs/ for the next line
  opensocket listen tls://127.0.0.1:9443 --tls-cert certs/server.pem --tls-key certs/server-key.pem
""",
}


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of ``connect`` or ``listen``."""
    parser.epilog = _EPILOGS[name]
    parser.add_argument("url", metavar="URL", help="tcp://, tls://, udp:// or unix:// address")
    parser.add_argument(
        "--no-half-close",
        dest="half_close",
        action="store_false",
        help="do not shut down the sending side when stdin ends",
    )
    parser.add_argument(
        "-q",
        "--quit-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="quit this long after stdin ends, even if the peer is still open",
    )
    if name == "connect":
        parser.add_argument(
            "--timeout", type=float, default=10.0, metavar="SECONDS", help="connect timeout"
        )
    else:
        parser.add_argument(
            "-k", "--keep-open", action="store_true", help="serve connections one after another"
        )
    add_tls_args(parser, server=name == "listen")
    add_uvloop_arg(parser)


def execute(args: argparse.Namespace) -> int:
    """Run ``connect`` or ``listen``."""
    addr = parse_address(args.url)
    if addr.is_rudp:
        raise AddressError(
            f"{addr} carries messages, not a byte stream: 'opensocket echo {addr}' talks to a "
            "reliable-UDP server; pipe bytes over tcp://, tls://, unix:// or udp://"
        )
    if args.quit_after is not None and args.quit_after < 0:
        raise ConfigError(f"--quit-after must be 0 or more seconds (got {args.quit_after:g})")
    check_positive(getattr(args, "timeout", None), "--timeout")
    check_tls_flags(args, [addr])
    if args.command == "listen" and addr.is_tls and not args.tls_cert:
        raise ConfigError(
            "tls:// needs --tls-cert and --tls-key (`opensocket cert` makes a development set)"
        )
    main = _connect if args.command == "connect" else _listen
    return aio.run(main(args, addr), use_uvloop=not args.no_uvloop)


# ---- stdin without blocking the loop --------------------------------------------------------


class _ThreadFeed(asyncio.ReadTransport):
    """Feeds a StreamReader from a daemon thread; pausing is honoured between reads."""

    def __init__(
        self, read: Callable[[int], bytes], loop: asyncio.AbstractEventLoop, reader: Any
    ) -> None:
        super().__init__()
        self._read = read
        self._loop = loop
        self._reader: asyncio.StreamReader = reader
        self._go = threading.Event()
        self._go.set()
        self._closing = False
        # daemon: a read blocked on a terminal must not keep the process alive at exit
        threading.Thread(target=self._run, name="opensocket-stdin", daemon=True).start()

    def _run(self) -> None:
        try:
            while not self._closing:
                self._go.wait()
                chunk = self._read(CHUNK)
                if not chunk:
                    break
                self._loop.call_soon_threadsafe(self._reader.feed_data, chunk)
            self._loop.call_soon_threadsafe(self._reader.feed_eof)
        except (OSError, ValueError, RuntimeError):  # stdin closed, or the loop is gone
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._reader.feed_eof)

    def pause_reading(self) -> None:
        self._go.clear()

    def resume_reading(self) -> None:
        self._go.set()

    def is_reading(self) -> bool:
        return self._go.is_set()

    def close(self) -> None:
        self._closing = True
        self._go.set()

    def is_closing(self) -> bool:
        return self._closing


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def _pollable(fd: int) -> bool:
    """True when the loop can watch ``fd`` (pipes, sockets, terminals; not /dev/null)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:  # stdin is closed: the reader thread reports end of input
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


class StdinSource:
    """stdin as an ``asyncio.StreamReader`` that never blocks the event loop."""

    def __init__(self, stream: Any = None, *, limit: int = 1024 * 1024) -> None:
        self._stream = stream if stream is not None else sys.stdin
        self._limit = limit
        self._transport: asyncio.BaseTransport | None = None
        self._fd: int | None = None
        self._was_blocking = True
        self.reader: asyncio.StreamReader | None = None

    @property
    def is_terminal(self) -> bool:
        """True when a person is typing (stdin is a terminal)."""
        fd = _fileno(self._stream)
        return fd is not None and os.isatty(fd)

    async def open(self) -> asyncio.StreamReader:
        """Start reading; return the reader (``b""`` from it means end of input)."""
        loop = asyncio.get_running_loop()
        reader = self.reader = asyncio.StreamReader(limit=self._limit, loop=loop)
        fd = _fileno(self._stream)
        if fd is not None and _pollable(fd):
            self._fd, self._was_blocking = fd, os.get_blocking(fd)
            # a duplicate, so closing the transport leaves fd 0 open for the rest of the process
            pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
            try:
                self._transport, _ = await loop.connect_read_pipe(
                    lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
                )
                return reader
            except (OSError, ValueError):  # a loop that cannot watch it: read in a thread
                pipe.close()
                self.close()
        feed = _ThreadFeed(self._read_function(fd), loop, reader)
        reader.set_transport(feed)
        self._transport = feed
        return reader

    def _read_function(self, fd: int | None) -> Callable[[int], bytes]:
        if fd is not None:
            return lambda n: os.read(fd, n)
        stream = self._stream
        if stream is None:
            return lambda n: b""
        binary = getattr(stream, "buffer", stream)
        reader = getattr(binary, "read1", binary.read)

        def read(n: int) -> bytes:
            data = reader(n)
            return data.encode() if isinstance(data, str) else bytes(data)

        return read

    def close(self) -> None:
        """Stop reading and give stdin back in blocking mode (the shell shares it)."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.set_blocking(self._fd, self._was_blocking)
            self._fd = None


# ---- streams ---------------------------------------------------------------------------------


def _write_out(out: BinaryIO, data: bytes) -> None:
    out.write(data)
    out.flush()


async def _peer_to_out(stream: Stream, out: BinaryIO) -> None:
    while data := await stream.recv(CHUNK):
        _write_out(out, data)


async def _in_to_peer(stdin: asyncio.StreamReader, stream: Stream, half_close: bool) -> None:
    while chunk := await stdin.read(CHUNK):
        await stream.send_all(chunk)
    if half_close:
        await stream.shutdown_write()


async def _finish(tasks: tuple[asyncio.Task[None], ...]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def pipe_stream(
    stream: Stream,
    stdin: asyncio.StreamReader,
    out: BinaryIO,
    *,
    half_close: bool = True,
    quit_after: float | None = None,
) -> None:
    """Copy stdin to the peer and the peer to ``out`` until both directions are done.

    When stdin ends first the sending side is shut down (``half_close``) and output goes on
    until the peer closes, or for at most ``quit_after`` seconds. When the peer ends its side
    first (end of stream), stdin is still sent until it ends.
    """
    down = asyncio.ensure_future(_peer_to_out(stream, out))
    up = asyncio.ensure_future(_in_to_peer(stdin, stream, half_close))
    try:
        await asyncio.wait((down, up), return_when=asyncio.FIRST_COMPLETED)
        if up.done():
            up.result()  # a failed send ends the pipe with its error
            await asyncio.wait((down,), timeout=quit_after)
        else:
            down.result()  # a failed receive ends the pipe with its error
            await up  # the peer half-closed: it may still read what stdin has to say
        if down.done():
            down.result()
    finally:
        await _finish((up, down))


# ---- connect ---------------------------------------------------------------------------------


async def _connect(args: argparse.Namespace, addr: Address) -> int:
    out = sys.stdout.buffer
    source = StdinSource()
    stdin = await source.open()
    try:
        if addr.is_datagram:
            return await _connect_udp(args, addr, stdin, out)
        stream = await aio.connect(
            addr, raw=True, tls=tls_from(args, server=False), options=socket_options(args.timeout)
        )
        log.info("connected to %s from %s", stream.remote_address, stream.local_address)
        async with stream:
            await pipe_stream(
                stream, stdin, out, half_close=args.half_close, quit_after=args.quit_after
            )
        return 0
    finally:
        source.close()


async def _datagrams_to_out(endpoint: DatagramEndpoint, out: BinaryIO) -> None:
    with contextlib.suppress(ConnectionClosedOK):
        while True:
            _write_out(out, await endpoint.recv())


async def _connect_udp(
    args: argparse.Namespace, addr: Address, stdin: asyncio.StreamReader, out: BinaryIO
) -> int:
    endpoint = await aio.open_datagram(addr, options=socket_options(args.timeout))
    down = asyncio.ensure_future(_datagrams_to_out(endpoint, out))
    try:
        while chunk := await stdin.read(MAX_DATAGRAM):
            await endpoint.send(chunk)
        linger = UDP_LINGER if args.quit_after is None else args.quit_after
        await asyncio.wait((down,), timeout=linger)
    finally:
        await _finish((down,))
        endpoint.close()
    if endpoint.refused and not endpoint.datagrams_in:
        print(
            f"opensocket connect: {addr} answered 'port unreachable': nothing is listening "
            "there (is the server running?)",
            file=sys.stderr,
        )
        return 1
    return 0


# ---- listen ----------------------------------------------------------------------------------


class _Listener:
    """Stream connections piped to stdio, one at a time (later ones wait their turn)."""

    def __init__(self, args: argparse.Namespace, stdin: asyncio.StreamReader) -> None:
        self.args = args
        self.stdin = stdin
        self.out = sys.stdout.buffer
        self.done = asyncio.Event()
        self.turn = asyncio.Lock()
        self.current: Stream | None = None

    async def handle(self, stream: Stream) -> None:
        """Pipe one accepted connection; the first one ends the listener unless --keep-open."""
        async with self.turn:
            if self.done.is_set():
                return
            self.current = stream
            print(f"connection from {stream.remote_address}", file=sys.stderr, flush=True)
            try:
                await pipe_stream(
                    stream,
                    self.stdin,
                    self.out,
                    half_close=self.args.half_close,
                    quit_after=self.args.quit_after,
                )
            except ConnectionClosed as exc:
                print(f"connection from {stream.remote_address} lost: {exc}", file=sys.stderr)
            finally:
                self.current = None
                if not self.args.keep_open:
                    self.done.set()

    async def stop(self) -> None:
        """End the current connection (its pipe sees end of stream)."""
        self.done.set()
        if self.current is not None:
            await self.current.close()


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _finish(tuple(tasks))


async def _listen(args: argparse.Namespace, addr: Address) -> int:
    source = StdinSource()
    stdin = await source.open()
    try:
        if addr.is_datagram:
            return await _listen_udp(args, addr, stdin)
        listener = _Listener(args, stdin)
        # without --keep-open a second peer is refused at once; with it, a few may queue
        most = KEEP_OPEN_QUEUE if args.keep_open else 1
        limits = ServerLimits(max_connections=most, max_connections_per_ip=most)
        with stop_on_signals() as stop:
            server = await aio.serve(
                addr, listener.handle, raw=True, tls=tls_from(args, server=True), limits=limits
            )
            _announce(server.addresses)
            try:
                await _first(listener.done.wait(), stop.wait())
            finally:
                await listener.stop()
                await server.close(0)
        return 0
    finally:
        source.close()


class _DatagramListener:
    """Datagrams to stdout; stdin to whoever sent last."""

    def __init__(self, endpoint: DatagramEndpoint, out: BinaryIO) -> None:
        self.endpoint = endpoint
        self.out = out
        self.peer: tuple[str, int] | None = None
        self.has_peer = asyncio.Event()

    async def receive(self) -> None:
        """Print datagrams and remember their sender."""
        with contextlib.suppress(ConnectionClosedOK):
            while True:
                data, self.peer = await self.endpoint.recv_from()
                self.has_peer.set()
                _write_out(self.out, data)

    async def send(self, stdin: asyncio.StreamReader, quit_after: float | None) -> None:
        """Send stdin to the last sender; after stdin ends, wait ``quit_after`` (or forever)."""
        await self.has_peer.wait()
        while chunk := await stdin.read(MAX_DATAGRAM):
            assert self.peer is not None
            await self.endpoint.send_to(chunk, self.peer)
        if quit_after is None:
            await asyncio.Event().wait()  # until Ctrl-C: more datagrams may still come
        await asyncio.sleep(quit_after or 0)


async def _listen_udp(args: argparse.Namespace, addr: Address, stdin: asyncio.StreamReader) -> int:
    with stop_on_signals() as stop:
        endpoint = await aio.open_datagram(addr, bind=True)
        _announce([endpoint.local_address])
        udp = _DatagramListener(endpoint, sys.stdout.buffer)
        try:
            await _first(udp.receive(), udp.send(stdin, args.quit_after), stop.wait())
        finally:
            endpoint.close()
    return 0


def _announce(addresses: list[Address]) -> None:
    print(f"listening on {', '.join(map(str, addresses))}", file=sys.stderr, flush=True)
