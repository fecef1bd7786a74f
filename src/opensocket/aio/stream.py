"""Raw byte streams (framing off) for talking to anything that is not opensocket."""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import ConnectionClosedError, ReadTimeout, WriteTimeout

__all__ = ["DEFAULT_LINE_LIMIT", "Stream"]

DEFAULT_LINE_LIMIT = 64 * 1024


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
        self.remote_address = _fmt(peer)
        self.local_address = _fmt(writer.get_extra_info("sockname"))

    async def _timed(self, coro: Any, timeout: float | None, what: str) -> Any:
        try:
            async with asyncio.timeout(timeout):
                return await coro
        except TimeoutError:
            if what == "write":
                raise WriteTimeout(
                    f"{self.remote_address} did not take our data within {timeout:g}s"
                ) from None
            raise ReadTimeout(f"nothing from {self.remote_address} within {timeout:g}s") from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ConnectionClosedError(1006, f"connection lost: {exc}", by_peer=True) from exc

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

        A line longer than ``limit`` raises ValueError instead of growing without bound.
        """
        reader = self._reader
        try:
            line: bytes = await self._timed(
                reader.readuntil(b"\n"), timeout or self.read_timeout, "read"
            )
        except asyncio.IncompleteReadError as exc:
            line = exc.partial
        except asyncio.LimitOverrunError:
            raise ValueError(f"line longer than {limit} bytes") from None
        if len(line) > limit:
            raise ValueError(f"line longer than {limit} bytes")
        self.bytes_in += len(line)
        return line

    async def shutdown_write(self) -> None:
        """Send end-of-stream to the peer while still reading its replies."""
        if self._writer.can_write_eof():
            self._writer.write_eof()

    async def close(self) -> None:
        """Flush and close."""
        writer = self._writer
        if not writer.is_closing():
            writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _fmt(sockaddr: Any) -> str:
    if isinstance(sockaddr, tuple):
        host = str(sockaddr[0])
        return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"
    return str(sockaddr or "unix")
