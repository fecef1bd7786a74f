"""Blocking servers: an accept thread, a reader thread per connection, a bounded handler pool.

The accept thread waits on every listening socket (and a wake-up socket, so shutdown is
prompt), runs admission control and starts a thread per admitted connection. That thread does
the TLS handshake and then drives the framed handshake under its deadline, so a client that
never speaks costs no handler worker and is dropped on time. Once the handshake completes the
connection joins the handler pool: ``limits.workers`` threads, and at most ``limits.max_pending``
connections waiting for one; connections beyond that are refused with a clear error.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import tls as tlsmod
from .._log import peer_logger, safe_call
from .._server import ServerBase
from .._sockets import bind_sockets, close_quietly, set_stream_options
from ..address import Address, peer_text
from ..admission import Refusal
from ..errors import CloseCode, ConnectionClosed, OpenSocketError, TLSError, TLSHandshakeError
from ..hooks import Hooks
from ..options import ProtocolOptions, ServerLimits, SocketOptions, TLSOptions
from ..protocol.connection import FramedConnection, Role, encode_close
from ..protocol.frame import FrameType, frame_bytes
from ..stats import ServerStats
from ._framed import Connection, FramedLink
from ._transport import Transport, tls_handshake
from .stream import Stream, fmt_sockaddr

__all__ = ["Server"]

log = logging.getLogger("opensocket.server")
Handler = Callable[[Any], Any]
PENDING_PER_WORKER = 4
ACCEPT_BATCH = 64
LINGER_SECONDS = 2.0
MAX_LINGERING = 1024
ACCEPT_PAUSE = 0.1
JOIN_TIMEOUT = 5.0


class _Pool:
    """At most ``size`` worker threads, started on demand, running queued jobs in order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = 0
        self._queued = 0

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a job; start a worker if none is free and the pool is not full."""
        with self._lock:
            self._queued += 1
            if self._queued > self._idle and len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._work, name=f"opensocket-worker-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
                self._queued -= job is not None
            if job is None:
                return
            try:
                job()
            except Exception:  # jobs handle their own errors; this is a last resort
                log.exception("server job failed")

    def stop(self, timeout: float) -> None:
        """Let queued jobs finish, then end every worker (waiting up to ``timeout``)."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
            if thread.is_alive():
                log.warning("a handler did not return after shutdown: %s left running", thread.name)


class Server(ServerBase):
    """A running blocking server. ``addresses`` lists the bound addresses (real ports)."""

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
        self.max_pending = (
            PENDING_PER_WORKER * limits.workers
            if limits.max_pending is None
            else limits.max_pending
        )
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._live: dict[object, str | None] = {}
        self._handshaking: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._reserved = 0
        self._handlers = 0
        self._listeners: list[socket.socket] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._pool = _Pool(limits.workers)
        self._accept_thread: threading.Thread | None = None
        self._done = threading.Event()

    def _start(self, addr: Address) -> None:
        socks = bind_sockets(addr, self.options)
        self._listeners.extend(socks)
        self._record_bound(addr, socks)

    def _launch(self) -> None:
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="opensocket-accept", daemon=True
        )
        self._accept_thread.start()
        log.info("listening on %s", ", ".join(map(str, self.addresses)))

    # ---- the accept thread -----------------------------------------------------------------

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        lingering: dict[socket.socket, float] = {}
        paused_until: float | None = None
        try:
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            for sock in self._listeners:
                sel.register(sock, selectors.EVENT_READ, "listen")
            while not self._closing:
                waits = [*lingering.values(), *([paused_until] if paused_until else [])]
                timeout = max(min(waits) - time.monotonic(), 0.0) if waits else None
                for key, _ in sel.select(timeout):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    if key.data == "listen" and not self._accept_some(ready, sel, lingering):
                        paused_until = self._pause(sel)
                    elif key.data == "linger":
                        self._drain_lingering(ready, sel, lingering)
                now = time.monotonic()
                if paused_until is not None and now >= paused_until:
                    paused_until = None
                    for sock in self._listeners:
                        sel.register(sock, selectors.EVENT_READ, "listen")
                for sock in [s for s, t in lingering.items() if t <= now]:
                    sel.unregister(sock)
                    del lingering[sock]
                    close_quietly(sock)
        except Exception:
            log.exception("the accept loop failed; no new connections will be accepted")
        finally:
            for sock in lingering:
                close_quietly(sock)
            sel.close()
            for sock in self._listeners:
                close_quietly(sock)

    def _pause(self, sel: selectors.BaseSelector) -> float:
        """Stop accepting for a moment (out of file descriptors) instead of spinning."""
        for sock in self._listeners:
            with contextlib.suppress(KeyError):
                sel.unregister(sock)
        return time.monotonic() + ACCEPT_PAUSE

    def _accept_some(
        self,
        lsock: socket.socket,
        sel: selectors.BaseSelector,
        lingering: dict[socket.socket, float],
    ) -> bool:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, sockaddr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                log.warning("accept failed: %s (pausing %gs)", exc, ACCEPT_PAUSE)
                return False
            self._admit(sock, sockaddr, sel, lingering)
        return True

    def _admit(
        self,
        sock: socket.socket,
        sockaddr: Any,
        sel: selectors.BaseSelector,
        lingering: dict[socket.socket, float],
    ) -> None:
        peer, ip = peer_text(sockaddr)
        with self._lock:
            self._stats.accepted += 1
            refusal = (
                Refusal(CloseCode.GOING_AWAY, "server is shutting down")
                if self._closing
                else self._admission.admit(ip, time.monotonic())
            )
            if refusal is None and self._reserved >= self.limits.workers + self.max_pending:
                self._admission.release(ip)
                refusal = Refusal(
                    CloseCode.CONNECTION_LIMIT,
                    f"server busy: all {self.limits.workers} handlers are running and "
                    f"{self.max_pending} connections are waiting; try again later",
                )
            if refusal is None:
                self._reserved += 1
        if refusal is not None:
            self._refuse(sock, peer, refusal, sel, lingering)
            return
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            set_stream_options(sock, self.options)
        thread = threading.Thread(
            target=self._serve_conn, args=(sock, peer, ip), name=f"opensocket-conn {peer}"
        )
        thread.daemon = True
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _refuse(
        self,
        sock: socket.socket,
        peer: str,
        refusal: Refusal,
        sel: selectors.BaseSelector,
        lingering: dict[socket.socket, float],
    ) -> None:
        with self._lock:
            self._stats.dropped[CloseCode.describe(refusal.code)] += 1
        log.warning("[%s] refused: %s", peer, refusal.reason)
        sock.setblocking(False)
        if not self.raw and self._ssl is None:
            with contextlib.suppress(OSError):
                sock.send(frame_bytes(FrameType.ERROR, encode_close(refusal.code, refusal.reason)))
        if len(lingering) >= MAX_LINGERING:
            close_quietly(sock)
            return
        # Close only once the peer has (or after a moment): closing with its HELLO unread
        # would send a reset that can destroy our ERROR frame before the peer reads it.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sel.register(sock, selectors.EVENT_READ, "linger")
        lingering[sock] = time.monotonic() + LINGER_SECONDS

    @staticmethod
    def _drain_lingering(
        sock: socket.socket, sel: selectors.BaseSelector, lingering: dict[socket.socket, float]
    ) -> None:
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            sel.unregister(sock)
            del lingering[sock]
            close_quietly(sock)

    # ---- one thread per connection ---------------------------------------------------------

    def _claim(self, sock: socket.socket) -> bool:
        """A subclass may take an admitted socket before TLS and the handshake (for example to
        share the port with another protocol): return True and the socket is its own. The
        server releases the connection's admission slot. The base server takes none."""
        return False

    def _serve_conn(self, sock: socket.socket, peer: str, ip: str | None) -> None:
        try:
            if self._claim(sock):
                with self._lock:
                    self._admission.release(ip)
                    self._reserved -= 1
                return
            transport = self._secure(sock, peer, ip)
            if transport is None:
                return
            if self.raw:
                self._dispatch_raw(transport, peer, ip)
                return
            core = FramedConnection(
                Role.SERVER,
                self.protocol,
                now=time.monotonic(),
                tls=transport.tls,
                idle_timeout=self.limits.idle_timeout,
            )
            link = FramedLink(
                core,
                transport,
                peer=peer,
                write_timeout=self.limits.stuck_timeout,
                hooks=self.hooks,
                on_ready=self._ready,
                on_closed=self._link_closed,
            )
            with self._lock:
                self._live[link] = ip
                late = self._closing  # accepted as shutdown began, after its sweep of _live
            if late:
                link.close(CloseCode.GOING_AWAY, "server shutting down", wait=False)
            link.run()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _secure(self, sock: socket.socket, peer: str, ip: str | None) -> Transport | None:
        """The plain transport, or the TLS one after a handshake bounded in time."""
        if self._ssl is None:
            return Transport(sock)
        with self._lock:
            self._handshaking.add(sock)
        try:
            return tls_handshake(
                sock,
                self._ssl,
                server_side=True,
                server_hostname=None,
                timeout=self.limits.handshake_timeout,
            )
        except (OSError, EOFError, ssl.SSLError) as exc:
            error: TLSError = tlsmod.tls_error(exc, peer, server_side=True)
            if isinstance(exc, TimeoutError):
                error = TLSHandshakeError(f"{peer} did not complete TLS in time")
            close_quietly(sock)
            self._handshake_failed(peer, ip, error, release_slot=True)
            return None
        finally:
            with self._lock:
                self._handshaking.discard(sock)

    def _handshake_failed(
        self, peer: str, ip: str | None, error: BaseException, *, release_slot: bool
    ) -> None:
        with self._lock:
            self._admission.release(ip)
            self._reserved -= release_slot
            self._stats.handshakes_failed += 1
            self._stats.dropped["handshake failed"] += 1
        log.warning("[%s] handshake failed: %s", peer, error)
        safe_call(self.hooks.on_handshake_failed, peer, error)

    # ---- framed connections ----------------------------------------------------------------

    def _ready(self, link: FramedLink) -> None:
        """Handshake done (reader thread): make the Connection and queue its handler."""
        conn = Connection(link, fmt_sockaddr(link.transport.sockname()), link.peer)
        safe_call(self.hooks.on_connect, conn)
        with self._lock:
            self._handlers += 1
        self._pool.submit(lambda: self._run_handler(conn, link))

    def _run_handler(self, conn: Connection, link: FramedLink) -> None:
        try:
            if not (self._closing and conn.closed):
                self.handler(conn)
        except ConnectionClosed:
            pass
        except Exception as exc:
            link.log.exception("handler failed")
            link.errors += 1
            link.close(CloseCode.INTERNAL_ERROR, f"internal server error: {type(exc).__name__}")
        finally:
            try:
                if not conn.closed:
                    if self._closing:
                        conn.close(CloseCode.GOING_AWAY, "server shutting down")
                    else:
                        conn.close()
            finally:
                self._handler_done()

    def _handler_done(self) -> None:
        with self._lock:
            self._handlers -= 1
            self._reserved -= 1
            self._idle.notify_all()

    def _link_closed(self, link: FramedLink) -> None:
        """The reader thread ends: release admission, fold stats, report a failed handshake."""
        term = link.core.terminated
        failed = link.connection is None
        with self._lock:
            self._admission.release(self._live.pop(link, None))
            self._stats.add_connection(link.stats())
            if failed:
                self._reserved -= 1
                self._stats.handshakes_failed += 1
            if term is not None and term.code not in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
                self._stats.dropped[CloseCode.describe(term.code)] += 1
        if failed:
            error = term.error if term and term.error else link.core.closed_exception()
            safe_call(self.hooks.on_handshake_failed, link.peer, error)

    # ---- raw connections -------------------------------------------------------------------

    def _dispatch_raw(self, transport: Transport, peer: str, ip: str | None) -> None:
        stream = Stream(
            transport,
            read_timeout=self.limits.idle_timeout,
            write_timeout=self.limits.stuck_timeout,
        )
        with self._lock:
            self._live[stream] = ip
            self._handlers += 1
        self._pool.submit(lambda: self._run_raw(stream, peer, ip))

    def _run_raw(self, stream: Stream, peer: str, ip: str | None) -> None:
        plog = peer_logger("server", peer)
        try:
            self.handler(stream)
        except (ConnectionClosed, ConnectionError):
            pass
        except OpenSocketError as exc:
            plog.info("dropped: %s", exc)
            with self._lock:
                self._stats.dropped[type(exc).__name__] += 1
        except Exception:
            plog.exception("handler failed")
            with self._lock:
                self._stats.errors += 1
        finally:
            stream.close()
            with self._lock:
                self._live.pop(stream, None)
                self._admission.release(ip)
                self._stats.bytes_in += stream.bytes_in
                self._stats.bytes_out += stream.bytes_out
            self._handler_done()

    # ---- public ----------------------------------------------------------------------------

    @property
    def stats(self) -> ServerStats:
        """Counters: accepted, active, bytes/messages in and out, drops by reason."""
        with self._lock:
            snap = ServerStats(
                accepted=self._stats.accepted,
                handshakes_failed=self._stats.handshakes_failed,
                errors=self._stats.errors,
                dropped=self._stats.dropped.copy(),
            )
            snap.bytes_in, snap.bytes_out = self._stats.bytes_in, self._stats.bytes_out
            snap.messages_in, snap.messages_out = self._stats.messages_in, self._stats.messages_out
            snap.frames_in, snap.frames_out = self._stats.frames_in, self._stats.frames_out
            live = list(self._live)
        snap.active = len(live)
        for item in live:
            if isinstance(item, FramedLink):
                snap.add_connection(item.stats())
        return snap

    def serve_forever(self) -> None:
        """Block until ``shutdown()`` is called (from another thread or a signal handler)."""
        try:
            self._done.wait()
        except KeyboardInterrupt:
            self.shutdown()
            raise

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, let handlers finish up to ``timeout`` (default shutdown_grace),
        then close the remaining connections with 'going away'.

        Handlers finish what they hold: queued messages are still delivered and sends still
        work, but a ``recv()`` that would wait for new input raises ConnectionClosedOK
        (going away), which ends ``for msg in conn`` loops at once.
        """
        with self._lock:
            if self._closing:
                closing_already = True
            else:
                closing_already, self._closing = False, True
        if closing_already:
            self._done.wait()
            return
        self._stop_accepting()
        with self._lock:
            links = [item for item in self._live if isinstance(item, FramedLink)]
        for link in links:
            link.stop_delivering()  # handlers waiting in recv() end; queued work is kept
        grace = self.limits.shutdown_grace if timeout is None else timeout
        with self._idle:
            self._idle.wait_for(lambda: self._handlers == 0, grace)
        self._close_remaining()
        self._pool.stop(JOIN_TIMEOUT)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        close_quietly(self._wake_r)
        close_quietly(self._wake_w)
        self._done.set()
        log.info("server on %s closed", ", ".join(map(str, self.addresses)))

    def _stop_accepting(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if self._accept_thread is not None:
            self._accept_thread.join()
        else:
            for sock in self._listeners:
                close_quietly(sock)
        self._remove_unix_files()

    def _close_remaining(self) -> None:
        with self._lock:
            live = list(self._live)
            for sock in self._handshaking:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        links = [item for item in live if isinstance(item, FramedLink)]
        for link in links:
            link.close(CloseCode.GOING_AWAY, "server shutting down", wait=False)
        for item in live:
            if isinstance(item, Stream):
                item.close()
        deadline = time.monotonic() + self.protocol.close_timeout
        for link in links:
            if not link.closed.wait(max(deadline - time.monotonic(), 0.0)):
                link.abort(ConnectionClosed(CloseCode.GOING_AWAY, "server shutting down"))

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
