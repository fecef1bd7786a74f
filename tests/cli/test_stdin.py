"""StdinSource: stdin read without blocking the loop, from pipes, files and replaced streams."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest

from opensocket.cli.pipe import StdinSource

BLOB = os.urandom(300_000)


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while chunk := await reader.read(4096):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_a_pipe_is_read_by_the_loop_and_left_blocking() -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as stdin:
        source = StdinSource(stdin)
        reader = await source.open()
        assert not os.get_blocking(read_fd)  # the loop watches it
        assert not source.is_terminal
        loop = asyncio.get_running_loop()
        writer = loop.run_in_executor(None, _write_and_close, write_fd, BLOB)
        try:
            assert await _read_all(reader) == BLOB
        finally:
            await writer
            source.close()
        assert os.get_blocking(read_fd)  # given back as the shell expects it


def _write_and_close(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as pipe:
        pipe.write(data)


async def test_a_regular_file_is_read_by_a_thread(tmp_path: Path) -> None:
    path = tmp_path / "input.bin"
    path.write_bytes(BLOB)
    with path.open("rb") as stdin:
        source = StdinSource(stdin)
        try:
            assert await _read_all(await source.open()) == BLOB
        finally:
            source.close()


async def test_a_replaced_stream_is_read_with_backpressure() -> None:
    """A small limit makes the reader pause and resume the feeding thread many times."""
    source = StdinSource(io.TextIOWrapper(io.BytesIO(BLOB)), limit=1024)
    reader = await source.open()
    try:
        chunks = []
        while chunk := await reader.read(1000):
            chunks.append(chunk)
            await asyncio.sleep(0)  # let the buffer fill up past the limit
        assert b"".join(chunks) == BLOB
    finally:
        source.close()


async def test_no_stdin_at_all_reads_as_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", None)
    source = StdinSource()
    try:
        assert await (await source.open()).read() == b""
        assert not source.is_terminal
    finally:
        source.close()
