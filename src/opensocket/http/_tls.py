"""TLS for the static server: a handshake that fails still tells the client why (the TLS
alert, or a clear-text 400 to a plain HTTP request), and which Host names get HSTS."""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import socket
import ssl
from typing import Any, Final, cast

from .files import error_plan

__all__ = ["TellingSSLObject", "handshake_socket", "local_host"]

# the accepted socket whose TLS handshake runs in this context (set by HttpServer._start_tls;
# the TLS layer runs its callbacks in a copy of the context that created the transport)
handshake_socket: contextvars.ContextVar[socket.socket | None] = contextvars.ContextVar(
    "opensocket_http_handshake_socket", default=None
)
_PLAIN_REASONS: Final = frozenset({"HTTP_REQUEST", "HTTPS_PROXY_REQUEST"})


def _plain_http_answer() -> bytes:
    """The clear-text 400 for an HTTP request sent to an HTTPS port (as nginx answers)."""
    plan = error_plan(400, "plain HTTP request sent to an HTTPS port: use https://")
    lines = [f"HTTP/1.1 400 {plan.reason}", *(f"{k}: {v}" for k, v in plan.headers)]
    head = "\r\n".join([*lines, "Connection: close", "", ""]).encode()
    return head + b"".join(p for p in plan.parts if isinstance(p, bytes))


class TellingSSLObject(ssl.SSLObject):
    """An SSLObject that, when a handshake fails, sends the client why before the TLS layer
    closes: asyncio's and uvloop's TLS transports abort without flushing the alert they hold
    (curl then says "empty reply" instead of "certificate required"), and a plain HTTP
    request (which OpenSSL recognises) gets a clear-text 400. Outside ``_start_tls`` (no
    socket in the context) it is a plain SSLObject."""

    _outgoing: ssl.MemoryBIO | None = None

    @classmethod
    def _create(
        cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any, **kwargs: Any
    ) -> TellingSSLObject:
        # SSLContext.wrap_bio calls this (private, the same since Python 3.7): keep the BIO
        # the TLS layer writes our alert to
        create = super()._create  # type: ignore[misc]
        obj = cast(TellingSSLObject, create(incoming, outgoing, *args, **kwargs))
        obj._outgoing = outgoing
        return obj

    def do_handshake(self) -> None:
        """Run the handshake; on failure, send the alert (or the 400) before raising."""
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            self._tell(exc)
            raise

    def _tell(self, exc: ssl.SSLError) -> None:
        sock = handshake_socket.get()
        if sock is None or self._outgoing is None:
            return
        data = self._outgoing.read()  # the alert, if OpenSSL wrote one
        if exc.reason in _PLAIN_REASONS:
            data = _plain_http_answer()
        if data:
            with contextlib.suppress(OSError):
                sock.send(data)  # small: the kernel takes it at once, or the client is gone


def local_host(host: str) -> bool:
    """Whether a Host header names localhost, a ``.localhost`` name or an IP literal."""
    if host.startswith("["):
        return True  # an IPv6 literal
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
