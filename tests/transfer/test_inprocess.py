"""The CLI and the library in-process (threads): options, progress, skipped kinds, the API."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from opensocket.address import Address
from opensocket.cli import main
from opensocket.transfer import Options, TransferSummary, scan, send

from .conftest import assert_same_tree, make_tree, summary
from .test_hostile import Receiver


class Sender:
    """``send(listen=True)`` on a thread."""

    def __init__(self, paths: list[str], **options: Any) -> None:
        self.ready = threading.Event()
        self.url: Address | None = None
        self.result: TransferSummary | BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(paths, Options(**options)))
        self.thread.start()
        assert self.ready.wait(10)

    def _announce(self, addr: Address) -> None:
        self.url = addr
        self.ready.set()

    def _run(self, paths: list[str], opts: Options) -> None:
        try:
            self.result = send(
                paths, "tcp://127.0.0.1:0", listen=True, options=opts, announce=self._announce
            )
        except BaseException as exc:
            self.result = exc
            self.ready.set()

    def wait(self) -> TransferSummary | BaseException | None:
        self.thread.join(20)
        return self.result


def test_cli_send_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_tree(tmp_path / "src", files=12)
    rx = Receiver(tmp_path / "dest")
    code = main(["send", "--no-code", "--json", "--progress", str(src), str(rx.url)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert isinstance(rx.wait(), TransferSummary)
    assert summary(out)["files_ok"] == 14
    assert "sent 14 files" in err
    assert_same_tree(src, tmp_path / "dest" / "tree")


def test_cli_receive_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "one.txt").write_text("1")
    tx = Sender([str(tmp_path / "one.txt")], code="3-a-b-c")
    dest = tmp_path / "dest"
    code = main(["receive", str(tx.url), "--code", "3-a-b-c", "--dir", str(dest), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0 and out == "" and err == ""
    result = tx.wait()
    assert isinstance(result, TransferSummary) and result.encryption == "code"
    assert (dest / "one.txt").read_text() == "1"


def test_cli_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        ["receive", "tcp://127.0.0.1:9", "--listen", "tcp://127.0.0.1:0"],
        ["send", str(tmp_path), "tcp://127.0.0.1:9", "--timeout", "0"],
        ["send", str(tmp_path), "tcp://127.0.0.1:9", "--tls-ca", "x.pem"],
        ["send", "--listen", "tls://127.0.0.1:0", "--tls-insecure", str(tmp_path)],
        ["receive", "tls://127.0.0.1:9", "--tls-client-auth", "required"],
        ["send", str(tmp_path), "tcp://127.0.0.1:9", "--code", " "],
        ["send", str(tmp_path), "tcp://127.0.0.1:9", "--rate-limit", "-5M"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "either URL or --listen" in err and "--tls-insecure applies" in err


def test_skipped_kinds_and_symlinks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    top = tmp_path / "top"
    top.mkdir()
    (top / "real.txt").write_text("r")
    (top / "link.txt").symlink_to(top / "real.txt")
    os.mkfifo(top / "pipe")
    with caplog.at_level(logging.WARNING, logger="opensocket.transfer"):
        sources = scan([str(top)])
    assert [s.entry.path for s in sources] == ["top", "top/real.txt"]
    assert "symlinks are not sent" in caplog.text and "not a regular file" in caplog.text


def test_nothing_to_send(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    assert main(["send", "--no-code", str(tmp_path / "pipe"), "tcp://127.0.0.1:9"]) == 1


def test_rate_limit_suffixes() -> None:
    from opensocket.cli.transfer import _rate

    assert _rate("10M") == 10 << 20 and _rate("2k") == 2048 and _rate("100") == 100
    assert _rate(None) is None


def test_sender_learns_why_receiver_stopped(tmp_path: Path) -> None:
    import socket

    from opensocket.transfer import PeerFailed
    from opensocket.transfer._link import Link, opening
    from opensocket.transfer.protocol import Machine, Rec

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(32 << 20))
    listener = socket.create_server(("127.0.0.1", 0))

    def forged_receiver() -> None:
        conn, _ = listener.accept()
        link = Link(conn, "sender")
        machine = Machine("receive")
        opening(link, machine, "receive", None, {"hashes": ["blake3", "sha256"]})
        link.recv(machine)  # OFFER
        link.send_json(Rec.PLAN, {"files": [{"i": 0, "action": "send"}]})
        for _ in range(3):
            link.recv(machine)  # FILE, DATA, DATA
        link.send_json(Rec.ERROR, {"message": "no space left (forged)"})
        link.close()  # unread data: a reset

    thread = threading.Thread(target=forged_receiver)
    thread.start()
    port = listener.getsockname()[1]
    with pytest.raises(PeerFailed, match="no space left \\(forged\\)"):
        send([str(big)], f"tcp://127.0.0.1:{port}", options=Options())
    thread.join(10)
    listener.close()


def test_damaged_tail_resumes_from_synced_offset(tmp_path: Path) -> None:
    # As after a machine crash: the partial file's tail holds garbage, its state says which
    # prefix was fsynced. The sender's check of the longer prefix fails, the synced one holds.
    import json as jsonlib

    from opensocket.transfer._link import local_hashes
    from opensocket.transfer.protocol import BLOCK

    src = tmp_path / "data.bin"
    data = os.urandom(8 * BLOCK)
    src.write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / ".data.bin.opensocket-part").write_bytes(data[: 3 * BLOCK] + os.urandom(BLOCK))
    state = {"v": 1, "size": len(data), "mtime_ns": src.stat().st_mtime_ns}
    state |= {"hash": local_hashes()[0], "synced": 2 * BLOCK}
    (dest / ".data.bin.opensocket-state").write_text(jsonlib.dumps(state))
    rx = Receiver(dest)
    sent = send([str(src)], str(rx.url))
    assert isinstance(rx.wait(), TransferSummary)
    assert sent.resumed_bytes == 2 * BLOCK and sent.data_bytes == 6 * BLOCK
    assert (dest / "data.bin").read_bytes() == data
    assert sorted(os.listdir(dest)) == ["data.bin"]
