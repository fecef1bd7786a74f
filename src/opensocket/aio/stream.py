"""Raw byte streams (framing off) for talking to anything that is not opensocket."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from ..address import format_sockaddr
from ..errors import ConnectionClosedError, ReadTimeout, WriteTimeout
from ..tls import tls_error

__all__ = ["DEFAULT_LINE_LIMIT", "Stream"]

DEFAULT_LINE_LIMIT = 64 * 1024
CLOSE_TIMEOUT = 30.0


class Stream:
    """A TCP, TLS or Unix byte stream: ``send_all``, ``recv``, ``recv_exactly``, ``readline``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.bytes_in = 0
        self.bytes_out = 0
        peer = writer.get_extra_info("peername")
        self.remote_address = format_sockaddr(peer)
        self.local_address = format_sockaddr(writer.get_extra_info("sockname"))

    async def _timed(self, coro: Any, timeout: float | None, what: str) -> Any:
        try:
            async with asyncio.timeout(timeout):
                return await coro
        except TimeoutError:
            if what == "write":
                self.abort()  # the peer is stuck: drop it rather than wait on it
                raise WriteTimeout(
                    f"{self.remote_address} did not take our data within {timeout:g}s"
                ) from None
            raise ReadTimeout(f"nothing from {self.remote_address} within {timeout:g}s") from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ConnectionClosedError(1006, f"connection lost: {exc}", by_peer=True) from exc
        except ssl.SSLError as exc:  # e.g. TLS 1.3: a refused client certificate, after it
            raise tls_error(exc, self.remote_address) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``; waits while the peer is slow (bounded by write_timeout)."""
        if self._writer.is_closing():
            raise ConnectionClosedError(1006, "the stream is closed")
        self._writer.write(data)
        self.bytes_out += len(data)
        await self._timed(self._writer.drain(), self.write_timeout, "write")

    async def recv(self, max_bytes: int = 65536, timeout: float | None = None) -> bytes:
        """Return up to ``max_bytes`` as soon as some arrive; ``b""`` at end of stream."""
        data: bytes = await self._timed(
            self._reader.read(max_bytes), timeout or self.read_timeout, "read"
        )
        self.bytes_in += len(data)
        return data

    async def recv_exactly(self, count: int, timeout: float | None = None) -> bytes:
        """Return exactly ``count`` bytes; raise ConnectionClosed if the stream ends first."""
        try:
            data: bytes = await self._timed(
                self._reader.readexactly(count), timeout or self.read_timeout, "read"
            )
        except asyncio.IncompleteReadError as exc:
            raise ConnectionClosedError(
                1006,
                f"the stream ended after {len(exc.partial)} of {count} bytes",
                by_peer=True,
            ) from None
        self.bytes_in += len(data)
        return data

    async def readline(
        self, limit: int = DEFAULT_LINE_LIMIT, timeout: float | None = None
    ) -> bytes:
        """Return one line including its ``\\n``; the last line may lack it; ``b""`` at EOF.

        A line longer than ``limit`` raises ValueError instead of growing without bound (what
        was read of it is discarded).
        """
        line: bytes = await self._timed(
            self._read_line(limit), timeout or self.read_timeout, "read"
        )
        self.bytes_in += len(line)
        return line

    async def _read_line(self, limit: int) -> bytes:
        # readuntil() stops at the reader's own buffer limit: collect the line in pieces so
        # that ``limit`` (larger or smaller than that buffer) is what decides.
        reader = self._reader
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                part = await reader.readuntil(b"\n")
                done = True
            except asyncio.IncompleteReadError as exc:
                part, done = exc.partial, True
            except asyncio.LimitOverrunError as exc:
                part, done = await reader.readexactly(exc.consumed), False
            size += len(part)
            if size > limit:
                raise ValueError(f"line longer than {limit} bytes")
            parts.append(part)
            if done:
                return b"".join(parts)

    async def shutdown_write(self) -> None:
        """Send end-of-stream to the peer while still reading its replies."""
        if self._writer.can_write_eof():
            self._writer.write_eof()

    async def close(self) -> None:
        """Flush and close; a peer that takes nothing for ``write_timeout`` is cut off."""
        writer = self._writer
        if not writer.is_closing():
            writer.close()
        try:
            async with asyncio.timeout(self.write_timeout or CLOSE_TIMEOUT):
                await writer.wait_closed()
        except (TimeoutError, asyncio.CancelledError) as exc:
            self.abort()  # never leave the socket behind, even when close() is cancelled
            if isinstance(exc, asyncio.CancelledError):
                raise
        except (ConnectionError, OSError):
            pass

    def abort(self) -> None:
        """Close at once, discarding anything not sent yet."""
        self._writer.transport.abort()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
