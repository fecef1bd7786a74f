"""The asyncio static web server: httptools parses, ``StaticFiles`` decides, this moves bytes.

One request parser per client, keep-alive, limits on the request head (size, target, header
count, time to arrive), a bounded request body, streamed file bodies, admission control and
TLS from the rest of opensocket, graceful close, and one access-log line per response in
common log format on the ``opensocket.http.access`` logger. Admission runs on the plain
accepted socket, before any TLS handshake: a refused HTTPS client is closed at no TLS cost.
A failed handshake still sends the client its TLS alert (or, to a plain HTTP request, a
clear-text 400); HSTS goes out over TLS, except to localhost and IP literals.

Each admitted connection starts on ``_fast.FastProtocol``, which answers whatever is ready at
once (small files from a whole-response cache, errors, listings) inside ``data_received``;
the first request that has to wait (a body still arriving, a large file, a split head) hands
the connection to a ``_Session`` task on stream reader and writer, which serves it from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import ssl
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from .. import tls as tlsmod
from .._sockets import bind_sockets
from ..address import Address, from_sockaddr, parse_address
from ..admission import Admission, Refusal
from ..aio._accept import Acceptor, Early, detach_socket, screen
from ..errors import AddressError, ConfigError, TLSError, TLSHandshakeError
from ..options import ServerLimits, SocketOptions, TLSOptions
from ..stats import ServerStats
from ._fast import (
    CLOSE_AFTER,
    LINGER_TIME,
    FastProtocol,
    ResponseCache,
    log_access,
    response_headers,
)
from ._parser import Request, RequestParser
from ._tls import TellingSSLObject, handshake_socket, local_host
from .access import LOG_FORMATS
from .files import (
    ALLOWED_METHODS,
    FileRange,
    Plan,
    StaticFiles,
    error_plan,
    https_redirect,
    method_not_allowed,
)

__all__ = ["HttpLimits", "HttpServer", "http_address", "serve_http"]

log = logging.getLogger("opensocket.http")
access_log = logging.getLogger("opensocket.http.access")
HSTS_MAX_AGE: Final = 31_536_000  # a year, as the issue asked for HTTPS servers
_SCHEMES: Final = {"http": "tcp", "https": "tls", "tcp": "tcp", "tls": "tls", "unix": "unix"}


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP client may ask of the server.

    ``head_timeout``: a request head must arrive whole this long after its first byte (408
    otherwise). ``keepalive_timeout``: an idle connection is closed after this long.
    ``sendfile``: send file bodies on plain connections with ``loop.sendfile`` instead of
    ``chunk_size`` writes (off: bench/web.py measured the writes faster here). Files up to
    ``cache_file_size`` are answered from memory on the fast path (``cache_entries`` files,
    and as many whole responses); larger ones are streamed.
    """

    max_head_size: int = 16 * 1024
    max_target: int = 8 * 1024
    max_headers: int = 100
    max_body: int = 64 * 1024
    head_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    write_timeout: float = 30.0
    chunk_size: int = 1024 * 1024
    cache_file_size: int = 64 * 1024
    cache_entries: int = 256
    sendfile: bool = False


def http_address(url: str | Address) -> Address:
    """Parse ``HOST:PORT``, ``http://``, ``https://``, ``tcp://``, ``tls://`` or ``unix://``."""
    if isinstance(url, Address):
        return url
    scheme, sep, rest = url.partition("://")
    if sep:
        mapped = _SCHEMES.get(scheme.lower())
        if mapped is None:
            raise AddressError(
                f"{url!r}: unknown scheme {scheme!r} for an HTTP server: use http://HOST:PORT, "
                "https://HOST:PORT (or tcp://, tls://, unix://)"
            )
        url = f"{mapped}://{rest}"
    return parse_address(url, default_scheme="tcp")


def _web_url(addr: Address) -> str:
    if addr.is_unix:
        return str(addr)
    return f"{'https' if addr.is_tls else 'http'}://{addr.hostport}/"


def bind_http(
    urls: Sequence[str | Address], options: SocketOptions | None = None
) -> tuple[list[list[socket.socket]], list[str]]:
    """Bind and listen on every address now (e.g. in a parent before it forks workers that
    pass them to ``serve_http(sockets=...)``): the sockets per address, and the URLs to open.
    """
    addrs = [http_address(url) for url in urls]
    bound: list[list[socket.socket]] = []
    try:
        for addr in addrs:
            bound.append(bind_sockets(addr, options or SocketOptions()))
    except BaseException:
        for socks in bound:
            for sock in socks:
                sock.close()
        raise
    urls_out = [
        _web_url(_bound_address(addr, sock))
        for addr, socks in zip(addrs, bound, strict=True)
        for sock in socks
    ]
    return bound, urls_out


def _bound_address(addr: Address, sock: socket.socket) -> Address:
    bound = from_sockaddr(addr.scheme, sock.getsockname())
    return bound if bound.is_unix else bound.with_scheme(addr.scheme)


def check_redirect(addrs: Sequence[Address], redirect_https: bool) -> None:
    """ConfigError when ``redirect_https`` has no https:// address to redirect to."""
    if redirect_https and not any(a.is_tls for a in addrs):
        raise ConfigError("redirecting to HTTPS needs an https:// address to redirect to")


class _Timeout(Exception):
    """The request head or body did not arrive in time."""


class _Session:
    """One client connection handed over by its FastProtocol (or refused with a 503): read a
    request, answer it (waiting for bodies and streaming large files), repeat while keep-alive
    holds."""

    def __init__(
        self,
        server: HttpServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ip: str,
        parser: RequestParser | None = None,
    ) -> None:
        self.server = server
        self.limits = limits = server.limits
        self.reader = reader
        self.writer = writer
        self.ip = ip
        self.parser = parser or RequestParser(
            limits.max_target, limits.max_head_size, limits.max_headers
        )
        self.idle = True
        self.got_bytes = False
        self.secure = writer.get_extra_info("sslcontext") is not None
        self._task: asyncio.Task[Any] | None = None  # set by HttpServer._client
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = math.inf
        self._expired = False

    def stop_timer(self) -> None:
        """Drop the read deadline timer (the session is over)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---- reading -----------------------------------------------------------------------------

    def _arm(self, deadline: float) -> None:
        """Bound the coming reads by ``deadline``: one timer per session, moved only when the
        deadline comes sooner (a timeout scope per request cost 6% of a small file)."""
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = asyncio.get_running_loop().call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._deadline == math.inf or self._task is None:
            return  # not reading now: the next read arms a new timer
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            self._expired = True
            self._task.cancel()
        else:
            self._timer = loop.call_at(self._deadline, self._check_deadline)

    async def _read(self) -> bytes:
        try:
            return await self.reader.read(65536)
        except asyncio.CancelledError:
            if self._expired and self._task is not None and self._task.uncancel() == 0:
                self._expired = False
                raise _Timeout from None
            raise

    async def _fill(self, deadline: float, until: Request | None) -> bool:
        """Read and parse until a request is queued (or ``until`` is complete); False at EOF."""
        parser = self.parser
        self._arm(deadline)
        try:
            while not parser.done:
                if until is None and parser.requests:
                    return True
                if until is not None and (until.complete or until.error is not None):
                    return True
                if until is not None and until.body_size > self.limits.max_body:
                    return True
                data = await self._read()
                if not data:
                    return False
                parser.feed(data)
                if not self.got_bytes:
                    self.got_bytes = True
                    self.idle = False
                    if until is None and not parser.requests:
                        now = asyncio.get_running_loop().time()
                        self._arm(min(deadline, now + self.limits.head_timeout))
            return True
        finally:
            self._deadline = math.inf

    async def _read_request(self) -> Request | None:
        """The next request, or None when the client is gone or went quiet."""
        parser = self.parser
        if not parser.requests and not parser.done:
            loop = asyncio.get_running_loop()
            self.got_bytes = parser.in_head
            self.idle = not self.got_bytes
            wait = self.limits.head_timeout if self.got_bytes else self.limits.keepalive_timeout
            if not await self._fill(loop.time() + wait, None):
                return None
        if parser.requests:
            return parser.requests.popleft()
        return None

    async def _drain_body(self, request: Request) -> bool:
        """Read and drop the request body; False when it is larger than allowed or broken."""
        if request.complete:
            return True
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body:
            return False
        deadline = asyncio.get_running_loop().time() + self.limits.head_timeout
        await self._fill(deadline, request)
        return request.complete and request.body_size <= self.limits.max_body

    # ---- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve requests until the connection ends."""
        parser = self.parser
        while True:
            if self.server.closing and not parser.requests and not parser.in_head:
                return  # shutting down: no new request is waiting, so stop here
            try:
                request = await self._read_request()
            except _Timeout:
                if self.got_bytes:
                    await self._respond(error_plan(408, "the request took too long"), None)
                return
            if request is None:
                if parser.error is not None:
                    await self._respond(error_plan(parser.error.status, parser.error.message), None)
                return
            self.idle = False
            if not await self._handle(request):
                return

    async def _handle(self, request: Request) -> bool:
        """Answer one request; False when the connection must close after it."""
        method = request.method
        headers = request.headers
        plan: Plan | None = None
        if request.error is not None:
            plan = error_plan(request.error.status, request.error.message)
        elif request.version == "1.1" and "host" not in headers:
            plan = error_plan(400, "an HTTP/1.1 request needs a Host header")
        try:
            complete = await self._drain_body(request)
        except _Timeout:
            plan, complete = plan or error_plan(408, "the request body took too long"), False
        if plan is None and request.error is not None:
            plan = error_plan(request.error.status, request.error.message)
        if plan is None and not complete:
            plan = (
                method_not_allowed(method, ())
                if method not in ALLOWED_METHODS
                else error_plan(413, f"request bodies are limited to {self.limits.max_body} bytes")
            )
        if plan is None and not self.secure and self.server.https_port is not None:
            plan = https_redirect(headers.get("host", ""), request.target, self.server.https_port)
        if plan is None:
            try:
                plan = self.server.files.plan(method, request.target, headers)
            except Exception:
                log.exception("[%s] planning %s failed", self.ip, request.target)
                plan = error_plan(500, "internal server error")
        keep = complete and request.keep_alive and request.error is None
        return await self._respond(plan, request, keep)

    # ---- writing -----------------------------------------------------------------------------

    async def _write(self, data: bytes | list[bytes] | None) -> None:
        if isinstance(data, bytes):
            self.writer.write(data)
        elif data:
            self.writer.writelines(data)
        transport = self.writer.transport
        # the kernel took everything (small responses): no drain, no timer to arm and cancel
        if transport.get_write_buffer_size() or transport.is_closing():
            async with asyncio.timeout(self.limits.write_timeout):
                await self.writer.drain()

    async def _respond(self, plan: Plan, request: Request | None, keep: bool = False) -> bool:
        """Send ``plan``; True when the connection can serve another request."""
        head_only = request is not None and request.method == "HEAD"
        close = not keep or plan.status in CLOSE_AFTER or self.server.closing
        source = None
        if plan.path is not None and plan.parts and not head_only:
            try:
                source = self.server.open_body(plan)
            except OSError:
                plan = error_plan(404, "no such file")
        sent = 0
        try:
            hsts = self.server.hsts_for(request.headers) if self.secure and request else ""
            out = [self.server.response_head(plan, response_headers(plan, close, hsts))]
            if not head_only:  # head and small body go out in one write
                sent = await self._send_body(plan, source, out)
            await self._write(out)
        finally:
            if source is not None and not isinstance(source, bytes):
                source.close()
            log_access(self.server, self.ip, request, plan.status, sent)
        return not close

    async def _send_body(self, plan: Plan, source: Any, out: list[bytes]) -> int:
        """Queue bytes parts on ``out``; stream file ranges (flushing ``out`` first)."""
        sent = 0
        for part in plan.parts:
            if isinstance(part, bytes):
                out.append(part)
                sent += len(part)
                continue
            if isinstance(source, bytes):
                out.append(source[part.offset : part.offset + part.length])
            else:
                await self._write(out)
                out.clear()
                await self._send_range(source, part)
            sent += part.length
        return sent

    async def _send_range(self, handle: Any, part: FileRange) -> None:
        if self.limits.sendfile and not self.secure:
            await self._sendfile(handle, part)
            return
        handle.seek(part.offset)
        left = part.length
        while left > 0:
            chunk = handle.read(min(self.limits.chunk_size, left))
            if not chunk:  # the file shrank under us: the promised length cannot be kept
                raise ConnectionResetError("the file changed while it was being sent")
            left -= len(chunk)
            await self._write(chunk)

    async def _sendfile(self, handle: Any, part: FileRange) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.limits.write_timeout + part.length / 1e6):
            sent = await loop.sendfile(self.writer.transport, handle, part.offset, part.length)
        if sent != part.length:
            raise ConnectionResetError("the file changed while it was being sent")


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then drop what the client still sends, briefly: closing with unread input
    would reset the connection and could destroy our last response before the client reads it."""
    if writer.is_closing() or not writer.can_write_eof():
        return
    with contextlib.suppress(OSError, TimeoutError, RuntimeError):
        writer.write_eof()
        async with asyncio.timeout(LINGER_TIME):
            for _ in range(64):  # at most 4 MiB
                if not await reader.read(65536):
                    return


def _multipart(headers: tuple[tuple[str, str], ...]) -> bool:
    return any(name == "Content-Type" and value.startswith("multipart/") for name, value in headers)


def _header_value(value: str) -> str:
    """A header value with no line breaks: a file name must not split the response head."""
    if "\r" in value or "\n" in value:
        return value.replace("\r", " ").replace("\n", " ")
    return value


class HttpServer:
    """A running static web server. ``urls`` are the addresses to open in a browser."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        limits: HttpLimits,
        server_limits: ServerLimits,
        options: SocketOptions,
        tls: TLSOptions | ssl.SSLContext | None,
        show_hidden: bool,
        log_format: str = "common",
        redirect_https: bool = False,
        hsts_max_age: int | None = HSTS_MAX_AGE,
    ) -> None:
        if log_format not in LOG_FORMATS:
            raise ConfigError(
                f"unknown access log format {log_format!r}: use {', '.join(LOG_FORMATS)}"
            )
        self.files = StaticFiles(root, show_hidden=show_hidden)
        self.log_format = log_format
        self.redirect_https = redirect_https
        if hsts_max_age is not None and hsts_max_age < 0:
            raise ConfigError(f"hsts_max_age must be 0 (no HSTS) or seconds, not {hsts_max_age}")
        self.hsts = f"max-age={hsts_max_age}" if hsts_max_age else ""
        self._hsts_hosts: dict[str, bool] = {}
        self.limits = limits
        self.server_limits = server_limits
        self.options = options
        self._tls_options = tls
        self.addresses: list[Address] = []
        self.closing = False
        self._admission = Admission(server_limits)
        self._servers: list[asyncio.Server] = []
        self._sessions: dict[asyncio.Task[Any], _Session] = {}
        self._fast: set[FastProtocol] = set()
        self.response_cache = ResponseCache(self, limits.cache_entries)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handshakes: set[asyncio.Task[Any]] = set()
        self._stats = ServerStats()
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._responses: dict[tuple[int, tuple[tuple[str, str], ...]], bytes] = {}
        self._closed = asyncio.get_running_loop().create_future()

    async def _start(self, addr: Address, socks: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        ctx = None
        if addr.is_tls:
            ctx = tlsmod.server_context(self._tls_options)
            if ctx.sslobject_class is ssl.SSLObject:  # (a caller's own class stays)
                ctx.sslobject_class = TellingSSLObject
        accepted = partial(self._accepted, ctx)
        for sock in bind_sockets(addr, self.options) if socks is None else socks:
            srv = await loop.create_server(
                lambda: Acceptor(accepted), sock=sock, backlog=self.options.backlog
            )
            self._servers.append(srv)
            self.addresses.append(_bound_address(addr, sock))
        log.info("serving %s on %s", self.files.root, ", ".join(self.urls))

    @property
    def https_port(self) -> int | None:
        """Where plain requests are redirected (redirect_https), or None: no redirect."""
        if not self.redirect_https:
            return None
        return next((a.port for a in self.addresses if a.is_tls), None)

    @property
    def urls(self) -> list[str]:
        """Every bound address as a URL: ``http://127.0.0.1:8000/``."""
        return [_web_url(a) for a in self.addresses]

    @property
    def url(self) -> str:
        """The first bound address as a URL."""
        return self.urls[0]

    def hsts_for(self, headers: dict[str, str]) -> str:
        """The Strict-Transport-Security value for a request over TLS ("" for none): none for
        ``localhost``, ``*.localhost`` and IP literals, which it would pin to HTTPS for every
        local development server (RFC 6797 8.1: browsers ignore it for IP literals anyway)."""
        if not self.hsts:
            return ""
        host = headers.get("host", "")
        applies = self._hsts_hosts.get(host)  # one dict lookup per request on the hot path
        if applies is None:
            if len(self._hsts_hosts) >= 256:
                self._hsts_hosts.clear()  # Host is the client's to choose: bounded
            applies = self._hsts_hosts[host] = not local_host(host)
        return self.hsts if applies else ""

    def response_head(self, plan: Plan, headers: tuple[tuple[str, str], ...]) -> bytes:
        """The status line and headers as bytes, reused while the same file is served within
        one second (the Date header changes every second)."""
        key = (plan.status, headers)
        head = self._responses.get(key)
        if head is None:
            lines = [f"HTTP/1.1 {plan.status} {plan.reason}"]
            lines += [f"{name}: {_header_value(value)}" for name, value in headers]
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
            if plan.status == 206 and _multipart(headers):
                return head  # a new boundary each time: caching it would only evict the rest
            if len(self._responses) >= self.limits.cache_entries:
                self._responses.clear()
            self._responses[key] = head
        return head

    def open_body(self, plan: Plan) -> Any:
        """The bytes of a small file (cached), or an open file to stream from."""
        st = plan.stat
        assert plan.path is not None
        if st is None or st.st_size > self.limits.cache_file_size:
            return open(plan.path, "rb")
        key = (plan.path, st.st_mtime_ns, st.st_size)
        data = self._cache.get(key)
        if data is None:
            with open(plan.path, "rb") as handle:
                data = handle.read(st.st_size + 1)
            if len(data) != st.st_size:  # changed since the stat: do not cache, do not lie
                raise OSError("the file changed")
            self._cache[key] = data
            if len(self._cache) > self.limits.cache_entries:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return data

    # ---- accepting ---------------------------------------------------------------------------

    def _accepted(self, ctx: ssl.SSLContext | None, transport: asyncio.Transport) -> None:
        """Admit on the plain socket: a refused HTTPS client is closed before any TLS work, a
        refused plain one gets a 503; an admitted HTTPS client starts its handshake."""
        loop = asyncio.get_running_loop()
        peer, ip, refusal = screen(transport, self._admission, self._stats, closing=self.closing)
        if refusal is not None and ctx is not None:
            transport.abort()  # no TLS, so no way to say why: just close
            return
        if ctx is None:
            self._attach(transport, ip, refusal)
        else:
            task = loop.create_task(self._start_tls(detach_socket(transport), ctx, peer, ip))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)
            self._track(task)

    async def _start_tls(
        self, sock: socket.socket, ctx: ssl.SSLContext, peer: str, ip: str | None
    ) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.server_limits.handshake_timeout
        handshake_socket.set(sock)  # this task's context only: see TellingSSLObject
        try:
            transport, _ = await loop.connect_accepted_socket(
                Early, sock, ssl=ctx, ssl_handshake_timeout=timeout
            )
        except (OSError, EOFError, TimeoutError, ssl.SSLError) as exc:
            error: TLSError = tlsmod.tls_error(exc, peer, server_side=True)
            if isinstance(exc, TimeoutError) or "taking longer" in str(exc):
                error = TLSHandshakeError(
                    f"the client {peer} did not complete the TLS handshake in {timeout:g}s"
                )
            self._stats.handshakes_failed += 1
            self._stats.dropped["handshake failed"] += 1
            log.warning("[%s] handshake failed: %s", peer, error)
            self._handshake_over(sock, ip)
            return
        except BaseException:  # cancelled by close()
            self._handshake_over(sock, ip)
            raise
        self._attach(transport, ip, None)

    def _handshake_over(self, sock: socket.socket, ip: str | None) -> None:
        sock.close()
        self._admission.release(ip)

    def _attach(
        self, transport: asyncio.Transport, ip: str | None, refusal: Refusal | None
    ) -> None:
        """Serve ``transport`` with a FastProtocol; a refused client gets a stream session
        that answers 503."""
        if refusal is not None:
            self._stream_session(transport, ip, None, False, refusal)
            return
        limits = self.limits
        parser = RequestParser(limits.max_target, limits.max_head_size, limits.max_headers)
        proto = FastProtocol(self, ip, parser)
        early = transport.get_protocol()
        transport.set_protocol(proto)
        self._fast.add(proto)
        proto.connection_made(transport)
        if isinstance(early, Early):
            early.replay(proto)

    def _stream_session(
        self,
        transport: asyncio.Transport,
        ip: str | None,
        parser: RequestParser | None,
        eof: bool,
        refusal: Refusal | None = None,
    ) -> None:
        """Put a stream reader and writer on ``transport`` and start a session task on it."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self.limits.max_head_size, loop=loop)
        proto = asyncio.StreamReaderProtocol(reader, loop=loop)
        early = transport.get_protocol()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if isinstance(early, Early):
            early.replay(proto)
        if eof:
            reader.feed_eof()
        writer = asyncio.StreamWriter(transport, proto, reader, loop)
        session = _Session(self, reader, writer, ip or "unix", parser)
        self._track(loop.create_task(self._client(session, ip, refusal)))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _client(self, session: _Session, ip: str | None, refusal: Refusal | None) -> None:
        reader, writer = session.reader, session.writer
        task = asyncio.current_task()
        assert task is not None
        session._task = task
        try:
            if refusal is not None:
                await session._respond(error_plan(503, "the server is busy or closing"), None)
                return
            self._sessions[task] = session
            await session.run()
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            log.debug("[%s] connection ended: %r", session.ip, exc)
        except Exception:
            log.exception("[%s] session failed", session.ip)
        finally:
            session.stop_timer()
            self._sessions.pop(task, None)
            if refusal is None:
                self._admission.release(ip)
            if not task.cancelling():
                await _linger(reader, writer)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    @property
    def stats(self) -> ServerStats:
        """Counters: accepted, active, failed TLS handshakes, refusals by reason."""
        return ServerStats(
            accepted=self._stats.accepted,
            active=len(self._sessions) + len(self._fast),
            handshakes_failed=self._stats.handshakes_failed,
            dropped=self._stats.dropped.copy(),
        )

    async def serve_forever(self) -> None:
        """Run until ``close()`` is called or the task is cancelled."""
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            await self.close()
            raise

    @property
    def in_flight(self) -> int:
        """Responses being sent now: what ``close()`` lets finish."""
        return sum(not session.idle for session in self._sessions.values())

    def hurry(self) -> None:
        """During ``close()``: stop waiting for the responses in flight, drop them now."""
        if self.closing:
            for task in list(self._sessions):
                task.cancel()

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting, close idle connections, let responses in flight finish (up to
        ``timeout``, default the limits' shutdown_grace), then drop what is left."""
        if self.closing:
            await asyncio.shield(self._closed)
            return
        self.closing = True
        grace = self.server_limits.shutdown_grace if timeout is None else timeout
        for srv in self._servers:
            srv.close()
        for task in list(self._handshakes):
            task.cancel()  # no request yet, so nothing to finish
        for task, session in list(self._sessions.items()):
            if session.idle:
                task.cancel()
        for proto in list(self._fast):
            proto.shutdown()  # between requests by construction: close once flushed
        busy = set(self._sessions)
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for task in list(self._sessions):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
        for srv in self._servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await srv.wait_closed()
        if not self._closed.done():
            self._closed.set_result(None)
        log.info("web server on %s closed", ", ".join(self.urls))

    async def __aenter__(self) -> HttpServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_http(
    urls: str | Address | Sequence[str | Address],
    root: str | os.PathLike[str] = ".",
    *,
    tls: TLSOptions | ssl.SSLContext | None = None,
    limits: HttpLimits | None = None,
    server_limits: ServerLimits | None = None,
    options: SocketOptions | None = None,
    show_hidden: bool = False,
    log_format: str = "common",
    redirect_https: bool = False,
    sockets: Sequence[list[socket.socket]] | None = None,
    hsts_max_age: int | None = HSTS_MAX_AGE,
) -> HttpServer:
    """Serve the files under ``root`` on ``urls`` (``http://``, ``https://``, ``HOST:PORT``).

    With ``redirect_https``, requests on the plain addresses get a 308 to the first https:// one.
    ``sockets``: listening sockets bound already (``bind_http``), one list per URL, in order,
    e.g. inherited by a worker process. ``hsts_max_age``: the Strict-Transport-Security
    max-age sent over TLS (never to localhost or an IP literal); 0 or None sends none.
    An ``ssl.SSLContext`` given as ``tls`` gets this server's ``sslobject_class`` (which
    sends the TLS alert of a failed handshake) unless it has one of its own already.
    """
    if not os.path.isdir(root):
        raise ConfigError(f"{os.fspath(root)!r} is not a folder: give the folder to serve")
    many = [urls] if isinstance(urls, str | Address) else list(urls)
    server = HttpServer(
        root,
        limits=limits or HttpLimits(),
        server_limits=server_limits or ServerLimits(),
        options=options or SocketOptions(),
        tls=tls,
        show_hidden=show_hidden,
        log_format=log_format,
        redirect_https=redirect_https,
        hsts_max_age=hsts_max_age,
    )
    try:
        addrs = [http_address(url) for url in many]
        check_redirect(addrs, redirect_https)
        if sockets is not None and len(sockets) != len(addrs):
            raise ConfigError("give one list of bound sockets per address")
        for index, addr in enumerate(addrs):
            await server._start(addr, None if sockets is None else sockets[index])
    except BaseException:
        await server.close(0)
        raise
    return server
