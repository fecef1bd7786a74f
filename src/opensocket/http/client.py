"""An HTTP/1.1 client over opensocket's own sockets: h11 parses, this module moves bytes.

``fetch`` returns a whole (bounded) response; ``open_response`` streams the body in chunks, for
downloads. Both follow redirects (bounded), verify TLS by default and bound everything: the
response head size, the time to connect and to wait for the server, the 1xx responses skipped.
One connection per request: the client is for fetching a resource, not a connection pool.

Errors (all ``OpenSocketError``)::

    HttpError                    an HTTP exchange failed (a status code is not an error)
    ├── MalformedResponse        the server broke HTTP/1.1 or closed mid-response
    ├── TooManyRedirects         more redirects than ``max_redirects``
    ├── RedirectRefused          a redirect to an unsupported scheme, or https -> http
    └── BodyTooLarge             ``fetch`` got a body larger than ``max_body``
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, unquote, urljoin, urlsplit

import h11

from .. import __version__
from ..address import Address
from ..aio import connect
from ..aio.stream import Stream
from ..errors import (
    AddressError,
    BodyTooLarge,
    ConfigError,
    HttpError,
    MalformedResponse,
    ReadTimeout,
    RedirectRefused,
    TooManyRedirects,
)
from ..options import SocketOptions, TLSOptions

__all__ = [
    "BodyTooLarge",
    "HttpError",
    "MalformedResponse",
    "RedirectRefused",
    "Response",
    "ResponseStream",
    "TooManyRedirects",
    "Url",
    "fetch",
    "open_response",
    "parse_url",
]

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
MAX_HEAD_SIZE: Final = 64 * 1024
MAX_BODY: Final = 64 * 1024 * 1024
CHUNK_SIZE: Final = 256 * 1024
_MAX_INFORMATIONAL: Final = 16
# Percent-encode what may not appear raw in a request target; keep escapes and delimiters.
_SAFE: Final = "/%:@!$&'()*+,;=-._~?"
_ORIGIN_ONLY: Final = frozenset({"authorization", "cookie", "proxy-authorization"})
_BODY_HEADERS: Final = frozenset({"content-length", "content-type", "transfer-encoding"})

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Url:
    """An http:// or https:// URL, split into what a request needs."""

    scheme: str
    host: str
    port: int
    target: str
    userinfo: str = ""

    @property
    def address(self) -> Address:
        """The opensocket address to connect to (tcp:// or tls://, host used for SNI)."""
        return Address("tls" if self.scheme == "https" else "tcp", self.host, self.port)

    @property
    def authority(self) -> str:
        """``host[:port]`` for the Host header, the port left out when it is the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"

    @property
    def origin(self) -> tuple[str, str, int]:
        """Scheme, host and port: credentials are only sent back to the same origin."""
        return self.scheme, self.host, self.port

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"


def parse_url(url: str) -> Url:
    """Parse an http:// or https:// URL; raise AddressError saying what is wrong."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise AddressError(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise AddressError(
            f"invalid URL {url!r}: the scheme must be http:// or https:// "
            "(for example http://127.0.0.1:8000/)"
        )
    host = parts.hostname or ""
    if not host:
        raise AddressError(f"invalid URL {url!r}: the host is missing")
    if any(c in host for c in " /\\\0"):
        raise AddressError(f"invalid URL {url!r}: {host!r} is not a valid host name")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise AddressError(f"invalid URL {url!r}: {host!r} is not a valid host name") from None
    target = quote(parts.path or "/", safe=_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_SAFE)
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    return Url(scheme, host, port or DEFAULT_PORTS[scheme], target, userinfo)


@dataclass(slots=True)
class _Request:
    """What to send next; redirects change it."""

    method: str
    url: Url
    headers: list[tuple[str, str]]
    content: bytes | None


@dataclass(frozen=True, slots=True)
class Response:
    """A whole response: ``status``, ``reason``, ``headers`` (names lower case), ``body``.

    ``url`` is the final URL after redirects; ``redirects`` the URLs that redirected to it.
    """

    status: int
    reason: str
    headers: Headers
    url: str
    body: bytes
    http_version: str = "1.1"
    redirects: tuple[str, ...] = ()

    def header(self, name: str, default: str | None = None) -> str | None:
        """The value of header ``name`` (any case); repeated headers joined with ``, ``."""
        return header_value(self.headers, name, default)

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300


def header_value(headers: Headers, name: str, default: str | None = None) -> str | None:
    """The value of ``name`` in ``headers``; repeated headers joined with ``, ``."""
    name = name.lower()
    values = [v for k, v in headers if k == name]
    return ", ".join(values) if values else default


@dataclass(slots=True)
class ResponseStream:
    """A response whose body is still on the wire: iterate ``chunks()`` to read it."""

    status: int
    reason: str
    headers: Headers
    url: str
    http_version: str
    redirects: tuple[str, ...]
    bytes_read: int = 0
    raw_headers: Headers = ()  # names as the server sent them (``headers`` has them lower case)
    _exchange: _Exchange | None = field(default=None, repr=False)

    def header(self, name: str, default: str | None = None) -> str | None:
        """The value of header ``name`` (any case); repeated headers joined with ``, ``."""
        return header_value(self.headers, name, default)

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    @property
    def content_length(self) -> int | None:
        """The announced body size, or None (chunked, HEAD, or not given)."""
        value = self.header("content-length")
        return int(value) if value is not None and value.isdigit() else None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in chunks as they arrive, until the response is complete."""
        assert self._exchange is not None
        async for chunk in self._exchange.body():
            self.bytes_read += len(chunk)
            yield chunk


class _Exchange:
    """One request and its response over one connection."""

    def __init__(self, stream: Stream, url: Url, timeout: float, max_head_size: int) -> None:
        self.stream = stream
        self.peer = url.address.hostport
        self.https = url.scheme == "https"
        self.timeout = timeout
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head_size)
        self.max_head_size = max_head_size
        self.eof = False
        self.got_head = False

    async def send(self, request: _Request) -> None:
        conn = self.conn
        try:
            data = conn.send(
                h11.Request(
                    method=request.method, target=request.url.target, headers=request.headers
                )
            )
        except h11.LocalProtocolError as exc:
            raise ConfigError(
                f"cannot send this request: {exc} (check the method and headers)"
            ) from exc
        if request.content:
            data += conn.send(h11.Data(data=request.content))
        data += conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def _event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._malformed(exc) from exc
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.recv(CHUNK_SIZE, self.timeout)
            self.eof = not data
            self.conn.receive_data(data)

    def _malformed(self, exc: h11.RemoteProtocolError) -> MalformedResponse:
        if "buffer too long" in str(exc):
            return self._too_large()
        if self.eof and not self.got_head and self.https:
            # TLS 1.3 finishes the client's handshake before the server checks its certificate
            return MalformedResponse(
                f"{self.peer}: the server closed the TLS connection without answering: if it "
                "requires a client certificate, pass --tls-cert and --tls-key"
            )
        if self.eof and not self.got_head:
            return MalformedResponse(
                f"{self.peer} closed the connection without a response (an https:// server "
                "reached with an http:// URL does that)"
            )
        if self.eof:
            return MalformedResponse(
                f"{self.peer} closed the connection before the response was complete ({exc})"
            )
        return MalformedResponse(f"malformed response from {self.peer}: {exc}")

    def _too_large(self) -> MalformedResponse:
        return MalformedResponse(
            f"the response head from {self.peer} is larger than {self.max_head_size} bytes"
        )

    async def head(self) -> h11.Response:
        """The final response head, within ``timeout`` as a whole (1xx responses skipped)."""
        try:
            async with asyncio.timeout(self.timeout):
                for _ in range(_MAX_INFORMATIONAL):
                    event = await self._event()
                    if isinstance(event, h11.Response):
                        # h11 bounds a head that arrives in pieces; one read can hold more
                        if sum(len(k) + len(v) + 4 for k, v in event.headers) > self.max_head_size:
                            raise self._too_large()
                        self.got_head = True
                        return event
                    if not isinstance(event, h11.InformationalResponse):
                        raise MalformedResponse(f"unexpected {event!r} from {self.peer}")
        except TimeoutError as exc:
            if isinstance(exc, ReadTimeout):
                raise
            raise ReadTimeout(
                f"no complete response head from {self.peer} within {self.timeout:g}s"
            ) from None
        raise MalformedResponse(f"{self.peer} sent more than {_MAX_INFORMATIONAL} 1xx responses")

    async def body(self) -> AsyncIterator[bytes]:
        """Body chunks until EndOfMessage; each wait for data bounded by ``timeout``."""
        while True:
            event = await self._event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise MalformedResponse(f"unexpected {event!r} in the body from {self.peer}")


def _request_headers(
    url: Url, headers: Sequence[tuple[str, str]], content: bytes | None
) -> list[tuple[str, str]]:
    given = {k.lower() for k, _ in headers}
    out = [("Host", url.authority)] if "host" not in given else []
    defaults = (
        ("User-Agent", f"opensocket/{__version__}"),
        ("Accept", "*/*"),
        ("Accept-Encoding", "identity"),
    )
    out += [(k, v) for k, v in defaults if k.lower() not in given]
    if url.userinfo and "authorization" not in given:
        token = base64.b64encode(unquote(url.userinfo).encode()).decode("ascii")
        out.append(("Authorization", f"Basic {token}"))
    if content is not None and "content-length" not in given:
        out.append(("Content-Length", str(len(content))))
    return out + list(headers)


def _redirect(request: _Request, status: int, location: str) -> _Request:
    """The request that follows a ``status`` redirect to ``location`` (RFC 9110 15.4)."""
    try:
        new = parse_url(urljoin(str(request.url), location.strip()))
    except AddressError as exc:
        raise RedirectRefused(
            f"{request.url} redirected to {location!r}, which cannot be followed: {exc}"
        ) from None
    if request.url.scheme == "https" and new.scheme == "http":
        raise RedirectRefused(
            f"refusing the redirect from {request.url} to {new}: it would downgrade https to "
            "plain http"
        )
    method, content = request.method, request.content
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, content = "GET", None
    headers = [
        (k, v)
        for k, v in request.headers
        if not (content is None and k.lower() in _BODY_HEADERS)
        and k.lower() != "host"
        and not (new.origin != request.url.origin and k.lower() in _ORIGIN_ONLY)
    ]
    return _Request(method, new, [("Host", new.authority), *headers], content)


async def _open(request: _Request, tls: TLSOptions | None, timeout: float) -> Stream:
    opts = SocketOptions(connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)
    if request.url.scheme != "https":
        return await connect(request.url.address, raw=True, options=opts)
    return await connect(
        request.url.address,
        raw=True,
        options=opts,
        tls=tls or TLSOptions(handshake_timeout=timeout),
    )


@contextlib.asynccontextmanager
async def open_response(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    content: bytes | None = None,
    tls: TLSOptions | None = None,
    max_redirects: int = 5,
    timeout: float = 30.0,
    max_head_size: int = MAX_HEAD_SIZE,
) -> AsyncIterator[ResponseStream]:
    """Send a request, follow redirects, and yield the response with its body unread.

    ``tls`` applies to https:// URLs (verification is on by default). ``timeout`` bounds
    connecting, the whole response head and each wait for body data. ``max_redirects=0``
    returns a redirect response as it is; more redirects than a positive limit raise
    TooManyRedirects. Connection, TLS and timeout failures raise the usual opensocket errors.
    """
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    first = parse_url(url)
    request = _Request(method.upper(), first, _request_headers(first, pairs, content), content)
    history: list[str] = []
    while True:
        stream = await _open(request, tls, timeout)
        try:
            exchange = _Exchange(stream, request.url, timeout, max_head_size)
            await exchange.send(request)
            head = await exchange.head()
            location = _header(head, "location")
            if head.status_code in REDIRECTS and location is not None and max_redirects > 0:
                if len(history) >= max_redirects:
                    raise TooManyRedirects(
                        f"{url} redirected more than {max_redirects} times (last to {location}): "
                        "raise max_redirects (--max-redirects) if that is expected"
                    )
                history.append(str(request.url))
                request = _redirect(request, head.status_code, location)
                continue
            yield ResponseStream(
                status=head.status_code,
                reason=head.reason.decode("latin-1"),
                headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
                raw_headers=tuple(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers.raw_items()
                ),
                url=str(request.url),
                http_version=head.http_version.decode("ascii"),
                redirects=tuple(history),
                _exchange=exchange,
            )
            return
        finally:
            await stream.close()


def _header(head: h11.Response, name: str) -> str | None:
    raw = name.encode()
    return next((v.decode("latin-1") for k, v in head.headers if k == raw), None)


async def fetch(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    content: bytes | None = None,
    tls: TLSOptions | None = None,
    max_redirects: int = 5,
    timeout: float = 30.0,
    max_body: int = MAX_BODY,
) -> Response:
    """Send a request and return the whole response; a body over ``max_body`` raises
    BodyTooLarge. See ``open_response`` for the other arguments."""
    async with open_response(
        url,
        method=method,
        headers=headers,
        content=content,
        tls=tls,
        max_redirects=max_redirects,
        timeout=timeout,
    ) as response:
        parts: list[bytes] = []
        async for chunk in response.chunks():
            if response.bytes_read > max_body:
                raise BodyTooLarge(
                    f"the response from {response.url} is larger than {max_body} bytes "
                    "(max_body): stream it with open_response instead"
                )
            parts.append(chunk)
        return Response(
            status=response.status,
            reason=response.reason,
            headers=response.headers,
            url=response.url,
            body=b"".join(parts),
            http_version=response.http_version,
            redirects=response.redirects,
        )
