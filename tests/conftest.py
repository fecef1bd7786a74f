"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest


def fd_count() -> int:
    """Open file descriptors of this process (for leak checks)."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[str]:
    """A short path for a Unix socket (sun_path holds 107 bytes)."""
    path = Path("/tmp") / f"os-{os.getpid()}-{tmp_path.name[-20:]}.sock"
    yield str(path)
    path.unlink(missing_ok=True)


def has_ipv6() -> bool:
    """True when ::1 can be bound."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False
