"""Fixtures for the blocking messaging sockets: leak checks and helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from opensocket.messaging import BackoffOptions
from opensocket.sync.messaging import Socket
from tests.sync.conftest import no_leaks

__all__ = ["FAST", "LOCAL", "closing", "no_leaks", "settle"]

FAST = BackoffOptions(base=0.02, max_delay=0.1)
LOCAL = "tcp://127.0.0.1:0"


@contextlib.contextmanager
def closing(*socks: Socket, linger: float = 0.5) -> Iterator[None]:
    """Close every socket on the way out, even when the test failed."""
    try:
        yield
    finally:
        for sock in socks:
            sock.close(linger=linger)


def settle(sock: Socket, condition: object, within: float = 5.0) -> None:
    """Wait (event-driven: each change of ``sock``) until ``condition()`` holds."""
    assert callable(condition)
    assert sock.wait_for(condition, within), "condition not met in time"


@pytest.fixture(autouse=True)
def _leaks(no_leaks: None) -> None:
    """Every test here must leave no thread or file descriptor behind."""
