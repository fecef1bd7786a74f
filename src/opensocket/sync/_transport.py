"""Byte transports for the blocking runtime: a plain socket, or TLS over memory BIOs.

Sockets stay non-blocking; every wait is a ``poll`` with an explicit timeout, so one thread can
read while others write and a timer can interrupt a read. TLS runs on ``ssl.SSLObject`` with
memory BIOs behind a lock: OpenSSL forbids concurrent ``SSL_read``/``SSL_write`` on one
connection, which a reader thread and writer threads sharing an ``SSLSocket`` would do.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import ssl
import threading
import time
from typing import Any, Final, cast

__all__ = ["PlainTransport", "TLSTransport", "Transport", "sendall", "tls_handshake", "wait_for"]

RECV_SIZE: Final = 256 * 1024
READ: Final = 1
WRITE: Final = 4
_HAS_POLL: Final = hasattr(select, "poll")


def wait_for(sock: socket.socket, events: int, timeout: float | None) -> bool:
    """Wait until ``sock`` is readable (READ) or writable (WRITE); False on timeout."""
    if _HAS_POLL:
        poller = select.poll()
        poller.register(sock, select.POLLIN if events == READ else select.POLLOUT)
        ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
        return bool(poller.poll(ms))
    rlist, wlist = ([sock], []) if events == READ else ([], [sock])  # pragma: no cover - Windows
    ready = select.select(rlist, wlist, [sock], timeout)  # pragma: no cover - Windows
    return any(ready)  # pragma: no cover - Windows


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (monotonic), or None for no deadline."""
    return None if deadline is None else deadline - time.monotonic()


def sendall(
    sock: socket.socket, data: bytes | bytearray | memoryview, timeout: float | None
) -> None:
    """Write all of ``data`` to a non-blocking socket; TimeoutError if it stalls ``timeout`` s."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with memoryview(data) as whole:
        view = whole.cast("B") if whole.format != "B" or whole.ndim != 1 else whole
        while view:
            try:
                sent = sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent:
                view = view[sent:]
                continue
            left = remaining(deadline)
            if (left is not None and left <= 0) or not wait_for(sock, WRITE, left):
                raise TimeoutError(f"the peer took no data for {timeout:g}s")


class Transport:
    """A connected byte stream over a non-blocking socket (plain TCP or Unix)."""

    tls = False

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._shut = False

    @property
    def is_shut(self) -> bool:
        """True once ``shutdown`` was called: nothing more can be written."""
        return self._shut

    def wait_readable(self, timeout: float | None) -> bool:
        """Wait until a read would make progress; False on timeout."""
        return wait_for(self.sock, READ, timeout)

    def recv_into(self, buf: memoryview) -> int | None:
        """Read into ``buf``: the count, 0 at end of stream, None when nothing was ready."""
        try:
            return self.sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return None

    def recv(self, size: int) -> bytes | None:
        """Read up to ``size`` bytes: ``b""`` at end of stream, None when nothing was ready."""
        try:
            return self.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return None

    def sendall(self, data: bytes | bytearray | memoryview, timeout: float | None) -> None:
        """Write everything; TimeoutError when the peer stops reading, OSError when lost."""
        sendall(self.sock, data, timeout)

    def shutdown_write(self) -> None:
        """Send end-of-stream while still reading."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def shutdown(self) -> None:
        """Stop both directions now: wakes any thread waiting on this socket."""
        self._shut = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the socket; shutting it down first wakes a thread still waiting on it."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    def sockname(self) -> Any:
        """The local socket address, or None once closed."""
        try:
            return self.sock.getsockname()
        except OSError:
            return None

    def peername(self) -> Any:
        """The remote socket address, or None when unknown."""
        try:
            return self.sock.getpeername()
        except OSError:
            return None


PlainTransport = Transport


class TLSTransport(Transport):
    """TLS over a non-blocking socket, thread-safe for one reader and serialized writers."""

    tls = True

    def __init__(
        self, sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, out: ssl.MemoryBIO
    ) -> None:
        super().__init__(sock)
        self._obj = obj
        self._in = incoming
        self._out = out
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._starved = False

    def wait_readable(self, timeout: float | None) -> bool:
        """Ready when decrypted or undecrypted bytes are buffered, else wait on the socket."""
        with self._lock:
            if self._obj.pending() or (self._in.pending and not self._starved):
                return True
        return wait_for(self.sock, READ, timeout)

    def recv_into(self, buf: memoryview) -> int | None:
        """Decrypt into ``buf``, reading the socket when the buffered records run out."""
        count = self._decrypt(buf)
        if count is not None:
            return count
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        with self._lock:
            if data:
                self._in.write(data)
            else:
                self._in.write_eof()
            self._starved = False
        return self._decrypt(buf)

    def recv(self, size: int) -> bytes | None:
        """Read up to ``size`` decrypted bytes (see Transport.recv)."""
        buf = bytearray(size)
        with memoryview(buf) as view:
            count = self.recv_into(view)
        return None if count is None else bytes(buf[:count])

    def _decrypt(self, buf: memoryview) -> int | None:
        with self._lock:
            try:
                count: int | None = cast(int, self._obj.read(len(buf), buf))
            except ssl.SSLWantReadError:
                self._starved = True
                count = None
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0
            except ssl.SSLError as exc:
                raise ConnectionResetError(f"TLS failure: {exc.reason or exc}") from exc
            reply = self._out.pending
        if reply:  # a key update or alert answered while reading: keep record order
            with self._send_lock:
                with self._lock:
                    data = self._out.read()
                sendall(self.sock, data, 5.0)
        return count

    def sendall(self, data: bytes | bytearray | memoryview, timeout: float | None) -> None:
        """Encrypt and write everything (see Transport.sendall)."""
        with self._send_lock:
            with self._lock:
                try:
                    with memoryview(data) as whole:
                        view = whole
                        while view:
                            view = view[self._obj.write(view) :]
                except ssl.SSLError as exc:
                    raise ConnectionResetError(f"TLS failure: {exc.reason or exc}") from exc
                records = self._out.read()
            sendall(self.sock, records, timeout)

    def shutdown_write(self) -> None:
        """TLS has no half-close that keeps reading: nothing to do (as asyncio)."""

    def close(self) -> None:
        """Send close_notify when the link still works, then close the socket."""
        if not self._shut:
            with self._lock:
                with contextlib.suppress(ssl.SSLError):
                    self._obj.unwrap()
                data = self._out.read()
            with contextlib.suppress(OSError):
                self.sock.send(data)
        super().close()


def tls_handshake(
    sock: socket.socket,
    ctx: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None,
    timeout: float | None,
) -> TLSTransport:
    """Run the TLS handshake on a connected socket; raises ssl errors, EOFError, TimeoutError."""
    sock.setblocking(False)
    incoming, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, out, server_side=server_side, server_hostname=server_hostname)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                sendall(sock, out.read(), remaining(deadline))
            left = remaining(deadline)
            if (left is not None and left <= 0) or not wait_for(sock, READ, left):
                raise TimeoutError("the TLS handshake timed out")
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
    except ssl.SSLError:
        with contextlib.suppress(OSError):  # let the peer see our alert
            sock.send(out.read())
        raise
    sendall(sock, out.read(), remaining(deadline))
    return TLSTransport(sock, obj, incoming, out)
