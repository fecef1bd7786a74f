"""A new user's review: Ctrl-C is reported (with the resume hint), the hint after a wildcard
bind names a usable address, skipped symlinks are counted, the sender's progress follows what
was sent (not what was read ahead)."""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from opensocket.address import parse_address
from opensocket.cli import main
from opensocket.cli._common import reachable_addresses
from opensocket.transfer import FileResult, Options, TransferSummary, scan
from opensocket.transfer._link import open_link
from opensocket.transfer._sender import _Sender
from opensocket.transfer.protocol import BLOCK

from .conftest import Side, cli, start, summary
from .test_hostile import Receiver
from .test_usability import _wait_for_size

LISTEN = "tcp://127.0.0.1:0"
RESUME = "run the same command again to resume"


def _line(side: Side, pattern: str, timeout: float = 10) -> re.Match[str]:
    """The next stderr line of ``side`` matching ``pattern``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = side.lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        side.seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"{pattern!r} not in {''.join(side.seen)}")


# ---- Ctrl-C ------------------------------------------------------------------------------------


def test_ctrl_c_while_waiting_for_a_sender(tmp_path: Path, sides: list[Side]) -> None:
    side = start("receive", "--listen", LISTEN, "--json", "--dir", str(tmp_path / "d"))
    sides.append(side)
    side.proc.send_signal(signal.SIGINT)
    code, out, err = side.finish()
    assert code == 130
    assert json.loads(out) == {"error": "interrupted", "exit": 130}
    assert err.splitlines()[-1] == "opensocket receive: interrupted"  # nothing began: no hint


def test_ctrl_c_on_send_says_how_to_resume(tmp_path: Path, sides: list[Side]) -> None:
    (tmp_path / "f.txt").write_text("f")
    side = start("send", "--listen", LISTEN, "--no-code", str(tmp_path / "f.txt"))
    sides.append(side)
    side.proc.send_signal(signal.SIGINT)
    code, out, err = side.finish()
    assert code == 130 and out == ""
    assert err.splitlines()[-1] == f"opensocket send: interrupted: {RESUME}"


def test_ctrl_c_mid_transfer_on_receive_says_how_to_resume(
    tmp_path: Path, sides: list[Side]
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(8 << 20))
    dest = tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest))
    sides.append(side)
    sender = subprocess.Popen(
        cli("send", "--no-code", "--rate-limit", "4M", str(src), side.url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_size(dest / ".big.bin.opensocket-part", 1 << 20, side.proc)
        side.proc.send_signal(signal.SIGINT)
        code, _, err = side.finish()
    finally:
        sender.kill()
        sender.wait(10)
    assert code == 130
    assert err.splitlines()[-1] == f"opensocket receive: interrupted: {RESUME}"


# ---- the hint after a wildcard bind -------------------------------------------------------------


@pytest.mark.parametrize("listen", ["tcp://0.0.0.0:0", "tcp://*:0"])
def test_wildcard_listen_hint_names_a_usable_address(
    tmp_path: Path, sides: list[Side], listen: str
) -> None:
    side = start("receive", "--listen", listen, "--dir", str(tmp_path / "d"))
    sides.append(side)
    port = side.url.rsplit(":", 1)[1]
    hint = _line(side, r"on the other side run: opensocket send PATH\.\.\. (\S+) --code (\S+)")
    url, code = hint.groups()
    assert code == side.code
    expected = reachable_addresses(parse_address(listen).with_port(int(port)))
    assert url == str(expected[0])
    if len(expected) > 1:
        also = _line(side, r"^  \(this machine is also at (.*)\)$").group(1)
        assert also.split(", ")[0] == str(expected[1])
    host, hint_port = url.removeprefix("tcp://").rsplit(":", 1)
    assert hint_port == port
    assert host.strip("[]") not in ("0.0.0.0", "::", "*")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return  # no interface address: the hostname stands in
    assert not ip.is_loopback and not ip.is_unspecified
    if listen.startswith("tcp://0.0.0.0"):
        assert ip.version == 4


# ---- skipped symlinks -------------------------------------------------------------------------


def test_skipped_symlinks_are_counted_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    top = tmp_path / "tx2"
    top.mkdir()
    (top / "real.txt").write_text("r")
    (top / "lnk").symlink_to(top / "real.txt")
    rx = Receiver(tmp_path / "dest")
    code = main(["send", "--no-code", "--json", str(top), str(rx.url)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert isinstance(rx.wait(), TransferSummary)
    doc = summary(out)
    assert (doc["files_ok"], doc["files_skipped"]) == (1, 1)
    skipped = {"path": "tx2/lnk", "status": "skipped", "size": 0}
    assert {**skipped, "error": "symlinks are not sent"} in doc["files"]
    assert "1 skipped (symlinks are not sent)" in err


def test_scan_lists_what_it_skipped(tmp_path: Path) -> None:
    top = tmp_path / "top"
    top.mkdir()
    (top / "real.txt").write_text("r")
    (top / "link.txt").symlink_to(top / "real.txt")
    os.mkfifo(top / "pipe")
    warnings: list[str] = []
    skipped: list[FileResult] = []
    sources = scan([str(top)], warnings.append, skipped)
    assert [s.entry.path for s in sources] == ["top", "top/real.txt"]
    assert [(f.path, f.status, f.error) for f in skipped] == [
        ("top/link.txt", "skipped", "symlinks are not sent"),
        ("top/pipe", "skipped", "not a regular file or folder"),
    ]
    assert len(warnings) == 2


# ---- the sender's progress ---------------------------------------------------------------------


class Watch:
    """A Progress that notes, at every advance, how far it ran ahead of the bytes sent."""

    def __init__(self) -> None:
        self.sender: _Sender | None = None
        self.total = 0
        self.ahead: list[int] = []
        self.threads: set[str] = set()

    def start(self, files: int, total: int) -> None:
        """Nothing to note."""

    def file(self, name: str, size: int, done: int) -> None:
        self.total += done

    def advance(self, count: int) -> None:
        assert self.sender is not None
        self.total += count
        self.ahead.append(self.total - self.sender.summary.data_bytes)
        self.threads.add(threading.current_thread().name)

    def file_done(self, name: str, ok: bool) -> None:
        """Nothing to note."""


def _send_watched(tmp_path: Path, src: Path) -> Watch:
    rx = Receiver(tmp_path / "dest")
    assert rx.url is not None
    link = open_link(rx.url, listen=False, timeout=10)
    watch = Watch()
    # paced: the reader thread has all the time it needs to read its blocks ahead
    sender = _Sender(link, scan([str(src)]), Options(rate_limit=32 * BLOCK), watch)
    watch.sender = sender
    try:
        sender.run()
    finally:
        sender.stop()
        link.close()
    assert isinstance(rx.wait(), TransferSummary)
    assert watch.threads == {threading.current_thread().name}  # the sending thread, not the reader
    assert watch.total == src.stat().st_size
    return watch


def test_sender_progress_never_runs_ahead_of_what_was_sent(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(4 * BLOCK + 123))
    watch = _send_watched(tmp_path, src)
    assert len(watch.ahead) == 5 and max(watch.ahead) == 0


def test_sender_progress_counts_holes_in_order(tmp_path: Path) -> None:
    src = tmp_path / "sparse.bin"
    with open(src, "wb") as handle:
        handle.write(os.urandom(BLOCK))
        handle.truncate(6 * BLOCK)  # a hole of 5 blocks after the data
    watch = _send_watched(tmp_path, src)
    # the data block was sent before the hole after it was counted
    assert watch.ahead[0] == 0
