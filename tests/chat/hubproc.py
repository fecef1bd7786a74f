"""Hub processes (``opensocket serve``) and redis-servers with options, for tests on loopback.

Every process is ours and is stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from .test_metrics import parse
from .test_redis_backplane import INSTALL, RedisServer

CLI = [sys.executable, "-c", "from opensocket.cli import run; run()"]
WAIT = 10.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago on 127.0.0.1."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class HubProcess:
    """``opensocket serve ... --json`` as a child process; ``info`` is its JSON banner."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}
        self.stderr = b""

    async def start(self) -> dict[str, Any]:
        """Start and read the banner (or the failure, if it exits instead)."""
        env = None if self.env is None else {**os.environ, **self.env}
        self.proc = proc = await asyncio.create_subprocess_exec(
            *CLI,
            "serve",
            *self.args,
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT):
            line = await proc.stdout.readline()
        self.info = json.loads(line) if line else {}
        if "event" not in self.info:  # it failed: a JSON error line (or nothing), then exit
            assert proc.stderr is not None
            async with asyncio.timeout(WAIT):
                self.stderr = await proc.stderr.read()
                await proc.wait()
        return self.info

    @property
    def native(self) -> str:
        return str(self.info["native"][0])

    @property
    def ws(self) -> str:
        return str(self.info["websocket"][0])

    @property
    def web_port(self) -> int:
        return int(self.info["page"].rsplit(":", 1)[1].strip("/"))

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal our child (by PID), wait for its exit code; ``stderr`` gets the rest."""
        proc = self.proc
        assert proc is not None
        if proc.returncode is None:
            proc.send_signal(sig)
        async with asyncio.timeout(WAIT):
            code = await proc.wait()
            if proc.stderr is not None:
                self.stderr += await proc.stderr.read()
        return code

    async def kill(self) -> None:
        """Cleanup: kill our child if it still runs."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


async def metrics(port: int) -> dict[tuple[str, str], float]:
    """The samples of ``/metrics`` on a hub's web port."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(WAIT):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    return parse(body)[1]


async def wait_backplane_up(*hubs: HubProcess) -> None:
    """Poll each hub's metrics (bounded: another process has no event to wait on)."""
    for hub in hubs:
        for _ in range(100):
            if (await metrics(hub.web_port))[("opensocket_chat_backplane_up", "")] == 1:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the hub {hub.info['node']} never reached Redis")


class OptionRedis(RedisServer):
    """A redis-server of our own started with extra options (``requirepass``, TLS ports)."""

    def __init__(self, port: int, directory: Path, *extra: str) -> None:
        super().__init__(port, directory)
        self.extra = extra

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(INSTALL)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        args += ["no", "--dir", str(self.directory), *self.extra]
        self.proc = proc = await asyncio.create_subprocess_exec(
            binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT):
            while True:
                line = await proc.stdout.readline()
                self.output.append(line)
                if not line:
                    raise AssertionError(f"redis-server exited: {b''.join(self.output)!r}")
                if b"Ready to accept connections" in line:
                    break
        self._drain = asyncio.create_task(self._read_rest(proc.stdout))
