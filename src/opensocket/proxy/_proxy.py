"""``Proxy`` (asyncio) and ``BackgroundProxy`` (its own event loop thread, for blocking code).

Both have the same fault methods (``FaultMethods``): they build a ``Fault`` and hand it to
``add``. On ``Proxy`` they are plain methods to call from the proxy's event loop (they do no
I/O); on ``BackgroundProxy`` they are thread-safe and return once the fault is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from .._sockets import bind_sockets
from ..address import Address, from_sockaddr, parse_address
from ..errors import ConfigError
from ..options import SocketOptions
from ._units import parse_duration, parse_size
from .faults import Fault, FaultSet, make_fault
from .inspect import FrameRecord
from .tcp import StreamListener, StreamSession, start_session
from .udp import Listener, resolve_upstream, upstream_socket, widen_buffers

__all__ = ["BackgroundProxy", "FaultId", "FaultMethods", "Proxy"]

FaultId = int
T = TypeVar("T")
Number = float | str
START_TIMEOUT: Final = 10.0
log = logging.getLogger("opensocket.proxy")
DATAGRAM_KINDS: Final = frozenset({"loss", "duplicate", "reorder"})  # UDP proxies only


class FaultMethods:
    """The fault helpers shared by ``Proxy`` and ``BackgroundProxy``.

    ``direction`` is ``"up"`` (client to upstream), ``"down"`` (upstream to client) or
    ``"both"``; ``probability`` is the chance the fault applies (per connection for streams,
    per datagram for UDP). Durations are seconds or strings such as ``"50ms"``; sizes are
    bytes or strings such as ``"64k"``.
    """

    def add(self, fault: Fault) -> FaultId:  # pragma: no cover - overridden
        """Put ``fault`` in force; return its id."""
        raise NotImplementedError

    def add_latency(
        self,
        delay: Number,
        jitter: Number = 0.0,
        direction: str = "both",
        probability: float = 1.0,
    ) -> FaultId:
        """Delay every chunk (datagram) by ``delay`` ± ``jitter`` (stream order is kept)."""
        return self.add(
            make_fault(
                "latency",
                delay=parse_duration(delay, "delay"),
                jitter=parse_duration(jitter, "jitter"),
                direction=direction,
                probability=probability,
            )
        )

    def limit_bandwidth(
        self, bytes_per_second: Number, direction: str = "both", probability: float = 1.0
    ) -> FaultId:
        """Pace the traffic to ``bytes_per_second``."""
        rate = parse_size(bytes_per_second, "bandwidth")
        return self.add(
            make_fault("bandwidth", rate=rate, direction=direction, probability=probability)
        )

    def reset_after(
        self,
        nbytes: int | None = None,
        seconds: Number | None = None,
        direction: str = "both",
        probability: float = 1.0,
    ) -> FaultId:
        """Deliver ``nbytes`` (or what came in ``seconds``), then reset both sockets (RST)."""
        return self._cut("reset", nbytes, seconds, direction, probability)

    def close_after(
        self,
        nbytes: int | None = None,
        seconds: Number | None = None,
        direction: str = "both",
        probability: float = 1.0,
    ) -> FaultId:
        """Deliver ``nbytes`` (or what came in ``seconds``), then close both sockets (FIN)."""
        return self._cut("close", nbytes, seconds, direction, probability)

    def _cut(
        self,
        kind: str,
        nbytes: int | None,
        seconds: Number | None,
        direction: str,
        probability: float,
    ) -> FaultId:
        secs = None if seconds is None else parse_duration(seconds, "seconds")
        fault = make_fault(
            kind, nbytes=nbytes, seconds=secs, direction=direction, probability=probability
        )
        return self.add(fault)

    def stall(self, direction: str = "both", probability: float = 1.0) -> FaultId:
        """Stop forwarding (data is held, not lost) until this fault is cleared."""
        return self.add(make_fault("stall", direction=direction, probability=probability))

    def corrupt(
        self, offset: int, xor: int = 0xFF, direction: str = "both", probability: float = 1.0
    ) -> FaultId:
        """XOR the byte at stream offset ``offset`` (per datagram for UDP) with ``xor``."""
        return self.add(
            make_fault(
                "corrupt", offset=offset, xor=xor, direction=direction, probability=probability
            )
        )

    def loss(self, rate: float, direction: str = "both", probability: float = 1.0) -> FaultId:
        """UDP: drop each datagram with chance ``rate``."""
        return self.add(make_fault("loss", rate=rate, direction=direction, probability=probability))

    def duplicate(self, rate: float, direction: str = "both", probability: float = 1.0) -> FaultId:
        """UDP: send each datagram twice with chance ``rate``."""
        return self.add(
            make_fault("duplicate", rate=rate, direction=direction, probability=probability)
        )

    def reorder(
        self,
        rate: float,
        hold: Number = 0.1,
        direction: str = "both",
        probability: float = 1.0,
    ) -> FaultId:
        """UDP: with chance ``rate`` hold a datagram back until the next one has gone out
        (or ``hold`` seconds passed)."""
        return self.add(
            make_fault(
                "reorder",
                rate=rate,
                hold=parse_duration(hold, "hold"),
                direction=direction,
                probability=probability,
            )
        )


class Proxy(FaultMethods):
    """A fault-injecting proxy from ``listen`` to ``upstream`` on the running event loop.

    ``async with Proxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:9000") as proxy:`` then connect
    to ``proxy.url``. UDP when ``listen`` is udp:// (``upstream`` must be too). ``seed`` makes
    every random decision reproducible; ``inspect`` receives one record per opensocket frame
    forwarded (see ``opensocket.proxy.inspect``); ``control`` serves the JSON control protocol.
    """

    def __init__(
        self,
        listen: str | Address,
        upstream: str | Address,
        *,
        seed: int | None = None,
        inspect: Callable[[FrameRecord], None] | None = None,
        control: str | None = None,
        options: SocketOptions | None = None,
    ) -> None:
        self.listen = parse_address(listen)
        self.upstream = parse_address(upstream)
        _check_pair(self.listen, self.upstream)
        self.faults = FaultSet(seed)
        self.options = options or SocketOptions()
        self.inspect = inspect
        self.control_url = control
        self.address: Address | None = None
        self.control_address: Address | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.Server] = []
        self._sessions: set[StreamSession] = set()
        self._udp: Listener | None = None
        self._control: Any = None
        self._ids = 0
        self._origin = 0.0

    @property
    def is_datagram(self) -> bool:
        """True for a UDP proxy (udp://, or rudp:// whose datagrams it forwards as UDP)."""
        return _over_udp(self.listen)

    @property
    def url(self) -> str:
        """The address clients connect to (the real port once started)."""
        if self.address is None:
            raise RuntimeError("the proxy is not started: call 'await proxy.start()' first")
        return str(self.address)

    async def start(self) -> Proxy:
        """Bind the listening socket (and the control endpoint); return self."""
        self._loop = asyncio.get_running_loop()
        self._origin = self._loop.time()
        if self.is_datagram:
            await self._start_udp()
        else:
            await self._start_stream()
        if self.control_url is not None:
            from .control import ControlServer

            try:
                self._control = await ControlServer.start(self, self.control_url)
            except BaseException:
                await self.close()
                raise
            self.control_address = self._control.address
        return self

    async def _start_stream(self) -> None:
        loop = asyncio.get_running_loop()
        socks = bind_sockets(self.listen, self.options)
        try:
            for sock in socks:
                server = await loop.create_server(lambda: StreamListener(self._accepted), sock=sock)
                self._servers.append(server)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        self.address = _bound(self.listen, socks[0])

    async def _start_udp(self) -> None:
        loop = asyncio.get_running_loop()
        infos = await resolve_upstream(self.upstream)
        socks = bind_sockets(self.listen, self.options, kind=socket.SOCK_DGRAM)
        for extra in socks[1:]:
            extra.close()
        widen_buffers(socks[0])
        listener = Listener(self.faults, upstream_socket(self.upstream, infos), self._next_id)
        try:
            await loop.create_datagram_endpoint(lambda: listener, sock=socks[0])
        except BaseException:
            socks[0].close()
            raise
        self._udp = listener
        self.address = _bound(self.listen, socks[0])

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _accepted(self, transport: asyncio.Transport) -> Any:
        loop = asyncio.get_running_loop()
        session = StreamSession(
            self._next_id(),
            self.faults,
            loop,
            on_done=self._done,
            inspect=self.inspect,
            origin=self._origin,
        )
        self._sessions.add(session)
        stats = self.faults.stats
        stats.connections += 1
        stats.active = len(self._sessions)

        def failed(exc: BaseException) -> None:
            stats.upstream_failures += 1
            count = stats.upstream_failures
            if count in (1, 10, 100) or count % 1000 == 0:  # said, but not once per client
                log.warning(
                    "cannot reach the upstream %s (%s): the client was reset (%d so far)",
                    self.upstream,
                    exc,
                    count,
                )

        session.start_task = loop.create_task(
            start_session(session, self.upstream, self.options, failed)
        )
        return session.client

    def _done(self, session: StreamSession) -> None:
        self._sessions.discard(session)
        self.faults.stats.active = len(self._sessions)

    async def close(self) -> None:
        """Stop listening and drop every connection (at once, with RST where it applies)."""
        if self._control is not None:
            await self._control.close()
            self._control = None
        for server in self._servers:
            server.close()
        for session in list(self._sessions):
            session.abort()
        self._sessions.clear()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self.listen.is_unix and not self.listen.is_abstract:
            with contextlib.suppress(OSError):
                os.unlink(self.listen.path)
        self.faults.stats.active = 0
        await asyncio.sleep(0)  # let the transports run their connection_lost callbacks

    async def __aenter__(self) -> Proxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def check_fault(self, fault: Fault) -> None:
        """ConfigError unless ``fault`` applies to this proxy (loss, duplicate and reorder are
        for datagrams: a stream proxy refuses them rather than accept a fault that never acts)."""
        if fault.kind in DATAGRAM_KINDS and not self.is_datagram:
            raise ConfigError(
                f"a {fault.kind} fault applies to udp:// (and rudp://) proxies only: streams "
                "never lose, duplicate or reorder bytes (use a reset, close or corrupt fault)"
            )

    def add(self, fault: Fault) -> FaultId:
        """Put ``fault`` in force now, for new and open connections; return its id.

        ConfigError when the fault does not apply to this proxy (see ``check_fault``).
        """
        self.check_fault(fault)
        fault_id = self.faults.add(fault, self._now())
        self._changed()
        return fault_id

    def clear(self, fault_id: FaultId | None = None) -> list[FaultId]:
        """Remove one fault, or every fault; held data flows again. Returns the ids removed."""
        removed = self.faults.clear(fault_id)
        self._changed()
        return removed

    def list_faults(self) -> list[dict[str, Any]]:
        """The faults in force: ``{"id": ..., "kind": ..., ...}`` each."""
        return [{"id": fid, **fault.to_json()} for fid, fault in self.faults.items()]

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: connections, resets, closes, bytes and datagrams each way, drops..."""
        return self.faults.stats.as_dict()

    def _changed(self) -> None:
        for session in list(self._sessions):
            session.pump_all()
        if self._udp is not None:
            self._udp.pump_all()

    @staticmethod
    def in_thread(listen: str | Address, upstream: str | Address, **kwargs: Any) -> BackgroundProxy:
        """A proxy on its own event loop thread, for blocking code (use it as a context manager)."""
        return BackgroundProxy(listen, upstream, **kwargs)


def _check_pair(listen: Address, upstream: Address) -> None:
    if listen.is_tls or upstream.is_tls:
        raise ConfigError(
            "the proxy forwards TLS as opaque bytes: use tcp:// for both addresses "
            "(the TLS handshake passes through)"
        )
    if _over_udp(listen) != _over_udp(upstream):
        raise ConfigError(
            f"cannot proxy {listen.scheme}:// to {upstream.scheme}://: "
            "use udp:// on both sides (or rudp://), or stream addresses (tcp://, unix://) on both"
        )


def _over_udp(addr: Address) -> bool:
    return addr.is_datagram or addr.is_rudp


def _bound(addr: Address, sock: socket.socket) -> Address:
    if addr.is_unix:
        return addr
    return from_sockaddr(addr.scheme, sock.getsockname())


class BackgroundProxy(FaultMethods):
    """A ``Proxy`` running on an event loop in a thread of its own; every method is thread-safe.

    ``with BackgroundProxy(listen, upstream) as proxy:`` (or ``start()``/``close()``).
    """

    def __init__(self, listen: str | Address, upstream: str | Address, **kwargs: Any) -> None:
        self.proxy = Proxy(listen, upstream, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The address clients connect to."""
        return self.proxy.url

    @property
    def address(self) -> Address | None:
        """The bound listen address (the real port once started)."""
        return self.proxy.address

    @property
    def is_datagram(self) -> bool:
        """True for a UDP proxy (udp:// or rudp://)."""
        return self.proxy.is_datagram

    @property
    def control_address(self) -> Address | None:
        """The bound control endpoint, when ``control`` was given."""
        return self.proxy.control_address

    def start(self) -> BackgroundProxy:
        """Start the thread and the proxy; return once it listens (raises what start raised)."""
        if self._thread is not None:
            raise RuntimeError("this BackgroundProxy was already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"opensocket-proxy {self.proxy.listen}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self.proxy.start(), START_TIMEOUT)
        except BaseException:
            self._stop_loop()
            raise
        return self

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._loop is None or not self._loop.is_running():
            coro.close()
            raise RuntimeError("the proxy is not running: call start() first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _run(self, func: Callable[[], T]) -> T:
        async def call() -> T:
            return func()

        return self._call(call())

    def close(self) -> None:
        """Stop the proxy and its thread (idempotent)."""
        if self._loop is None:
            return
        try:
            if self._loop.is_running():
                self._call(self.proxy.close(), START_TIMEOUT)
                # getaddrinfo runs in the loop's executor: join its thread too
                self._call(self._loop.shutdown_default_executor(), START_TIMEOUT)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = None
        if loop is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(START_TIMEOUT)
        loop.close()

    def __enter__(self) -> BackgroundProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, fault: Fault) -> FaultId:
        """Put ``fault`` in force; return its id."""
        return self._run(lambda: self.proxy.add(fault))

    def clear(self, fault_id: FaultId | None = None) -> list[FaultId]:
        """Remove one fault, or every fault."""
        return self._run(lambda: self.proxy.clear(fault_id))

    def list_faults(self) -> list[dict[str, Any]]:
        """The faults in force."""
        return self._run(self.proxy.list_faults)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters (a consistent snapshot taken on the proxy's thread)."""
        return self._run(lambda: self.proxy.stats)
