"""Raw byte streams (framing off), blocking, for talking to anything that is not opensocket."""

from __future__ import annotations

import time
from typing import Any

from ..errors import CloseCode, ConnectionClosedError, ReadTimeout, WriteTimeout
from ._transport import Transport

__all__ = ["DEFAULT_LINE_LIMIT", "Stream"]

DEFAULT_LINE_LIMIT = 64 * 1024
READ_SIZE = 64 * 1024


def fmt_sockaddr(sockaddr: Any) -> str:
    """``host:port`` (IPv6 in brackets) for an IP socket address, else the Unix name."""
    if isinstance(sockaddr, tuple):
        host = str(sockaddr[0])
        return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"
    if isinstance(sockaddr, bytes):
        return "@" + sockaddr.lstrip(b"\0").decode(errors="replace")
    return str(sockaddr or "unix")


class Stream:
    """A TCP, TLS or Unix byte stream: ``send_all``, ``recv``, ``recv_exactly``, ``readline``.

    One thread may read while another writes; reads from several threads at once interleave.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
    ) -> None:
        self._transport = transport
        self._buf = bytearray()
        self._eof = False
        self._closed = False
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.bytes_in = 0
        self.bytes_out = 0
        self.remote_address = fmt_sockaddr(transport.peername())
        self.local_address = fmt_sockaddr(transport.sockname())

    # ---- writing ---------------------------------------------------------------------------

    def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``; blocks while the peer is slow (bounded by write_timeout)."""
        if self._closed:
            raise ConnectionClosedError(CloseCode.ABNORMAL, "the stream is closed")
        try:
            self._transport.sendall(data, self.write_timeout)
        except TimeoutError:
            raise WriteTimeout(
                f"{self.remote_address} did not take our data within {self.write_timeout:g}s"
            ) from None
        except OSError as exc:
            raise ConnectionClosedError(
                CloseCode.ABNORMAL, f"connection lost: {exc}", by_peer=True
            ) from exc
        self.bytes_out += len(data)

    # ---- reading ---------------------------------------------------------------------------

    def _fill(self, deadline: float | None, timeout: float | None) -> bool:
        """Read once more into the buffer; False at end of stream."""
        if self._eof:
            return False
        transport = self._transport
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if (left is not None and left <= 0) or not transport.wait_readable(left):
                raise ReadTimeout(f"nothing from {self.remote_address} within {timeout:g}s")
            try:
                data = transport.recv(READ_SIZE)
            except OSError as exc:
                if self._closed:
                    raise ConnectionClosedError(CloseCode.ABNORMAL, "the stream is closed") from exc
                raise ConnectionClosedError(
                    CloseCode.ABNORMAL, f"connection lost: {exc}", by_peer=True
                ) from exc
            if data is None:
                continue
            if not data:
                self._eof = True
                return False
            self.bytes_in += len(data)
            self._buf += data
            return True

    def _deadline(self, timeout: float | None) -> tuple[float | None, float | None]:
        timeout = timeout or self.read_timeout
        return (None if timeout is None else time.monotonic() + timeout), timeout

    def _take(self, count: int) -> bytes:
        data = bytes(self._buf[:count])
        del self._buf[:count]
        return data

    def recv(self, max_bytes: int = 65536, timeout: float | None = None) -> bytes:
        """Return up to ``max_bytes`` as soon as some arrive; ``b""`` at end of stream."""
        if not self._buf:
            deadline, timeout = self._deadline(timeout)
            if not self._fill(deadline, timeout):
                return b""
        return self._take(max_bytes)

    def recv_exactly(self, count: int, timeout: float | None = None) -> bytes:
        """Return exactly ``count`` bytes; raise ConnectionClosed if the stream ends first."""
        deadline, timeout = self._deadline(timeout)
        while len(self._buf) < count:
            if not self._fill(deadline, timeout):
                raise ConnectionClosedError(
                    CloseCode.ABNORMAL,
                    f"the stream ended after {len(self._buf)} of {count} bytes",
                    by_peer=True,
                )
        return self._take(count)

    def readline(self, limit: int = DEFAULT_LINE_LIMIT, timeout: float | None = None) -> bytes:
        """Return one line including its ``\\n``; the last line may lack it; ``b""`` at EOF.

        A line longer than ``limit`` raises ValueError instead of growing without bound.
        """
        deadline, timeout = self._deadline(timeout)
        scanned = 0
        while True:
            end = self._buf.find(b"\n", scanned)
            if end >= 0:
                if end + 1 > limit:
                    raise ValueError(f"line longer than {limit} bytes")
                return self._take(end + 1)
            scanned = len(self._buf)
            if scanned > limit:
                raise ValueError(f"line longer than {limit} bytes")
            if not self._fill(deadline, timeout):
                return self._take(len(self._buf))

    # ---- lifecycle -------------------------------------------------------------------------

    def shutdown_write(self) -> None:
        """Send end-of-stream to the peer while still reading its replies (not on TLS)."""
        self._transport.shutdown_write()

    def close(self) -> None:
        """Close the stream; a thread blocked reading it wakes with ConnectionClosed."""
        if self._closed:
            return
        self._closed = True
        self._transport.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Stream {self.local_address} -> {self.remote_address}>"
