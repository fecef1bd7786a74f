"""Logging helpers: every record about a connection names the peer."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

__all__ = ["PeerLogger", "logger"]

logger = logging.getLogger("opensocket")


class PeerLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes messages with the peer address and adds it as ``record.peer``."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Add the peer to the record."""
        peer = self.extra["peer"] if self.extra else "?"
        kwargs.setdefault("extra", {})["peer"] = peer
        return f"[{peer}] {msg}", kwargs


def peer_logger(name: str, peer: str) -> PeerLogger:
    """A logger for one connection."""
    return PeerLogger(logging.getLogger(f"opensocket.{name}"), {"peer": peer})


def safe_call(fn: Any, *args: Any) -> None:
    """Run a user hook; log and swallow what it raises."""
    if fn is None:
        return
    try:
        fn(*args)
    except Exception:
        logger.exception("hook %r raised", fn)
