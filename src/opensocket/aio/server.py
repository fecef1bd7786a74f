"""asyncio servers: framed or raw, with admission control, TLS and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from .. import tls as tlsmod
from .._log import peer_logger, safe_call
from .._server import ServerBase
from .._sockets import bind_sockets, set_stream_options
from ..address import Address, format_sockaddr
from ..admission import Refusal
from ..errors import (
    CloseCode,
    ConnectionClosed,
    OpenSocketError,
    ReadTimeout,
    TLSError,
    TLSHandshakeError,
    WriteTimeout,
)
from ..hooks import Hooks
from ..options import ProtocolOptions, ServerLimits, SocketOptions, TLSOptions
from ..protocol.connection import Role, encode_close
from ..protocol.frame import FrameType, frame_bytes
from ..stats import ServerStats
from ._accept import Acceptor, Early, detach_socket, screen
from ._framed import Connection, FramedProtocol, client_core
from .stream import DEFAULT_LINE_LIMIT, Stream

__all__ = ["Server"]

log = logging.getLogger("opensocket.server")
# Raw streams have no close codes: name their drops like the framed ones.
_RAW_DROPS: dict[type[BaseException], str] = {
    ReadTimeout: CloseCode.describe(CloseCode.IDLE_TIMEOUT),
    WriteTimeout: CloseCode.describe(CloseCode.SLOW_CONSUMER),
}
Handler = Callable[[Any], Awaitable[Any]]


class Server(ServerBase):
    """A running server. ``addresses`` lists the bound addresses (real ports)."""

    def __init__(
        self,
        handler: Handler,
        *,
        raw: bool,
        protocol: ProtocolOptions,
        options: SocketOptions,
        limits: ServerLimits,
        tls: TLSOptions | ssl.SSLContext | None,
        hooks: Hooks | None,
        scheme: str,
    ) -> None:
        super().__init__(
            handler,
            raw=raw,
            protocol=protocol,
            options=options,
            limits=limits,
            tls=tls,
            hooks=hooks,
            scheme=scheme,
        )
        self._servers: list[asyncio.base_events.Server] = []
        self._live: dict[Any, tuple[str | None, asyncio.Task[Any] | None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.get_running_loop().create_future()

    async def _start(self, addr: Address) -> None:
        loop = asyncio.get_running_loop()
        socks = bind_sockets(addr, self.options)
        for sock in socks:
            srv = await loop.create_server(
                lambda: Acceptor(self._accepted), sock=sock, backlog=self.options.backlog
            )
            self._servers.append(srv)
        self._record_bound(addr, socks)
        log.info("listening on %s", ", ".join(map(str, self.addresses)))

    # ---- accepting -------------------------------------------------------------------------

    def _accepted(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        peer, ip, refusal = screen(transport, self._admission, self._stats, closing=self._closing)
        if refusal is not None:
            self._refuse(transport, refusal)
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                set_stream_options(sock, self.options)
        if self._ssl is None:
            self._attach(transport, peer, ip, tls=False)
        else:
            task = loop.create_task(self._start_tls(detach_socket(transport), peer, ip))
            self._track(task)

    def _refuse(self, transport: asyncio.Transport, refusal: Refusal) -> None:
        if not self.raw and self._ssl is None:
            transport.write(
                frame_bytes(FrameType.ERROR, encode_close(refusal.code, refusal.reason))
            )
        transport.close()

    async def _start_tls(self, sock: socket.socket, peer: str, ip: str | None) -> None:
        loop = asyncio.get_running_loop()
        assert self._ssl is not None
        try:
            transport, _ = await loop.connect_accepted_socket(
                Early,
                sock,
                ssl=self._ssl,
                ssl_handshake_timeout=self.limits.handshake_timeout,
            )
        except (OSError, EOFError, TimeoutError, ssl.SSLError) as exc:
            sock.close()
            error: TLSError = tlsmod.tls_error(exc, peer, server_side=True)
            if isinstance(exc, TimeoutError) or "taking longer" in str(exc):
                error = TLSHandshakeError(
                    f"the client {peer} did not complete the TLS handshake in "
                    f"{self.limits.handshake_timeout:g}s"
                )
            self._handshake_failed(peer, ip, error)
            return
        self._attach(transport, peer, ip, tls=True)

    def _handshake_failed(self, peer: str, ip: str | None, error: BaseException) -> None:
        self._admission.release(ip)
        self._stats.handshakes_failed += 1
        self._stats.dropped["handshake failed"] += 1
        log.warning("[%s] handshake failed: %s", peer, error)
        safe_call(self.hooks.on_handshake_failed, peer, error)

    def _attach(
        self, transport: asyncio.Transport, peer: str, ip: str | None, *, tls: bool
    ) -> None:
        if self.raw:
            self._attach_raw(transport, peer, ip)
            return
        loop = asyncio.get_running_loop()
        core = client_core(
            Role.SERVER, self.protocol, loop=loop, tls=tls, idle=self.limits.idle_timeout
        )
        proto = FramedProtocol(
            core,
            peer=peer,
            write_timeout=self.limits.stuck_timeout,
            hooks=self.hooks,
            on_ready=self._ready,
            on_closed=self._closed_proto,
        )
        self._live[proto] = (ip, None)
        early = transport.get_protocol()
        transport.set_write_buffer_limits(high=self.limits.send_buffer_limit)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if isinstance(early, Early):
            early.replay(proto)

    def _ready(self, proto: FramedProtocol) -> None:
        transport = proto.transport
        assert transport is not None
        local = format_sockaddr(transport.get_extra_info("sockname"))
        conn = Connection(proto, local, proto.peer)
        safe_call(self.hooks.on_connect, conn)
        task = asyncio.get_running_loop().create_task(self._run(conn, proto))
        ip = self._live.get(proto, (None, None))[0]
        self._live[proto] = (ip, task)
        self._track(task)

    async def _run(self, conn: Connection, proto: FramedProtocol) -> None:
        try:
            await self.handler(conn)
        except (ConnectionClosed, WriteTimeout):
            pass  # the connection ended (and was counted) under the handler
        except asyncio.CancelledError:
            proto.close(CloseCode.GOING_AWAY, "server shutting down")
            raise
        except Exception as exc:
            proto.log.exception("handler failed")
            proto.errors += 1
            proto.close(CloseCode.INTERNAL_ERROR, f"internal server error: {type(exc).__name__}")
            return
        if not conn.closed:
            if self._closing:
                await conn.close(CloseCode.GOING_AWAY, "server shutting down")
            else:
                await conn.close()

    def _closed_proto(self, proto: FramedProtocol) -> None:
        ip, _task = self._live.pop(proto, (None, None))
        self._admission.release(ip)
        term = proto.core.terminated
        self._stats.add_connection(proto.stats())
        if proto.connection is None:
            error = (
                term.error if term and term.error else OpenSocketError(term.reason if term else "")
            )
            self._stats.handshakes_failed += 1
            safe_call(self.hooks.on_handshake_failed, proto.peer, error)
        if term is not None and term.code not in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
            self._stats.dropped[CloseCode.describe(term.code)] += 1

    def _attach_raw(self, transport: asyncio.Transport, peer: str, ip: str | None) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=DEFAULT_LINE_LIMIT, loop=loop)
        proto = asyncio.StreamReaderProtocol(reader, loop=loop)
        early = transport.get_protocol()
        transport.set_write_buffer_limits(high=self.limits.send_buffer_limit)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if isinstance(early, Early):
            early.replay(proto)
        writer = asyncio.StreamWriter(transport, proto, reader, loop)
        stream = Stream(
            reader,
            writer,
            read_timeout=self.limits.idle_timeout,
            write_timeout=self.limits.stuck_timeout,
        )
        task = loop.create_task(self._run_raw(stream, peer, ip))
        self._live[stream] = (ip, task)
        self._track(task)

    async def _run_raw(self, stream: Stream, peer: str, ip: str | None) -> None:
        plog = peer_logger("server", peer)
        try:
            await self.handler(stream)
        except (ConnectionClosed, ConnectionError):
            pass
        except OpenSocketError as exc:
            plog.info("dropped: %s", exc)
            self._stats.dropped[_RAW_DROPS.get(type(exc), type(exc).__name__)] += 1
        except Exception:
            plog.exception("handler failed")
            self._stats.errors += 1
        finally:
            self._admission.release(ip)
            self._stats.bytes_in += stream.bytes_in
            self._stats.bytes_out += stream.bytes_out
            try:
                await stream.close()
            finally:
                self._live.pop(stream, None)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- public ----------------------------------------------------------------------------

    @property
    def stats(self) -> ServerStats:
        """Counters: accepted, active, bytes/messages in and out, drops by reason."""
        snap = ServerStats(
            accepted=self._stats.accepted,
            handshakes_failed=self._stats.handshakes_failed,
            errors=self._stats.errors,
            dropped=self._stats.dropped.copy(),
        )
        snap.bytes_in, snap.bytes_out = self._stats.bytes_in, self._stats.bytes_out
        snap.messages_in, snap.messages_out = self._stats.messages_in, self._stats.messages_out
        snap.frames_in, snap.frames_out = self._stats.frames_in, self._stats.frames_out
        snap.active = len(self._live)
        for item in list(self._live):
            if isinstance(item, FramedProtocol):
                snap.add_connection(item.stats())
        return snap

    async def serve_forever(self) -> None:
        """Run until ``close()`` is called or the task is cancelled."""
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            await self.close()
            raise

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting, let handlers finish up to ``timeout`` (default shutdown_grace),
        then close the remaining connections with 'going away'.

        Handlers finish what they hold: messages already received are still delivered, sends
        still work, but a ``recv()`` that would wait for new input raises ConnectionClosedOK
        (going away), which ends ``async for`` loops at once.
        """
        if self._closing:
            await asyncio.shield(self._closed)
            return
        self._closing = True
        grace = self.limits.shutdown_grace if timeout is None else timeout
        for srv in self._servers:
            srv.close()
        self._remove_unix_files()
        for item in self._live:
            if isinstance(item, FramedProtocol):
                item.stop_delivering()  # handlers waiting in recv() end; queued work is kept
        handlers = {t for _, t in self._live.values() if t is not None}
        if handlers and grace > 0:
            await asyncio.wait(handlers, timeout=grace)
        await self._close_connections()
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await srv.wait_closed()
        if not self._closed.done():
            self._closed.set_result(None)
        log.info("server on %s closed", ", ".join(map(str, self.addresses)))

    async def _close_connections(self) -> None:
        """Say 'going away' to every connection, wait for the closes, then stop the tasks."""
        reason = "server shutting down"
        protos = [item for item in self._live if isinstance(item, FramedProtocol)]
        for proto in protos:
            proto.reject(CloseCode.GOING_AWAY, reason)
        for item in list(self._live):
            if isinstance(item, Stream):
                item.abort()  # raw streams have no closing handshake; the grace is over
        lost = [proto.lost for proto in protos if not proto.lost.done()]
        if lost:
            await asyncio.wait(lost, timeout=self.protocol.close_timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.protocol.close_timeout)
        for proto in protos:
            if proto.transport is not None and not proto.lost.done():
                proto.transport.abort()
        lost = [proto.lost for proto in protos if not proto.lost.done()]
        if lost:
            await asyncio.wait(lost, timeout=1.0)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
