"""A hostile sender, forged with the protocol's own pieces: the receiver refuses, writes nothing
outside its folder, and keeps nothing unverified."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from opensocket.address import Address
from opensocket.transfer import (
    Options,
    PathRefused,
    TransferError,
    TransferProtocolError,
    TransferSummary,
    receive,
)
from opensocket.transfer._link import Link, hash_factory, local_hashes, opening
from opensocket.transfer.protocol import BLOCK, BlockHasher, Machine, Rec, decode_json

HASH = local_hashes()[0]  # what the real sender would choose: BLAKE3 when installed


class Receiver:
    """``receive(listen=True)`` on a thread; ``result`` is its summary or its exception."""

    def __init__(self, dest: Path, **options: Any) -> None:
        self.ready = threading.Event()
        self.url: Address | None = None
        self.result: TransferSummary | BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(dest, Options(**options)))
        self.thread.start()
        assert self.ready.wait(10)

    def _announce(self, addr: Address) -> None:
        self.url = addr
        self.ready.set()

    def _run(self, dest: Path, opts: Options) -> None:
        try:
            self.result = receive(
                "tcp://127.0.0.1:0", str(dest), listen=True, options=opts, announce=self._announce
            )
        except BaseException as exc:
            self.result = exc
            self.ready.set()

    def wait(self) -> TransferSummary | BaseException | None:
        self.thread.join(20)
        assert not self.thread.is_alive()
        return self.result


def forge(
    url: Address,
    entries: list[dict[str, Any]],
    script: Callable[[Link], None],
    raw: bytes | None = None,
) -> None:
    """Open like a sender, OFFER ``entries``, read the PLAN, then run ``script``."""
    sock = socket.create_connection((url.host, url.port), timeout=10)
    link = Link(sock, "receiver")
    machine = Machine("send")
    try:
        opening(link, machine, "send", None, {"hashes": [HASH], "compress": False})
        offer = {"entries": entries, "hash": HASH}
        link.send(Rec.OFFER, raw if raw is not None else json.dumps(offer).encode())
        try:
            link.recv(machine)
        except (TransferError, OSError):
            return  # refused: the receiver said why and closed
        script(link)
    finally:
        link.close()


def item(path: str, size: int = 0, kind: str = "file", **extra: Any) -> dict[str, Any]:
    """An OFFER entry."""
    base = {"path": path, "kind": kind, "size": size, "mtime_ns": 0, "mode": 0o644}
    return base | {"alloc": size} | extra


def send_file(link: Link, index: int, data: bytes, digest: bytes | None = None) -> None:
    """FILE, DATA blocks, END (with the true digest unless ``digest`` lies)."""
    hasher = BlockHasher(hash_factory(HASH))
    link.send_json(Rec.FILE, {"start": 0}, arg=index)
    for offset in range(0, len(data), BLOCK):
        block = data[offset : offset + BLOCK]
        hasher.update(block)
        link.send(Rec.DATA, block, arg=offset)
    link.send(Rec.END, digest if digest is not None else hasher.digest(), arg=index)


def finish(link: Link) -> dict[str, Any]:
    """DONE, then the REPORT."""
    link.send_json(Rec.DONE, {})
    machine = Machine("send")
    machine.state = machine.state.__class__.REPORT
    _, payload = link.recv(machine)
    return decode_json(Rec.REPORT, payload)


@pytest.fixture
def jail(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(destination, a folder beside it that must stay empty)."""
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    yield dest, outside
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "outside"]


ESCAPES = [
    "/etc/passwd-opensocket-test",
    "../outside/x",
    "a/../../outside/x",
    "./x",
    "a//x",
    "a\0b",
    "..\\outside\\x",
    "x\udcff",
    "",
    "a/" * 3000,
]


@pytest.mark.parametrize("path", ESCAPES)
def test_path_escapes_refused(jail: tuple[Path, Path], path: str) -> None:
    dest, _ = jail
    rx = Receiver(dest)
    assert rx.url is not None
    forge(rx.url, [item(path, 3)], lambda link: send_file(link, 0, b"bad"))
    result = rx.wait()
    assert isinstance(result, PathRefused), result
    assert "refused" in str(result)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("kind", ["device", "fifo", "symlink", "socket"])
def test_special_files_refused(jail: tuple[Path, Path], kind: str) -> None:
    dest, _ = jail
    rx = Receiver(dest)
    assert rx.url is not None
    forge(rx.url, [item("x", kind=kind)], lambda link: None)
    result = rx.wait()
    assert isinstance(result, PathRefused) and "only regular files and folders" in str(result)
    assert list(dest.iterdir()) == []


def test_symlinked_folder_in_destination_refused(jail: tuple[Path, Path]) -> None:
    dest, outside = jail
    (dest / "link").symlink_to(outside)
    rx = Receiver(dest)
    assert rx.url is not None
    forge(rx.url, [item("link/evil.txt", 4)], lambda link: send_file(link, 0, b"evil"))
    result = rx.wait()
    assert isinstance(result, PathRefused) and "symlink" in str(result)
    (dest / "link").unlink()


def test_symlinked_file_replaced_not_followed(jail: tuple[Path, Path]) -> None:
    dest, outside = jail
    target = outside / "target"
    target.write_text("precious")
    (dest / "f.txt").symlink_to(target)
    rx = Receiver(dest, overwrite=True)
    assert rx.url is not None
    report: dict[str, Any] = {}

    def script(link: Link) -> None:
        send_file(link, 0, b"new")
        report.update(finish(link))

    forge(rx.url, [item("f.txt", 3)], script)
    assert isinstance(rx.wait(), TransferSummary)
    assert target.read_text() == "precious"  # written beside, never through, the symlink
    assert not (dest / "f.txt").is_symlink() and (dest / "f.txt").read_text() == "new"
    target.unlink()


def test_more_bytes_than_announced(jail: tuple[Path, Path]) -> None:
    dest, _ = jail
    rx = Receiver(dest)
    assert rx.url is not None

    def script(link: Link) -> None:
        link.send_json(Rec.FILE, {"start": 0}, arg=0)
        link.send(Rec.DATA, b"0123456789X", arg=0)
        link.send(Rec.END, bytes(32), arg=0)

    forge(rx.url, [item("f", 10)], script)
    result = rx.wait()
    assert isinstance(result, TransferProtocolError) and "more than it announced" in str(result)
    assert not (dest / "f").exists()


def test_fewer_bytes_than_announced(jail: tuple[Path, Path]) -> None:
    dest, _ = jail
    rx = Receiver(dest)
    assert rx.url is not None
    report: dict[str, Any] = {}

    def script(link: Link) -> None:
        send_file(link, 0, os.urandom(BLOCK))  # the digest of 1 MiB; 2 MiB announced
        report.update(finish(link))

    forge(rx.url, [item("f", 2 * BLOCK)], script)
    result = rx.wait()
    assert isinstance(result, TransferSummary) and not result.ok
    assert report["files"][0]["status"] == "failed"
    assert "does not match the sender's hash" in report["files"][0]["error"]
    assert list(dest.iterdir()) == []  # neither the file nor its partial is kept


def test_lying_hash(jail: tuple[Path, Path]) -> None:
    dest, _ = jail
    rx = Receiver(dest)
    assert rx.url is not None

    def script(link: Link) -> None:
        send_file(link, 0, b"good data", digest=bytes(32))
        send_file(link, 1, b"fine")
        finish(link)

    forge(rx.url, [item("bad", 9), item("good", 4)], script)
    result = rx.wait()
    assert isinstance(result, TransferSummary)
    assert [(f.path, f.status) for f in result.files] == [("bad", "failed"), ("good", "ok")]
    assert sorted(os.listdir(dest)) == ["good"]


def test_unplanned_file_and_bad_offsets(jail: tuple[Path, Path]) -> None:
    dest, _ = jail
    for script in (
        lambda link: link.send_json(Rec.FILE, {"start": 0}, arg=5),
        lambda link: link.send_json(Rec.FILE, {"start": 4096}, arg=0),
        lambda link: link.send(Rec.DATA, b"x", arg=0),
    ):
        rx = Receiver(dest)
        assert rx.url is not None
        forge(rx.url, [item("f", 10)], script)
        assert isinstance(rx.wait(), TransferProtocolError)
        assert not (dest / "f").exists()
    for leftover in dest.iterdir():  # partial files of refused transfers stay inside
        assert leftover.name.startswith(".f.opensocket-")
        leftover.unlink()


def test_offer_not_utf8(jail: tuple[Path, Path]) -> None:
    dest, _ = jail
    rx = Receiver(dest)
    assert rx.url is not None
    raw = b'{"entries":[{"path":"a\xff","kind":"file","size":0,"mtime_ns":0,"mode":0,"alloc":0}]}'
    forge(rx.url, [], lambda link: None, raw=raw)
    result = rx.wait()
    assert isinstance(result, TransferProtocolError) and "not valid JSON" in str(result)
    assert list(dest.iterdir()) == []


def test_files_never_sent_are_failures(jail: tuple[Path, Path]) -> None:
    dest, _ = jail
    rx = Receiver(dest)
    assert rx.url is not None
    report: dict[str, Any] = {}

    def script(link: Link) -> None:
        send_file(link, 1, b"second only")
        report.update(finish(link))

    forge(rx.url, [item("first", 5), item("second", 11)], script)
    result = rx.wait()
    assert isinstance(result, TransferSummary) and not result.ok
    statuses = {f["path"]: f["status"] for f in report["files"]}
    assert statuses == {"first": "failed", "second": "ok"}
    assert sorted(os.listdir(dest)) == ["second"]
