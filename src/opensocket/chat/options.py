"""Settings of the chat hub (limits, passwords, history), validated once."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ChatOptions"]


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """What the hub allows.

    ``rate``/``burst`` are the per-user token bucket (every command but ``quit`` costs one
    token, invalid input too). ``hello_timeout`` closes a client that has not registered by
    then. ``history`` is how many messages a room keeps and replays to whoever joins.
    ``password`` is the optional server password asked in ``hello``; ``operator_token``
    enables ``kick``/``ban``/``unban`` (None: no operator commands at all).
    """

    server_name: str = "opensocket"
    motd: str = ""
    max_message_length: int = 2000
    max_command_bytes: int = 16 * 1024
    max_nick_length: int = 24
    max_room_length: int = 32
    max_topic_length: int = 300
    max_rooms_per_user: int = 20
    max_rooms: int = 10_000
    max_idle_rooms: int = 1_000
    history: int = 50
    rate: float = 5.0
    burst: int = 30
    hello_timeout: float | None = 30.0
    password: str | None = None
    operator_token: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_message_length",
            "max_nick_length",
            "max_room_length",
            "max_topic_length",
            "max_rooms_per_user",
            "max_rooms",
            "burst",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"chat option {name} must be at least 1")
        if self.history < 0 or self.max_idle_rooms < 0:
            raise ConfigError("chat options history and max_idle_rooms must be 0 or more")
        if self.hello_timeout is not None and self.hello_timeout <= 0:
            raise ConfigError("hello_timeout must be positive or None")
        if self.rate <= 0:
            raise ConfigError(f"chat message rate must be positive (got {self.rate!r})")
        least = self.max_message_length * 6 + 1024  # every character JSON-escaped as \uXXXX
        if self.max_command_bytes < least:
            raise ConfigError(
                "max_command_bytes must leave room for a full message: at least "
                f"max_message_length * 6 + 1024 = {least}"
            )
        if self.operator_token is not None and len(self.operator_token) < 8:
            raise ConfigError("the operator token must be at least 8 characters long")
