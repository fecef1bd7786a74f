"""``BackgroundServer``: a server for tests, running beside the test on threads of its own."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from ..address import Address, parse_address
from ..errors import ConnectionClosed, OpenSocketError

__all__ = ["BackgroundServer"]

T = TypeVar("T")
TIMEOUT: Final = 10.0
CHUNK: Final = 64 * 1024


async def _echo_framed(conn: Any) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await conn.send_many(await conn.recv_batch())


async def _echo_raw(stream: Any) -> None:
    with contextlib.suppress(ConnectionClosed, OSError):
        while data := await stream.recv(CHUNK):
            await stream.send_all(data)


async def _echo_datagrams(endpoint: Any) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            data, peer = await endpoint.recv_from()
            await endpoint.send_to(data, peer)


class BackgroundServer:
    """A server on ``url`` running ``handler`` in the background, for tests.

    A coroutine function runs on an asyncio event loop in a thread of its own
    (``opensocket.aio.serve``; for udp:// it is called once with the bound
    ``DatagramEndpoint``); a plain callable runs in the blocking runtime's worker threads
    (``opensocket.sync.serve``; for udp:// once, in a thread, with the endpoint). Without a
    handler the server echoes (messages, bytes with ``raw=True``, or datagrams). Extra
    keyword arguments go to ``serve`` (``raw``, ``codec``, ``secret``, ``limits``...).
    """

    def __init__(
        self,
        handler: Callable[[Any], Any] | None = None,
        url: str | Address = "tcp://127.0.0.1:0",
        **serve_kwargs: Any,
    ) -> None:
        self.requested = parse_address(url)
        self.handler = handler
        self.kwargs = serve_kwargs
        self.address: Address | None = None
        self._is_async = handler is None or inspect.iscoroutinefunction(handler)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._endpoint: Any = None
        self._task: asyncio.Task[Any] | None = None

    @property
    def url(self) -> str:
        """The bound address (real port) as a URL."""
        if self.address is None:
            raise RuntimeError("the server is not started: call start() first")
        return str(self.address)

    def __str__(self) -> str:
        return self.url

    def start(self) -> BackgroundServer:
        """Bind and start serving; return self once the address is bound."""
        if self._is_async:
            self._start_loop()
            try:
                self._call(self._start_async())
            except BaseException:
                self._stop_loop()
                raise
        else:
            self._start_sync()
        return self

    # ---- asyncio handlers ------------------------------------------------------------------

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name=f"opensocket-server {self.requested}", daemon=True
        )
        self._loop = loop
        self._threads.append(thread)
        thread.start()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(TIMEOUT)

    async def _start_async(self) -> None:
        from .. import aio

        if self.requested.is_datagram:
            self._endpoint = await aio.open_datagram(self.requested, bind=True)
            handler = self.handler or _echo_datagrams
            self._task = asyncio.get_running_loop().create_task(handler(self._endpoint))
            self.address = self._endpoint.local_address
            return
        echo = _echo_raw if self.kwargs.get("raw") else _echo_framed
        self._server = await aio.serve(self.requested, self.handler or echo, **self.kwargs)
        self.address = self._server.addresses[0]

    async def _stop_async(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._server is not None:
            await self._server.close(0)
        await asyncio.get_running_loop().shutdown_default_executor()

    # ---- blocking handlers -----------------------------------------------------------------

    def _start_sync(self) -> None:
        from .. import sync

        assert self.handler is not None
        if not self.requested.is_datagram:
            self._server = sync.serve(self.requested, self.handler, **self.kwargs)
            self.address = self._server.addresses[0]
            return
        self._endpoint = sync.open_datagram(self.requested, bind=True)
        self.address = self._endpoint.local_address
        thread = threading.Thread(
            target=self._run_datagrams, name=f"opensocket-server {self.address}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _run_datagrams(self) -> None:
        assert self.handler is not None
        with contextlib.suppress(OpenSocketError, OSError):
            self.handler(self._endpoint)

    # ---- stopping --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop serving, close every connection and join the threads (idempotent)."""
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._call(self._stop_async())
            self._stop_loop()
        else:
            if self._server is not None:
                self._server.shutdown(0)
            if self._endpoint is not None:
                self._endpoint.close()
        for thread in self._threads:
            thread.join(TIMEOUT)
        self._threads.clear()
        self._server = self._endpoint = None

    def _stop_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        for thread in self._threads:
            thread.join(TIMEOUT)
        loop.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
