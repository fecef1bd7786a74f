"""What the asyncio and the blocking framed connections share: identity, codec, close state."""

from __future__ import annotations

from typing import Any, Protocol

from .codecs import Codec, get_codec
from .errors import OpenSocketError
from .protocol.connection import FramedConnection, State
from .protocol.frame import Frame
from .stats import ConnectionStats

__all__ = ["ConnectionBase", "snapshot"]


def snapshot(core: FramedConnection, errors: int) -> ConnectionStats:
    """The counters of one connection, as ``conn.stats`` shows them."""
    return ConnectionStats(
        bytes_in=core.bytes_in,
        bytes_out=core.bytes_out,
        messages_in=core.messages_in,
        messages_out=core.messages_out,
        frames_in=core.frames_in,
        frames_out=core.frames_out,
        errors=errors,
        rtt=core.rtt,
    )


class _Runtime(Protocol):
    core: FramedConnection
    errors: int


class ConnectionBase:
    """Base of ``opensocket.Connection`` and ``opensocket.sync.Connection``."""

    def __init__(
        self, runtime: _Runtime, local: str, remote: str, *, read_timeout: float | None
    ) -> None:
        core = runtime.core
        agreement = core.agreement
        assert agreement is not None, "a connection object is made after the handshake"
        self._runtime = runtime
        self._core = core
        self.local_address = local
        self.remote_address = remote
        self.read_timeout = read_timeout  # used by recv() calls that give no timeout
        self.codec: Codec = get_codec(agreement.codec)
        self.peer_name = agreement.peer_name
        self._encode = self.codec.encode
        self._decode = self.codec.decode

    @property
    def closed(self) -> bool:
        """True once the connection has ended."""
        return self._core.state is State.CLOSED

    @property
    def close_code(self) -> int | None:
        """The close code once closed."""
        return self._core.close_code if self.closed else None

    @property
    def close_reason(self) -> str:
        """The close reason once closed."""
        return self._core.close_reason if self.closed else ""

    def _decode_item(self, item: bytes | Frame) -> Any:
        payload = item if isinstance(item, bytes) else item.payload
        try:
            return self.codec.loads(payload)
        except OpenSocketError:
            self._runtime.errors += 1
            raise

    def __repr__(self) -> str:
        state = self._core.state.value
        return f"<{type(self).__name__} {self.local_address} -> {self.remote_address} {state}>"
