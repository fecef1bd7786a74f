"""Helpers for transfer tests: CLI processes on loopback, file trees, comparisons."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STARTUP = float(os.environ.get("OPENSOCKET_TEST_TIMEOUT", "20"))


@dataclass
class Side:
    """A running ``opensocket send/receive --listen`` process and what it announced."""

    proc: subprocess.Popen[str]
    url: str
    code: str | None
    seen: list[str]
    lines: queue.SimpleQueue[str]
    reader: threading.Thread

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        """Wait for the exit; return (code, stdout, stderr)."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(timeout)
        self.reader.join(timeout)
        while True:
            line = self.lines.get()
            if not line:
                break
            self.seen.append(line)
        self.proc.stdout.close()
        return self.proc.returncode, out, "".join(self.seen)


def cli(*args: str) -> list[str]:
    """The command line of ``opensocket ARGS`` in a fresh interpreter."""
    return [sys.executable, "-m", "opensocket", *args]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``opensocket ARGS`` to the end."""
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout)


def start(*args: str) -> Side:
    """Start a listening side; wait until it prints its address (and code)."""
    proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    seen: list[str] = []
    reader = threading.Thread(target=_pump, args=(proc.stderr, lines), daemon=True)
    reader.start()
    url = code = None
    listen = args[args.index("--listen") + 1]
    expect_code = listen.startswith("tcp") and "--code" not in args and "--no-code" not in args
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline and not (url and (code or not expect_code)):
        try:
            line = lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        if not line:
            break
        seen.append(line)
        if line.startswith("listening on "):
            url = line.split()[2]
        elif line.startswith("code: "):
            code = line.split()[1]
    if url is None:
        proc.kill()
        proc.wait()
        raise AssertionError(f"no 'listening on' line: {''.join(seen)}")
    return Side(proc, url, code, seen, lines, reader)


def _pump(stream: Any, lines: queue.SimpleQueue[str]) -> None:
    for line in stream:
        lines.put(line)
    lines.put("")


@pytest.fixture
def sides() -> Iterator[list[Side]]:
    """Listening sides started by a test; killed (by PID) if still running at the end."""
    started: list[Side] = []
    yield started
    for side in started:
        if side.proc.poll() is None:
            side.proc.kill()
            side.proc.wait()
        for stream in (side.proc.stdout, side.proc.stderr):
            if stream is not None:
                stream.close()


def summary(stdout: str) -> dict[str, Any]:
    """The --json summary (the last line of stdout)."""
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def make_tree(root: Path, files: int = 200) -> Path:
    """A folder of many small files in nested folders, an empty folder, unicode names."""
    top = root / "tree"
    for i in range(files):
        sub = top / f"d{i % 7}" / f"e{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.txt").write_bytes(os.urandom(i * 37 % 5000))
    (top / "empty" / "deeper").mkdir(parents=True)
    (top / "ünïcødé 文件.txt").write_text("héllo wörld\n")
    (top / "d0" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(top / "d0" / "script.sh", 0o750)
    os.chmod(top / "d1", 0o711)
    os.utime(top / "d0" / "script.sh", ns=(1_000_000_000_123_456_789, 1_000_000_000_123_456_789))
    return top


def assert_same_tree(src: Path, dst: Path) -> None:
    """Same names, kinds, bytes, permission bits and mtimes (files and folders)."""
    left = sorted(p.relative_to(src) for p in src.rglob("*"))
    right = sorted(p.relative_to(dst) for p in dst.rglob("*"))
    assert left == right
    for rel in [Path("."), *left]:
        a, b = src / rel, dst / rel
        sa, sb = a.lstat(), b.lstat()
        assert (sa.st_mode, sa.st_mtime_ns) == (sb.st_mode, sb.st_mtime_ns), rel
        if a.is_file():
            assert sa.st_size == sb.st_size, rel
            assert a.read_bytes() == b.read_bytes(), rel
