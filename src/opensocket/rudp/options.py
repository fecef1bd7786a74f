"""Options of the reliable-UDP transport."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from ..errors import ConfigError

__all__ = ["DEFAULT_CHANNELS", "ChannelKind", "RudpOptions"]

MIN_DATAGRAM: Final = 576
MAX_DATAGRAM: Final = 65507
MAX_FRAGMENTS: Final = 0xFFFF


class ChannelKind(IntEnum):
    """How a channel delivers: the byte that names it in the handshake."""

    UNRELIABLE_SEQUENCED = 1  # newest wins: a message older than one delivered is dropped
    RELIABLE_ORDERED = 2  # every message once, in send order
    RELIABLE_UNORDERED = 3  # every message once, as soon as it is complete

    @classmethod
    def parse(cls, value: ChannelKind | str | int) -> ChannelKind:
        """A ChannelKind from itself, its number, or a name like ``"reliable-ordered"``."""
        if isinstance(value, str):
            try:
                return cls[value.upper().replace("-", "_")]
            except KeyError:
                names = ", ".join(k.name.lower().replace("_", "-") for k in cls)
                raise ConfigError(f"unknown channel kind {value!r}: use one of {names}")
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"unknown channel kind {value!r}")


DEFAULT_CHANNELS: Final = (
    ChannelKind.RELIABLE_ORDERED,
    ChannelKind.UNRELIABLE_SEQUENCED,
    ChannelKind.RELIABLE_UNORDERED,
)


@dataclass(frozen=True, slots=True)
class RudpOptions:
    """Settings of a reliable-UDP endpoint; both sides must list the same ``channels``.

    ``max_datagram`` is the largest UDP payload we send (1200 is safe on the Internet);
    ``max_message`` the largest message after reassembly. ``receive_window`` bounds what the
    peer may have outstanding towards us in reliable bytes not yet taken by the application
    (flow control); ``send_buffer`` bounds what ``send`` queues before it refuses.
    ``secret`` (>= 16 bytes, both sides) turns on the authenticated handshake and AEAD on every
    datagram; without it every datagram carries a CRC-32C. ``congestion`` is "bbr" (a model of
    the path: keeps its rate under random loss), "newreno" (halves on loss) or "none" (a fixed
    window). ``redundancy`` (0-3) sends that many extra copies of every reliable message of at
    most 512 bytes, a few milliseconds apart (srtt/8, 1-5 ms), until one is acknowledged: a
    lost small message then costs milliseconds instead of a round trip (a latency mode for
    game events and chat; bulk data is never copied). Times are in seconds.
    """

    max_datagram: int = 1200
    max_message: int = 1024 * 1024
    channels: tuple[ChannelKind, ...] = DEFAULT_CHANNELS
    idle_timeout: float = 30.0
    keepalive_interval: float | None = 5.0
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    initial_rtt: float = 0.1
    min_rto: float = 0.2
    max_rto: float = 10.0
    max_ack_delay: float = 0.005
    max_retransmits: int = 8
    receive_window: int = 4 * 1024 * 1024
    send_buffer: int = 8 * 1024 * 1024
    secret: bytes | None = None
    congestion: str = "bbr"
    cookie_lifetime: float = 30.0
    redundancy: int = 0

    def __post_init__(self) -> None:
        if not MIN_DATAGRAM <= self.max_datagram <= MAX_DATAGRAM:
            raise ConfigError(
                f"max_datagram must be between {MIN_DATAGRAM} and {MAX_DATAGRAM} bytes "
                f"(got {self.max_datagram}); 1200 is safe on the Internet"
            )
        if not 1 <= self.max_message <= 256 * 1024 * 1024:
            raise ConfigError("max_message must be between 1 byte and 256 MiB")
        if self.max_message > MAX_FRAGMENTS * (self.max_datagram - 64):
            raise ConfigError("max_message needs more than 65535 fragments: raise max_datagram")
        kinds = tuple(ChannelKind.parse(k) for k in self.channels)
        if not 1 <= len(kinds) <= 255:
            raise ConfigError("between 1 and 255 channels are required")
        object.__setattr__(self, "channels", kinds)
        self._check_times()
        if self.max_retransmits < 1:
            raise ConfigError("max_retransmits must be at least 1")
        if self.receive_window < self.max_message:
            raise ConfigError("receive_window must hold at least one max_message")
        if self.send_buffer < self.max_message:
            raise ConfigError("send_buffer must hold at least one max_message")
        if self.secret is not None and len(self.secret) < 16:
            raise ConfigError("a shared secret must be at least 16 bytes long")
        if not 0 <= self.redundancy <= 3:
            raise ConfigError("redundancy must be between 0 and 3 extra copies")
        if self.congestion not in ("newreno", "bbr", "none"):
            raise ConfigError(
                f"unknown congestion controller {self.congestion!r}: use newreno, bbr or none"
            )

    def _check_times(self) -> None:
        for name in ("idle_timeout", "handshake_timeout", "close_timeout", "initial_rtt"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.keepalive_interval is not None and self.keepalive_interval <= 0:
            raise ConfigError("keepalive_interval must be positive or None (off)")
        if not 0 < self.min_rto <= self.max_rto:
            raise ConfigError("min_rto must be positive and at most max_rto")
        if not 0 <= self.max_ack_delay < self.min_rto:
            raise ConfigError("max_ack_delay must be at least 0 and below min_rto")
        if self.cookie_lifetime <= 0:
            raise ConfigError("cookie_lifetime must be positive")
