"""Upstream servers for the proxy tests: a recording echo over TCP and over UDP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ..cli.conftest import echo_servers, spawn  # noqa: F401 (fixtures shared with the CLI tests)


@dataclass
class Recorder:
    """What an upstream received; ``url`` is where it listens."""

    url: str = ""
    received: bytearray = field(default_factory=bytearray)
    datagrams: list[bytes] = field(default_factory=list)
    connections: int = 0
    eofs: int = 0
    resets: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, nbytes: int, timeout: float = 5.0) -> None:
        """Until at least ``nbytes`` (stream) arrived."""
        async with asyncio.timeout(timeout):
            while len(self.received) < nbytes:
                self.changed.clear()
                await self.changed.wait()

    async def wait_ended(self, count: int = 1, timeout: float = 5.0) -> None:
        """Until ``count`` connections ended, by EOF or reset."""
        async with asyncio.timeout(timeout):
            while self.eofs + self.resets < count:
                self.changed.clear()
                await self.changed.wait()

    async def wait_datagrams(self, count: int, timeout: float = 5.0) -> None:
        """Until at least ``count`` datagrams arrived."""
        async with asyncio.timeout(timeout):
            while len(self.datagrams) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def tcp_echo() -> AsyncIterator[Recorder]:
    """A TCP echo server that records what it receives (and answers EOF with EOF)."""
    rec = Recorder()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec.connections += 1
        writers.append(writer)
        try:
            while data := await reader.read(65536):
                rec.received += data
                rec.changed.set()
                writer.write(data)
                await writer.drain()
            rec.eofs += 1
        except ConnectionResetError:
            rec.resets += 1
        except OSError:
            pass
        rec.changed.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    rec.url = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield rec
    server.close()
    for writer in writers:
        writer.close()
    await server.wait_closed()


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # bursts wait, not drop
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.rec.datagrams.append(data)
        self.rec.changed.set()
        self.transport.sendto(data, addr)


@pytest.fixture
async def udp_echo() -> AsyncIterator[Recorder]:
    """A UDP echo server that records every datagram."""
    rec = Recorder()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpEcho(rec), local_addr=("127.0.0.1", 0)
    )
    rec.url = f"udp://127.0.0.1:{transport.get_extra_info('sockname')[1]}"
    yield rec
    transport.close()


async def open_client(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TCP (or Unix) client connection to a proxy URL."""
    if url.startswith("unix://"):
        return await asyncio.open_unix_connection(url[len("unix://") :])
    host, port = url[len("tcp://") :].rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def read_all(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[bytes, str]:
    """Read until EOF or reset: the bytes and how it ended (``eof`` or ``reset``)."""
    got = bytearray()
    async with asyncio.timeout(timeout):
        try:
            while data := await reader.read(65536):
                got += data
        except ConnectionResetError:
            return bytes(got), "reset"
    return bytes(got), "eof"
