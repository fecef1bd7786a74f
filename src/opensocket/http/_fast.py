"""The per-connection fast path: requests answered straight from ``data_received``.

Every request whose answer fits in memory (a small file, an error, a folder listing, a 304, a
range of a small file) is planned and written in the callback that read it: no task, no
future, one ``transport.write`` per batch of pipelined requests. A plain ``GET``/``HEAD`` of a
small file is answered from a per-target cache of whole responses (head and body, per
keep-alive/close, HEAD and HSTS-or-not variant, rebuilt when the Date second changes), checked
against one ``os.stat`` of the file: its inode, size and mtime must not have changed, so an
edited, replaced or deleted file (or a symlink swapped in on its path) is planned afresh.

What has to wait (a request body still arriving, a large file to stream, a head split across
reads, a malformed request) hands the connection for good to the stream session in
``server.py``, with the same parser and the requests it has queued.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Final, cast

from ._parser import Request, RequestParser
from .access import AccessRecord, format_access
from .files import FileRange, Plan, error_plan

if TYPE_CHECKING:
    from .server import HttpServer

__all__ = ["FastProtocol", "ResponseCache", "http_date", "log_access", "response_headers"]

log = logging.getLogger("opensocket.http")
access_log = logging.getLogger("opensocket.http.access")
CLOSE_AFTER: Final = frozenset({400, 408, 413, 414, 431, 500, 503})
LINGER_TIME: Final = 1.0
_LINGER_BYTES: Final = 4 * 1024 * 1024
_BATCH_BYTES: Final = 256 * 1024  # pipelined answers gathered into one write, at most
# headers that change the answer to a GET: such requests skip the response cache
_SPECIAL: Final = frozenset({"range", "if-range", "if-none-match", "if-modified-since"})
_CACHED_METHODS: Final = ("GET", "HEAD")  # every other method is planned (a 405)

wall_clock = time.time  # the Date header's clock (tests replace it)
_date: list[int | str] = [0, ""]


def http_date() -> str:
    """The Date header value, formatted once a second."""
    now = int(wall_clock())
    if _date[0] != now:
        _date[:] = [now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))]
    return str(_date[1])


def response_headers(plan: Plan, close: bool, hsts: str) -> tuple[tuple[str, str], ...]:
    """The response's headers: Date and Server, the plan's, HSTS (``hsts``: its value, or ""
    for none), Connection: close."""
    headers = (("Date", http_date()), ("Server", "opensocket"), *plan.headers)
    if hsts:
        headers += (("Strict-Transport-Security", hsts),)
    if close:
        headers += (("Connection", "close"),)
    return headers


def log_access(
    server: HttpServer, ip: str, request: Request | None, status: int, size: int
) -> None:
    """One access-log line, formatted only when the access logger takes INFO."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    record = AccessRecord(ip, "", "", "", status, size)
    if request is not None:
        headers = request.headers
        record = AccessRecord(
            ip,
            request.method,
            request.target,
            request.version,
            status,
            size,
            headers.get("referer", ""),
            headers.get("user-agent", ""),
        )
    access_log.info("%s", format_access(record, server.log_format, wall_clock()))


class _Entry:
    """A small file's 200 response: the plan, the body, and the whole responses of this second."""

    __slots__ = ("body", "ino", "mtime_ns", "path", "plan", "second", "size", "variants")

    def __init__(self, plan: Plan, body: bytes, st: os.stat_result) -> None:
        assert plan.path is not None
        self.plan = plan
        self.path = plan.path
        self.body = body
        self.ino, self.size, self.mtime_ns = st.st_ino, st.st_size, st.st_mtime_ns
        self.second = 0
        self.variants: dict[int, bytes] = {}


class ResponseCache:
    """Whole 200 responses of small files by request target (least recently added dropped)."""

    def __init__(self, server: HttpServer, entries: int) -> None:
        self.server = server
        self.entries = entries
        self._by_target: OrderedDict[str, _Entry] = OrderedDict()

    def lookup(self, request: Request, hsts: str, close: bool) -> bytes | None:
        """The response to a plain GET/HEAD of a cached file that has not changed, or None.

        ``hsts``: the Strict-Transport-Security value this request gets ("" for none).
        """
        entry = self._by_target.get(request.target)
        if (
            entry is None
            or request.method not in _CACHED_METHODS
            or not _SPECIAL.isdisjoint(request.headers)
        ):
            return None
        try:
            st = os.stat(entry.path)
        except OSError:
            st = None
        if (
            st is None
            or st.st_mtime_ns != entry.mtime_ns
            or st.st_ino != entry.ino
            or st.st_size != entry.size
        ):
            del self._by_target[request.target]
            return None
        head = request.method == "HEAD"
        second = int(wall_clock())
        if entry.second != second:
            entry.variants.clear()
            entry.second = second
        variant = head | close << 1 | bool(hsts) << 2  # one HSTS value per server
        response = entry.variants.get(variant)
        if response is None:
            plan = entry.plan
            response = self.server.response_head(plan, response_headers(plan, close, hsts))
            if not head:
                response += entry.body
            entry.variants[variant] = response
        return response

    def body_size(self, request: Request) -> int:
        """The body length a cached response to ``request`` carries (0 for HEAD)."""
        entry = self._by_target.get(request.target)
        return 0 if entry is None or request.method == "HEAD" else len(entry.body)

    def add(self, request: Request, plan: Plan, body: bytes) -> None:
        """Remember a whole-file 200 answer to a plain GET."""
        if plan.stat is None or not _SPECIAL.isdisjoint(request.headers):
            return
        self._by_target[request.target] = _Entry(plan, body, plan.stat)
        if len(self._by_target) > self.entries:
            self._by_target.popitem(last=False)


class FastProtocol(asyncio.Protocol):
    """One client connection while every answer is ready at once; see the module docstring."""

    def __init__(self, server: HttpServer, ip: str | None, parser: RequestParser) -> None:
        self.server = server
        self.peer_ip = ip  # None on unix sockets: the admission key
        self.ip = ip or "unix"
        self.parser = parser
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.secure = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._paused = False
        self._eof = False
        self._lingering = -1  # bytes dropped after the last response; -1: not lingering
        self._active = True  # False once handed over or closed
        self._owned = True  # holds its admission place (until handed over or lost)
        self._closing = False  # closed by us, waiting for the output to flush

    # ---- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.secure = transport.get_extra_info("sslcontext") is not None
        self._deadline = self.loop.time() + self.limits.keepalive_timeout
        self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def data_received(self, data: bytes) -> None:
        if self._lingering >= 0:
            self._lingering += len(data)
            if self._lingering > _LINGER_BYTES:
                self._close()
            return
        if not self._active:
            return
        self.parser.feed(data)
        self._serve()

    def eof_received(self) -> bool:
        self._eof = True
        if self._lingering >= 0 or not self._active:
            return False
        parser = self.parser
        # a response still waiting for the client to read (paused) keeps the connection open
        return self._paused and bool(parser.requests)

    def pause_writing(self) -> None:
        self._paused = True
        assert self.transport is not None
        self.transport.pause_reading()
        self._sooner(self.loop.time() + self.limits.write_timeout)

    def resume_writing(self) -> None:
        self._paused = False
        if not self._active or self._lingering >= 0:
            return
        assert self.transport is not None
        self.transport.resume_reading()
        self._serve()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._active = False
        self._lingering = -1
        self.server._fast.discard(self)
        if self._owned:
            self._owned = False
            self.server._admission.release(self.peer_ip)

    # ---- serving -----------------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer the queued requests that can be answered now; hand the rest over."""
        parser = self.parser
        requests = parser.requests
        transport = self.transport
        assert transport is not None
        out: list[bytes] = []
        size = 0
        while requests and not self._paused:
            answer = self._answer(requests[0])
            if answer is None:
                break
            requests.popleft()
            response, close = answer
            if out or requests:  # pipelined: answers gathered into one write
                out.append(response)
                size += len(response)
                # at most _BATCH_BYTES at once: the transport may ask us to pause
                if close or not requests or size >= _BATCH_BYTES:
                    transport.write(b"".join(out))
                    out.clear()
                    size = 0
            else:
                transport.write(response)
            if close:
                self._finish()
                return
        if out:
            transport.write(b"".join(out))
        if self._paused:
            return
        if requests or parser.in_head or parser.current is not None or parser.done:
            self._hand_over()
        elif self._eof:
            self._close()
        else:
            self._deadline = self.loop.time() + self.limits.keepalive_timeout

    def _answer(self, request: Request) -> tuple[bytes, bool] | None:
        """The whole response and whether to close after it; None: the stream session's job."""
        if not request.complete or request.error is not None:
            return None
        server = self.server
        if request.body_size > self.limits.max_body or (server.redirect_https and not self.secure):
            return None
        if request.version == "1.1" and "host" not in request.headers:
            return None  # the stream session answers 400
        close = not request.keep_alive or server.closing
        hsts = server.hsts_for(request.headers) if self.secure else ""
        response = server.response_cache.lookup(request, hsts, close)
        if response is not None:
            if access_log.isEnabledFor(logging.INFO):
                size = server.response_cache.body_size(request)
                log_access(server, self.ip, request, 200, size)
            return response, close
        return self._plan(request, close, hsts)

    def _plan(self, request: Request, close: bool, hsts: str) -> tuple[bytes, bool] | None:
        """Plan the answer as the stream session would; None when the body must be streamed."""
        server = self.server
        try:
            plan = server.files.plan(request.method, request.target, request.headers)
        except Exception:
            log.exception("[%s] planning %s failed", self.ip, request.target)
            plan = error_plan(500, "internal server error")
        head = request.method == "HEAD"
        body: bytes | None = None
        if plan.path is not None and plan.parts and not head:
            st = plan.stat
            if st is None or st.st_size > self.limits.cache_file_size:
                return None  # a large file: streamed by the session
            try:
                body = server.open_body(plan)
            except OSError:
                plan = error_plan(404, "no such file")
        close = close or plan.status in CLOSE_AFTER
        out = [server.response_head(plan, response_headers(plan, close, hsts))]
        sent = 0
        if not head:
            for part in plan.parts:
                if isinstance(part, FileRange):
                    assert body is not None
                    chunk = body[part.offset : part.offset + part.length]
                else:
                    chunk = part
                out.append(chunk)
                sent += len(chunk)
        if body is not None and plan.status == 200 and request.method == "GET":
            server.response_cache.add(request, plan, body)
        log_access(server, self.ip, request, plan.status, sent)
        return b"".join(out), close

    # ---- endings -----------------------------------------------------------------------------

    def _finish(self) -> None:
        """After a response with Connection: close: half-close, then drop what still arrives
        (closing with unread input would reset the connection and could destroy the response
        before the client reads it) until the client's EOF or LINGER_TIME."""
        assert self.transport is not None
        self._active = False
        self.server._fast.discard(self)
        if self._eof or not self.transport.can_write_eof():
            self._close()
            return
        self._lingering = 0
        self.transport.write_eof()
        self._sooner(self.loop.time() + LINGER_TIME)
        self.transport.resume_reading()

    def _close(self) -> None:
        """Close once the output is flushed; abort if the client leaves it unread for
        write_timeout."""
        self._active = False
        self._lingering = -1
        self._closing = True
        self.server._fast.discard(self)
        transport = self.transport
        # closed already (a TLS transport after the peer's EOF): a second close() of an SSL
        # transport drops its protocol, and asking its buffer size then raises
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():
                self._sooner(self.loop.time() + self.limits.write_timeout)

    def shutdown(self) -> None:
        """The server is closing: end this connection once its output is flushed."""
        if self._lingering < 0:
            self._close()

    def _sooner(self, deadline: float) -> None:
        """Set a deadline that may come before the armed timer (a later one, the common case
        after each request, is only stored: the timer re-arms itself when it fires early)."""
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        now = self.loop.time()
        if now < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        self._timer = None
        if self._closing and self.transport is not None:
            self.transport.abort()  # closed, but the client left our last output unread
        elif self._paused and self._active and self.transport is not None:
            self.transport.abort()  # the client stopped reading for write_timeout
        elif self._active or self._lingering >= 0:
            self._close()  # idle for keepalive_timeout, or lingered long enough

    def _hand_over(self) -> None:
        """Give the connection to a stream session (it answers what is queued, then goes on)."""
        assert self.transport is not None
        self._active = self._owned = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server._fast.discard(self)
        self.server._stream_session(self.transport, self.peer_ip, self.parser, self._eof)
