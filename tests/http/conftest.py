"""A site on disk and a running web server over loopback."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from opensocket.http import HttpLimits, HttpServer, serve_http

BIG_SIZE = 8 * 1024 * 1024
LIMITS = HttpLimits(head_timeout=0.5, keepalive_timeout=0.5, chunk_size=256 * 1024)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "docs").mkdir(parents=True)
    (root / "hello.txt").write_bytes(b"hello, world\n")
    (root / "docs" / "a&b.txt").write_text("ab")
    (root / ".env").write_text("SECRET")
    (tmp_path / "outside.txt").write_text("OUTSIDE")
    (root / "link-out").symlink_to(tmp_path / "outside.txt")
    # deterministic, not compressible by accident, written once per test
    block = hashlib.sha256(b"opensocket").digest() * 2048
    (root / "big.bin").write_bytes(block * (BIG_SIZE // len(block)))
    return root


@pytest.fixture
async def server(site: Path) -> AsyncIterator[HttpServer]:
    srv = await serve_http("127.0.0.1:0", site, limits=LIMITS)
    try:
        yield srv
    finally:
        await srv.close(1.0)


async def run(*argv: str, timeout: float = 10.0) -> tuple[int, bytes, bytes]:
    """Run a command (curl) without blocking the server's loop."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read(-1)
    finally:
        writer.close()
        await writer.wait_closed()


def status_of(response: bytes) -> int:
    """The status code of the first response in ``response``."""
    return int(response.split(b" ", 2)[1])
