"""A flipped byte in transit (through the fault proxy) and a full disk (a small tmpfs)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opensocket.errors import OpenSocketError
from opensocket.proxy import BackgroundProxy
from opensocket.transfer import DiskFull, Options, TransferSummary, send
from opensocket.transfer._link import Link
from opensocket.transfer.protocol import BLOCK

from .conftest import Side, run, start, summary
from .test_hostile import Receiver, forge, item, send_file

LISTEN = "tcp://127.0.0.1:0"


def _files(tmp_path: Path) -> tuple[Path, Path]:
    big, small = tmp_path / "big.bin", tmp_path / "small.txt"
    big.write_bytes(os.urandom(3 << 20))
    small.write_text("fine\n")
    return big, small


def test_flipped_byte_detected_plain(
    tmp_path: Path, sides: list[Side], fault_proxy: Callable[..., BackgroundProxy]
) -> None:
    big, small = _files(tmp_path)
    dest = tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest), "--json")
    sides.append(side)
    proxy = fault_proxy(side.url)  # the opensocket.testing plugin's fixture
    proxy.corrupt(offset=200_000, direction="up")  # inside big.bin's first DATA block
    sent = run("send", "--no-code", "--json", str(big), str(small), proxy.url)
    proxy.close()
    rc, out, err = side.finish()
    assert rc == 1 and sent.returncode == 1
    assert "does not match the sender's hash" in err
    result = summary(out)
    assert [(f["path"], f["status"]) for f in result["files"]] == [
        ("big.bin", "failed"),
        ("small.txt", "ok"),
    ]
    assert summary(sent.stdout)["files_failed"] == 1
    assert sorted(os.listdir(dest)) == ["small.txt"]  # no big.bin, no partial


def test_flipped_byte_detected_encrypted(
    tmp_path: Path, sides: list[Side], fault_proxy: Callable[..., BackgroundProxy]
) -> None:
    big, _ = _files(tmp_path)
    dest = tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--code", "5-x-y-z", "--dir", str(dest))
    sides.append(side)
    proxy = fault_proxy(side.url)  # the opensocket.testing plugin's fixture
    proxy.corrupt(offset=300_000, direction="up")
    sent = run("send", "--code", "5-x-y-z", str(big), proxy.url)
    proxy.close()
    rc, _, err = side.finish()
    assert rc == 1 and sent.returncode == 1
    assert "altered in transit" in err
    assert not (dest / "big.bin").exists()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted at the end."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_not_enough_space_before(tmp_path: Path, small_fs: Path, sides: list[Side]) -> None:
    big, _ = _files(tmp_path)
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(small_fs))
    sides.append(side)
    sent = run("send", "--no-code", str(big), side.url)
    rc, _, err = side.finish()
    assert rc == 1 and "not enough free space" in err and "free some space" in err
    assert sent.returncode == 1 and "not enough free space" in sent.stderr
    assert list(small_fs.iterdir()) == []


def test_disk_full_midway_keeps_partial_then_resumes(tmp_path: Path, small_fs: Path) -> None:
    big, _ = _files(tmp_path)
    os.utime(big, ns=(0, 0))
    data = big.read_bytes()
    rx = Receiver(small_fs)
    assert rx.url is not None

    def script(link: Link) -> None:
        try:
            send_file(link, 0, data)
        except OpenSocketError:
            pass  # the receiver stopped

    # alloc=0: the sender claims a sparse file, so the free-space check passes
    forge(rx.url, [item("big.bin", len(data), alloc=0)], script)
    result = rx.wait()
    assert isinstance(result, DiskFull)
    assert "no space left" in str(result) and "run the same command again" in str(result)
    part = small_fs / ".big.bin.opensocket-part"
    kept = part.stat().st_size
    assert kept > 0 and kept % BLOCK == 0
    assert part.read_bytes() == data[:kept]
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_fs)], check=True)
    rx = Receiver(small_fs)
    assert rx.url is not None
    sent = send([str(big)], rx.url, options=Options())
    got = rx.wait()
    assert isinstance(got, TransferSummary) and got.ok
    assert sent.resumed_bytes == kept and sent.data_bytes == len(data) - kept
    assert (small_fs / "big.bin").read_bytes() == data
    assert sorted(os.listdir(small_fs)) == ["big.bin"]
