"""Server processes of bench/chat.py: the opensocket hub and the python-socketio reference.

Each is a subprocess that prints one JSON line with its addresses; it inherits the raised
RLIMIT_NOFILE of the benchmark, logs to a file, and is stopped by its own PID (SIGTERM, then
SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import psutil

from _harness import BenchError

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 20.0


class Running:
    """A server subprocess and the ports it announced."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, native: int, web: int) -> None:
        self.proc = proc
        self.logfile = log
        self.native_port = native
        self.web_port = web
        self.ps = psutil.Process(proc.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU the server used so far."""
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss_kib(self) -> int:
        """Resident memory in KiB."""
        return int(self.ps.memory_info().rss // 1024)

    def fd_count(self) -> int:
        """Open file descriptors."""
        return int(self.ps.num_fds())

    def nofile(self) -> int:
        """The server's own RLIMIT_NOFILE soft limit (as the kernel sees it)."""
        return int(self.ps.rlimit(psutil.RLIMIT_NOFILE)[0])

    def signal(self, sig: int) -> None:
        """Send a signal to this server (its own PID)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def log_tail(self, lines: int = 8) -> list[str]:
        """The last lines the server logged (stderr)."""
        try:
            return self.logfile.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    def stop(self) -> None:
        """SIGTERM (the hub closes its clients), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _first_json(proc: subprocess.Popen[bytes], stdout: IO[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stdout], [], [], 0.2)
        if ready:
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            for line in buf.splitlines():
                if line.startswith(b"{"):
                    return dict(json.loads(line))
        elif proc.poll() is not None:
            break
    proc.kill()
    proc.wait(5.0)
    tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
    raise BenchError(f"server did not announce its address: {tail}")


def _spawn(cmd: list[str], log: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    return proc, _first_json(proc, proc.stdout, log)


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def start_hub(tmp: Path, max_conns: int, profile: str | None) -> Running:
    """The hub (bench/_chat_hub.py: serve_chat on uvloop), limits opened up for the benchmark."""
    prof = ["--profile", profile] if profile else []
    cmd = [sys.executable, str(HERE / "_chat_hub.py"), "--max-conns", str(max_conns), *prof]
    log = tmp / "hub.log"
    proc, info = _spawn(cmd, log)
    return Running(proc, log, _port(info["native"][0]), _port(info["web"][0]))


def start_sio(tmp: Path) -> Running:
    """The python-socketio server (bench/_chat_sio.py)."""
    log = tmp / "socketio.log"
    proc, info = _spawn([sys.executable, str(HERE / "_chat_sio.py"), "--port", "0"], log)
    return Running(proc, log, 0, int(info["port"]))
