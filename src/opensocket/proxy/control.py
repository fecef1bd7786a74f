"""The proxy's control protocol: JSON requests and replies over opensocket's framed protocol.

One request, one reply, in order, on a connection that uses the ``json`` codec::

    {"action": "add", "fault": {"kind": "latency", "delay": 0.05, "direction": "down"}}
        -> {"ok": true, "id": 1}
    {"action": "list"}                -> {"ok": true, "faults": [{"id": 1, "kind": ...}, ...]}
    {"action": "clear"}               -> {"ok": true, "cleared": [1, 2]}
    {"action": "clear", "id": 2}      -> {"ok": true, "cleared": [2]}
    {"action": "stats"}               -> {"ok": true, "stats": {"connections": ..., ...}}
    {"action": "info"}                -> {"ok": true, "listen": ..., "upstream": ..., ...}

A bad request gets ``{"ok": false, "error": "what was wrong"}`` and the connection stays open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .. import aio
from ..address import Address
from ..aio import Connection, Server
from ..errors import ConfigError, ConnectionClosed, OpenSocketError
from .faults import fault_from_json

if TYPE_CHECKING:
    from ._proxy import Proxy

__all__ = ["ACTIONS", "ControlClient", "ControlServer", "handle_request"]

ACTIONS: Final = ("add", "list", "clear", "stats", "info")


def _fault_id(request: dict[str, Any]) -> int | None:
    value = request.get("id")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"'id' must be a fault id (an integer), not {value!r}")
    return value


def _add(proxy: Proxy, request: dict[str, Any]) -> dict[str, Any]:
    fault = request.get("fault")
    if not isinstance(fault, dict):
        raise ConfigError("'add' needs a 'fault' object, e.g. {\"kind\": \"latency\", ...}")
    return {"id": proxy.add(fault_from_json(fault))}


def _info(proxy: Proxy, request: dict[str, Any]) -> dict[str, Any]:
    return {
        "listen": proxy.url,
        "upstream": str(proxy.upstream),
        "protocol": "udp" if proxy.is_datagram else "stream",
        "inspect": proxy.inspect is not None,
    }


_HANDLERS: Final[dict[str, Callable[[Proxy, dict[str, Any]], dict[str, Any]]]] = {
    "add": _add,
    "list": lambda proxy, _: {"faults": proxy.list_faults()},
    "clear": lambda proxy, req: {"cleared": proxy.clear(_fault_id(req))},
    "stats": lambda proxy, _: {"stats": proxy.stats},
    "info": _info,
}


def handle_request(proxy: Proxy, request: Any) -> dict[str, Any]:
    """Apply one control request to ``proxy``; return the reply (never raises for bad input)."""
    if not isinstance(request, dict):
        return {"ok": False, "error": "a request is a JSON object with an 'action'"}
    action = request.get("action")
    handler = _HANDLERS.get(action) if isinstance(action, str) else None
    if handler is None:
        return {
            "ok": False,
            "error": f"unknown action {action!r} (actions: {', '.join(ACTIONS)})",
        }
    try:
        return {"ok": True, **handler(proxy, request)}
    except (OpenSocketError, ValueError, TypeError) as exc:
        return {"ok": False, "error": str(exc)}


class ControlServer:
    """Serves the control protocol for one proxy."""

    def __init__(self, proxy: Proxy, server: Server) -> None:
        self.proxy = proxy
        self.server = server

    @classmethod
    async def start(cls, proxy: Proxy, url: str) -> ControlServer:
        """Listen on ``url`` (tcp:// or unix://)."""
        holder: list[ControlServer] = []

        async def handler(conn: Connection) -> None:
            try:
                while True:
                    request = await conn.recv()
                    await conn.send(handle_request(holder[0].proxy, request))
            except ConnectionClosed:
                pass

        server = await aio.serve(url, handler, codec="json")
        holder.append(cls(proxy, server))
        return holder[0]

    @property
    def address(self) -> Address:
        """The bound control address (real port)."""
        return self.server.addresses[0]

    async def close(self) -> None:
        """Stop serving control connections."""
        await self.server.close(0)


class ControlClient:
    """A connection to a proxy's control endpoint: ``await client.request({...})``."""

    def __init__(self, url: str | Address, *, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self._conn: Connection | None = None

    async def __aenter__(self) -> ControlClient:
        self._conn = await aio.connect(self.url, codec="json")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return the reply; OpenSocketError when the proxy refused it."""
        if self._conn is None:
            raise RuntimeError("use 'async with ControlClient(url) as client'")
        await self._conn.send(request)
        reply = await self._conn.recv(self.timeout)
        if not isinstance(reply, dict):
            raise OpenSocketError(f"the proxy sent a malformed reply: {reply!r}")
        if not reply.get("ok"):
            raise ConfigError(f"the proxy refused the request: {reply.get('error')}")
        return reply
