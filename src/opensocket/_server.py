"""What the asyncio and the blocking servers share: configuration, bound addresses, admission."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from . import tls as tlsmod
from .address import Address, from_sockaddr
from .admission import Admission
from .hooks import Hooks
from .options import ProtocolOptions, ServerLimits, SocketOptions, TLSOptions
from .stats import ServerStats

__all__ = ["ServerBase"]


class ServerBase:
    """Base of ``opensocket.Server`` and ``opensocket.sync.Server``."""

    def __init__(
        self,
        handler: Callable[[Any], Any],
        *,
        raw: bool,
        protocol: ProtocolOptions,
        options: SocketOptions,
        limits: ServerLimits,
        tls: TLSOptions | ssl.SSLContext | None,
        hooks: Hooks | None,
        scheme: str,
    ) -> None:
        self.handler = handler
        self.raw = raw
        # The server's own handshake limit protects it whatever the protocol options say.
        handshake = min(protocol.handshake_timeout, limits.handshake_timeout)
        self.protocol = replace(protocol, handshake_timeout=handshake)
        self.options = options
        self.limits = limits
        self.hooks = hooks or Hooks()
        self.addresses: list[Address] = []
        self._ssl = tlsmod.server_context(tls) if tls is not None or scheme == "tls" else None
        self._admission = Admission(limits)
        self._stats = ServerStats()
        self._unix_paths: list[str] = []
        self._closing = False

    def _record_bound(self, addr: Address, socks: list[socket.socket]) -> None:
        """Note the real addresses of freshly bound sockets (ports chosen by the kernel)."""
        for sock in socks:
            bound = from_sockaddr(addr.scheme, sock.getsockname())
            # With TLS on, report tls:// so that the address works as given to connect().
            scheme = "tls" if self._ssl is not None else addr.scheme
            self.addresses.append(bound if bound.is_unix else bound.with_scheme(scheme))
        if addr.is_unix and not addr.is_abstract:
            self._unix_paths.append(addr.path)

    def _remove_unix_files(self) -> None:
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)

    @property
    def url(self) -> str:
        """The first bound address as a URL (handy with port 0)."""
        return str(self.addresses[0])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {', '.join(map(str, self.addresses))}>"
