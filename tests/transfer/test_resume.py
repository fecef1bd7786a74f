"""Interrupted transfers resume: kill -9 of either side, a cut connection, a changed source."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from opensocket.proxy import BackgroundProxy
from opensocket.transfer.protocol import BLOCK

from .conftest import Side, cli, run, start, summary

LISTEN = "tcp://127.0.0.1:0"
SIZE = 48 << 20
PART = ".big.bin.opensocket-part"


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(SIZE))
    return src


def _wait_for_part(part: Path, at_least: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if part.exists() and part.stat().st_size >= at_least:
            return
        time.sleep(0.02)  # polling a file another process writes: no event to wait on
    raise AssertionError(f"the partial file never reached {at_least} bytes")


def _complete(src: Path, dest: Path, sides: list[Side]) -> dict[str, object]:
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest), "--json")
    sides.append(side)
    sent = run("send", "--no-code", "--json", str(src), side.url)
    assert sent.returncode == 0, sent.stderr
    rc, _, err = side.finish()
    assert rc == 0, err
    assert (dest / "big.bin").read_bytes() == src.read_bytes()
    assert sorted(os.listdir(dest)) == ["big.bin"]
    return summary(sent.stdout)


def _check_resumed(result: dict[str, object], arrived: int) -> None:
    resumed = int(result["resumed_bytes"])  # type: ignore[call-overload]
    assert resumed >= arrived - arrived % BLOCK  # nothing that had arrived whole is sent again
    assert int(result["data_bytes"]) == SIZE - resumed  # type: ignore[call-overload]
    assert result["files"] == [
        {"path": "big.bin", "status": "ok", "size": SIZE, "resumed_from": resumed}
    ]


def test_kill_sender_then_resume(tmp_path: Path, sides: list[Side]) -> None:
    src, dest = _source(tmp_path), tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest))
    sides.append(side)
    sender = subprocess.Popen(
        cli("send", "--no-code", "--rate-limit", "8M", str(src), side.url), text=True
    )
    try:
        _wait_for_part(dest / PART, 12 << 20, sender)
        os.kill(sender.pid, signal.SIGKILL)
    finally:
        sender.wait()
    rc, _, err = side.finish()
    kept = f"the partial file {dest / PART} is kept: run the same command again to resume"
    assert rc == 1 and kept in err  # with its folder: a dot-file is hard to find otherwise
    assert not (dest / "big.bin").exists()
    arrived = (dest / PART).stat().st_size
    _check_resumed(_complete(src, dest, sides), arrived)


def test_kill_receiver_then_resume(tmp_path: Path, sides: list[Side]) -> None:
    src, dest = _source(tmp_path), tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest))
    sides.append(side)
    sender = subprocess.Popen(
        cli("send", "--no-code", "--rate-limit", "8M", str(src), side.url),
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_part(dest / PART, 12 << 20, side.proc)
    os.kill(side.proc.pid, signal.SIGKILL)
    side.finish()
    _, err = sender.communicate(timeout=30)
    assert sender.returncode == 1 and "the receiver (tcp://127.0.0.1:" in err
    arrived = (dest / PART).stat().st_size
    _check_resumed(_complete(src, dest, sides), arrived)


def test_cut_connection_then_resume(
    tmp_path: Path, sides: list[Side], fault_proxy: Callable[..., BackgroundProxy]
) -> None:
    src, dest = _source(tmp_path), tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest))
    sides.append(side)
    proxy = fault_proxy(side.url)  # the opensocket.testing plugin's fixture
    proxy.reset_after(nbytes=20 << 20, direction="up")
    sent = run("send", "--no-code", str(src), proxy.url)
    proxy.close()
    assert sent.returncode == 1
    rc, _, err = side.finish()
    assert rc == 1 and "is kept" in err
    arrived = (dest / PART).stat().st_size
    assert arrived >= 16 << 20
    _check_resumed(_complete(src, dest, sides), arrived)


def test_changed_source_restarts(
    tmp_path: Path, sides: list[Side], fault_proxy: Callable[..., BackgroundProxy]
) -> None:
    src, dest = _source(tmp_path), tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest))
    sides.append(side)
    proxy = fault_proxy(side.url)  # the opensocket.testing plugin's fixture
    proxy.reset_after(nbytes=10 << 20, direction="up")
    assert run("send", "--no-code", str(src), proxy.url).returncode == 1
    proxy.close()
    side.finish()
    assert (dest / PART).stat().st_size > 0
    before = src.stat()
    with open(src, "r+b") as handle:  # same size and mtime, new content at the start
        handle.write(b"changed!")
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))  # only the prefix hash can tell
    result = _complete(src, dest, sides)
    assert result["resumed_bytes"] == 0 and result["data_bytes"] == SIZE
