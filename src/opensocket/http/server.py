"""The asyncio static web server: h11 parses, ``StaticFiles`` decides, this module moves bytes.

One h11.Connection per client, keep-alive, limits on the request head (size, target, header
count, time to arrive), a bounded request body, streamed file bodies, admission control and
TLS from the rest of opensocket, graceful close, and one access-log line per response in
common log format on the ``opensocket.http.access`` logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import h11

from .. import tls as tlsmod
from .._sockets import bind_sockets
from ..address import Address, format_sockaddr, from_sockaddr, parse_address
from ..admission import Admission
from ..errors import AddressError, ConfigError
from ..options import ServerLimits, SocketOptions, TLSOptions
from .access import LOG_FORMATS, AccessRecord, format_access
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
HSTS: Final = "max-age=31536000"
_SCHEMES: Final = {"http": "tcp", "https": "tls", "tcp": "tcp", "tls": "tls", "unix": "unix"}
_LINGER_TIME: Final = 1.0
_CLOSE_AFTER: Final = frozenset({400, 408, 413, 414, 431, 500, 503})


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP client may ask of the server.

    ``head_timeout``: a request head must arrive whole this long after its first byte (408
    otherwise). ``keepalive_timeout``: an idle connection is closed after this long.
    ``sendfile``: send file bodies on plain connections with ``loop.sendfile`` instead of
    ``chunk_size`` writes (off: bench/http.py measured the writes faster here).
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


class _Sent:
    """Bytes that sendfile already put on the wire: h11 needs only their count."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


class _Timeout(Exception):
    """The request head or body did not arrive in time."""


class _Session:
    """One client connection: read a request, answer it, repeat while keep-alive holds."""

    def __init__(
        self,
        server: HttpServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ip: str,
    ) -> None:
        self.server = server
        self.limits = server.limits
        self.reader = reader
        self.writer = writer
        self.ip = ip
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_size)
        self.idle = True
        self.got_bytes = False
        self.secure = writer.get_extra_info("sslcontext") is not None

    # ---- reading -----------------------------------------------------------------------------

    async def _next_event(self, deadline: float) -> Any:
        event = self.conn.next_event()
        if event is not h11.NEED_DATA:  # already buffered: no timer needed (the common GET)
            return event
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline) as scope:
                while True:
                    data = await self.reader.read(65536)
                    self.conn.receive_data(data)
                    event = self.conn.next_event()
                    if data and not self.got_bytes:
                        self.got_bytes = True
                        self.idle = False
                        if event is h11.NEED_DATA:
                            scope.reschedule(min(deadline, loop.time() + self.limits.head_timeout))
                    if event is not h11.NEED_DATA:
                        return event
        except TimeoutError:
            raise _Timeout from None

    async def _read_request(self) -> h11.Request | None:
        """The next request, or None when the client is gone or went quiet."""
        loop = asyncio.get_running_loop()
        self.got_bytes = bool(self.conn.trailing_data[0])
        self.idle = not self.got_bytes
        start = loop.time()
        first = start + (
            self.limits.head_timeout if self.got_bytes else self.limits.keepalive_timeout
        )
        event = await self._next_event(first)
        if isinstance(event, h11.Request):
            return event
        return None

    async def _drain_body(self, request: h11.Request, headers: dict[str, str]) -> bool:
        """Read and drop the request body; False when it is larger than allowed."""
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body:
            return False
        deadline = asyncio.get_running_loop().time() + self.limits.head_timeout
        size = 0
        while True:
            event = await self._next_event(deadline)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.limits.max_body:
                    return False
            else:
                return isinstance(event, h11.EndOfMessage)

    # ---- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve requests until the connection ends."""
        while True:
            if self.server.closing and not self.conn.trailing_data[0]:
                return  # shutting down: no new request is waiting, so stop here
            try:
                request = await self._read_request()
            except _Timeout:
                if self.got_bytes:
                    await self._respond(error_plan(408, "the request took too long"), None)
                return
            except h11.RemoteProtocolError as exc:
                await self._respond(self._protocol_error(exc), None)
                return
            if request is None:
                return
            self.idle = False
            await self._handle(request)
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> Plan:
        status = exc.error_status_hint
        if status == 431:
            line = self.conn.trailing_data[0].split(b"\n", 1)[0]
            if len(line) > self.limits.max_target:
                return error_plan(414, "the request line is too long")
            return error_plan(431, "the request head is too large")
        return error_plan(status if status in (400, 414, 431) else 400, "malformed request")

    async def _handle(self, request: h11.Request) -> None:
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        method = request.method.decode("ascii", "replace")
        plan: Plan | None = None
        if len(request.target) > self.limits.max_target:
            plan = error_plan(414, "the request target is too long")
        elif len(request.headers) > self.limits.max_headers:
            plan = error_plan(431, f"more than {self.limits.max_headers} header fields")
        elif _head_size(request) > self.limits.max_head_size:
            # h11 bounds only heads that arrive in pieces; one that arrives whole is measured here
            plan = error_plan(431, "the request head is too large")
        try:
            complete = await self._drain_body(request, headers)
        except _Timeout:
            plan, complete = error_plan(408, "the request body took too long"), True
        except h11.RemoteProtocolError:
            plan, complete = error_plan(400, "malformed request body"), True
        if plan is None and not complete:
            plan = (
                method_not_allowed(method, ())
                if method not in ALLOWED_METHODS
                else error_plan(413, f"request bodies are limited to {self.limits.max_body} bytes")
            )
        if plan is None and not self.secure and self.server.https_port is not None:
            host = headers.get("host", "")
            plan = https_redirect(host, request.target.decode("latin-1"), self.server.https_port)
        if plan is None:
            try:
                plan = self.server.files.plan(method, request.target.decode("latin-1"), headers)
            except Exception:
                log.exception("[%s] planning %s failed", self.ip, request.target)
                plan = error_plan(500, "internal server error")
        await self._respond(plan, request)

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

    def _headers(self, plan: Plan, close: bool) -> tuple[tuple[str, str], ...]:
        headers = (("Date", _http_now()), ("Server", "opensocket"), *plan.headers)
        if self.secure:
            headers += (("Strict-Transport-Security", HSTS),)
        if close:
            headers += (("Connection", "close"),)
        return headers

    async def _respond(self, plan: Plan, request: h11.Request | None) -> None:
        head_only = request is not None and request.method == b"HEAD"
        close = (
            plan.status in _CLOSE_AFTER
            or self.server.closing
            or self.conn.their_state is not h11.DONE  # an unread body, or a broken request
        )
        source = None
        if plan.path is not None and plan.parts and not head_only:
            try:
                source = self.server.open_body(plan)
            except OSError:
                plan = error_plan(404, "no such file")
        response = self.server.response(plan, self._headers(plan, close))
        sent = 0
        try:
            out = [self.conn.send(response)]  # head, small body and end go out in one write
            if not head_only:
                sent = await self._send_body(plan, source, out)
            out.append(self.conn.send(h11.EndOfMessage()))
            await self._write(out)
        finally:
            if source is not None and not isinstance(source, bytes):
                source.close()
            self._log(request, plan.status, sent)

    async def _send_body(self, plan: Plan, source: Any, out: list[bytes]) -> int:
        """Queue bytes parts on ``out``; stream file ranges (flushing ``out`` first)."""
        sent = 0
        for part in plan.parts:
            if isinstance(part, bytes):
                out += self.conn.send_with_data_passthrough(h11.Data(data=part)) or ()
            elif isinstance(source, bytes):
                piece = source[part.offset : part.offset + part.length]
                out += self.conn.send_with_data_passthrough(h11.Data(data=piece)) or ()
            else:
                await self._write(out)
                out.clear()
                await self._send_range(source, part)
            sent += len(part) if isinstance(part, bytes) else part.length
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
            await self._write(self.conn.send_with_data_passthrough(h11.Data(data=chunk)))

    async def _sendfile(self, handle: Any, part: FileRange) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.limits.write_timeout + part.length / 1e6):
            sent = await loop.sendfile(self.writer.transport, handle, part.offset, part.length)
        if sent != part.length:
            raise ConnectionResetError("the file changed while it was being sent")
        # h11 counts Content-Length: tell it the bytes went out without sending them again
        self.conn.send_with_data_passthrough(h11.Data(data=cast(bytes, _Sent(part.length))))

    def _log(self, request: h11.Request | None, status: int, size: int) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        record = AccessRecord(self.ip, "", "", "", status, size)
        if request is not None:
            headers = dict(request.headers)
            record = AccessRecord(
                self.ip,
                request.method.decode("latin-1"),
                request.target.decode("latin-1"),
                request.http_version.decode("latin-1"),
                status,
                size,
                headers.get(b"referer", b"").decode("latin-1"),
                headers.get(b"user-agent", b"").decode("latin-1"),
            )
        access_log.info("%s", format_access(record, self.server.log_format, time.time()))


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then drop what the client still sends, briefly: closing with unread input
    would reset the connection and could destroy our last response before the client reads it."""
    if writer.is_closing() or not writer.can_write_eof():
        return
    with contextlib.suppress(OSError, TimeoutError, RuntimeError):
        writer.write_eof()
        async with asyncio.timeout(_LINGER_TIME):
            for _ in range(64):  # at most 4 MiB
                if not await reader.read(65536):
                    return


def _head_size(request: h11.Request) -> int:
    return len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)


_date_cache: list[Any] = [0, ""]


def _http_now() -> str:
    """The Date header value, formatted once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))]
    return str(_date_cache[1])


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
    ) -> None:
        if log_format not in LOG_FORMATS:
            raise ConfigError(
                f"unknown access log format {log_format!r}: use {', '.join(LOG_FORMATS)}"
            )
        self.files = StaticFiles(root, show_hidden=show_hidden)
        self.log_format = log_format
        self.redirect_https = redirect_https
        self.limits = limits
        self.server_limits = server_limits
        self.options = options
        self._tls_options = tls
        self.addresses: list[Address] = []
        self.closing = False
        self._admission = Admission(server_limits)
        self._servers: list[asyncio.Server] = []
        self._sessions: dict[asyncio.Task[Any], _Session] = {}
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._responses: dict[tuple[int, tuple[tuple[str, str], ...]], h11.Response] = {}
        self._closed = asyncio.get_running_loop().create_future()

    async def _start(self, addr: Address) -> None:
        ctx = None
        if addr.is_tls:
            ctx = tlsmod.server_context(self._tls_options)
        for sock in bind_sockets(addr, self.options):
            srv = await asyncio.start_server(
                self._client,
                sock=sock,
                ssl=ctx,
                ssl_handshake_timeout=self.server_limits.handshake_timeout if ctx else None,
                limit=self.limits.max_head_size,
            )
            self._servers.append(srv)
            bound = from_sockaddr(addr.scheme, sock.getsockname())
            self.addresses.append(bound if bound.is_unix else bound.with_scheme(addr.scheme))
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

    def response(self, plan: Plan, headers: tuple[tuple[str, str], ...]) -> h11.Response:
        """The h11 response event, reused while the same file is served within one second:
        h11 validates every header of a new event, a quarter of the cost of a small file."""
        key = (plan.status, headers)
        response = self._responses.get(key)
        if response is None:
            response = h11.Response(
                status_code=plan.status, headers=list(headers), reason=plan.reason.encode()
            )
            if len(self._responses) >= self.limits.cache_entries:
                self._responses.clear()
            self._responses[key] = response
        return response

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

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else "unix"
        loop = asyncio.get_running_loop()
        refusal = self._admission.admit(ip if isinstance(peer, tuple) else None, loop.time())
        session = _Session(self, reader, writer, ip)
        task = asyncio.current_task()
        assert task is not None
        try:
            if refusal is not None or self.closing:
                log.warning("[%s] refused: %s", format_sockaddr(peer), refusal and refusal.reason)
                await session._respond(error_plan(503, "the server is busy or closing"), None)
                return
            self._sessions[task] = session
            await session.run()
        except (ConnectionError, TimeoutError, ssl.SSLError, h11.LocalProtocolError) as exc:
            log.debug("[%s] connection ended: %r", ip, exc)
        except Exception:
            log.exception("[%s] session failed", ip)
        finally:
            self._sessions.pop(task, None)
            if refusal is None:
                self._admission.release(ip if isinstance(peer, tuple) else None)
            if not task.cancelling():
                await _linger(reader, writer)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def serve_forever(self) -> None:
        """Run until ``close()`` is called or the task is cancelled."""
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            await self.close()
            raise

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
        for task, session in list(self._sessions.items()):
            if session.idle:
                task.cancel()
        busy = set(self._sessions)
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=1.0)
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
) -> HttpServer:
    """Serve the files under ``root`` on ``urls`` (``http://``, ``https://``, ``HOST:PORT``).

    With ``redirect_https``, requests on the plain addresses get a 308 to the first https:// one.
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
    )
    try:
        addrs = [http_address(url) for url in many]
        if redirect_https and not any(a.is_tls for a in addrs):
            raise ConfigError("redirecting to HTTPS needs an https:// address to redirect to")
        for addr in addrs:
            await server._start(addr)
    except BaseException:
        await server.close(0)
        raise
    return server
