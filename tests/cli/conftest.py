"""Run ``opensocket`` as real subprocesses: bounded waits, only our own PIDs are signalled."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import IO, Any

import pytest

CLI = [sys.executable, "-c", "from opensocket.cli import run; run()"]
WAIT = 10.0  # upper bound for any single wait on a child process


def tool(name: str) -> str:
    """Path of a peer tool (socat, nc): a missing tool fails the test, CI installs it."""
    path = shutil.which(name)
    assert path is not None, f"{name} is required by the CLI tests (apt-get install {name})"
    return path


def run_cli(
    *args: str, input: bytes = b"", timeout: float = WAIT
) -> subprocess.CompletedProcess[bytes]:
    """Run one command to completion (killed if it outlives ``timeout``)."""
    return subprocess.run([*CLI, *args], input=input, capture_output=True, timeout=timeout)


def socat_echo(spawn: Any, address: str) -> Proc:
    """socat echoing one connection (PIPE), once it reports that it listens."""
    socat: Proc = spawn(tool("socat"), "-d", "-d", address, "PIPE", cli=False)
    socat.expect("listening on", which="err")
    return socat


class Proc:
    """A child process whose output lines are collected by reader threads."""

    def __init__(self, argv: list[str], stdin: bytes | None = None) -> None:
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: dict[str, queue.Queue[bytes]] = {"out": queue.Queue(), "err": queue.Queue()}
        self.seen: dict[str, list[bytes]] = {"out": [], "err": []}
        assert self.popen.stdout is not None
        assert self.popen.stderr is not None
        for name, pipe in (("out", self.popen.stdout), ("err", self.popen.stderr)):
            threading.Thread(target=self._pump, args=(name, pipe), daemon=True).start()
        if stdin is not None:
            assert self.popen.stdin is not None
            self.popen.stdin.write(stdin)
            self.popen.stdin.close()

    def _pump(self, name: str, pipe: IO[bytes]) -> None:
        try:
            for line in iter(pipe.readline, b""):
                self.lines[name].put(line)
        except (ValueError, OSError):
            pass  # the pipe was closed under us at teardown: the stream has ended
        self.lines[name].put(b"")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def line(self, which: str = "out", timeout: float = WAIT) -> str:
        """The next line of stdout (or stderr); fails if none comes in time."""
        try:
            raw = self.lines[which].get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line on std{which} within {timeout}s: {self.seen}") from None
        assert raw, f"std{which} ended early; exit code {self.popen.poll()}; seen {self.seen}"
        self.seen[which].append(raw)
        return raw.decode()

    def expect(self, pattern: str, which: str = "out", lines: int = 20) -> re.Match[str]:
        """Read lines until one matches ``pattern`` (at most ``lines`` lines)."""
        for _ in range(lines):
            found = re.search(pattern, self.line(which))
            if found:
                return found
        raise AssertionError(f"{pattern!r} not in std{which}: {self.seen[which]}")

    def json_line(self) -> dict[str, Any]:
        """The next stdout line, parsed as JSON."""
        data: dict[str, Any] = json.loads(self.line())
        return data

    def rest_bytes(self, which: str = "out") -> bytes:
        """Everything left on a stream, up to its end (the process closes it at exit)."""
        chunks: list[bytes] = []
        while True:
            raw = self.lines[which].get(timeout=WAIT)
            if not raw:
                return b"".join(chunks)
            chunks.append(raw)

    def rest(self, which: str = "out") -> str:
        """Everything left on a stream, decoded."""
        return self.rest_bytes(which).decode()

    def stop(self, sig: int = signal.SIGINT, timeout: float = WAIT) -> int:
        """Signal our child (by PID) and wait for its exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.popen.wait(timeout=timeout)

    def wait(self, timeout: float = WAIT) -> int:
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        """Cleanup: kill our child if it still runs."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=WAIT)
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start processes; every one is killed (by PID) at the end of the test."""
    procs: list[Proc] = []

    def start(*args: str, stdin: bytes | None = None, cli: bool = True) -> Proc:
        proc = Proc([*CLI, *args] if cli else list(args), stdin)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()


class EchoServers:
    """One framed echo server on TCP, UDP and a Unix socket, shared by a test module."""

    def __init__(self, proc: Proc, info: dict[str, Any]) -> None:
        self.proc = proc
        self.info = info
        self.urls = {url.split("://")[0]: url for url in info["addresses"]}


def _unix_path() -> str:
    return f"/tmp/os-cli-{os.getpid()}-{uuid.uuid4().hex[:8]}.sock"


@pytest.fixture(scope="module")
def echo_servers() -> Iterator[EchoServers]:
    """``opensocket echo serve`` on tcp, udp and unix addresses (port 0), for the module."""
    path = _unix_path()
    proc = Proc(
        [
            *CLI,
            "echo",
            "serve",
            "tcp://127.0.0.1:0",
            "udp://127.0.0.1:0",
            f"unix://{path}",
            "--json",
        ]
    )
    try:
        yield EchoServers(proc, proc.json_line())
        assert proc.stop() == 0
    finally:
        proc.kill()
        if os.path.exists(path):
            os.unlink(path)
