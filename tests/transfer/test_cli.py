"""Real sender and receiver processes over loopback."""

from __future__ import annotations

import os
from pathlib import Path

from tests.tlsutil import make_pki

from .conftest import Side, assert_same_tree, make_tree, run, start, summary

LISTEN = "tcp://127.0.0.1:0"


def test_tree_with_code_phrase(tmp_path: Path, sides: list[Side]) -> None:
    src = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--dir", str(dest), "--json")
    sides.append(side)
    assert side.code is not None
    sent = run("send", str(src), side.url, "--code", side.code, "--json")
    assert sent.returncode == 0, sent.stderr
    code, out, err = side.finish()
    assert code == 0, err
    assert_same_tree(src, dest / "tree")
    for result in (summary(sent.stdout), summary(out)):
        assert result["ok"] and result["encryption"] == "code"
        assert result["files_ok"] == 202 and result["files_failed"] == 0
        assert result["folders"] == 1 + 7 + 21 + 2
    assert "received 202 files" in err


def test_reverse_direction_unix(tmp_path: Path, sides: list[Side], sock_path: str) -> None:
    src = make_tree(tmp_path / "src", files=5)
    dest = tmp_path / "dest"
    side = start("send", "--listen", f"unix://{sock_path}", str(src), "--json")
    sides.append(side)
    got = run("receive", side.url, "--dir", str(dest), "--json")
    assert got.returncode == 0, got.stderr
    assert side.finish()[0] == 0
    assert_same_tree(src, dest / "tree")
    assert summary(got.stdout)["encryption"] == "plain"


def test_sparse_multi_gib_file_stays_sparse(tmp_path: Path, sides: list[Side]) -> None:
    src = tmp_path / "sparse.img"
    size = (5 << 30) + 12345  # over 4 GiB: 64-bit sizes and offsets
    with open(src, "wb") as handle:
        handle.truncate(size)
        for offset in (0, 3 << 30, (4 << 30) + 7, size - 100):
            handle.seek(offset)
            handle.write(os.urandom(100))
    dest = tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest), "--json")
    sides.append(side)
    sent = run("send", "--no-code", str(src), side.url, "--json")
    assert sent.returncode == 0, sent.stderr
    assert side.finish()[0] == 0
    got = dest / "sparse.img"
    assert got.stat().st_size == size
    assert got.stat().st_blocks * 512 < 16 << 20  # the holes stayed holes
    assert summary(sent.stdout)["data_bytes"] <= 5 << 20  # only the data blocks were sent
    with open(src, "rb") as a, open(got, "rb") as b:
        for offset in (0, 3 << 30, (4 << 30) + 7, size - 100, 1 << 30):
            a.seek(offset)
            b.seek(offset)
            assert a.read(200) == b.read(200)


def test_conflicts_overwrite_skip(tmp_path: Path, sides: list[Side]) -> None:
    src = tmp_path / "a.txt"
    src.write_text("new")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.txt").write_text("old")

    def transfer(*flags: str) -> tuple[int, dict[str, object], str]:
        side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest), *flags)
        sides.append(side)
        sent = run("send", "--no-code", "--json", str(src), side.url)
        rc, _, err = side.finish()
        assert rc == sent.returncode
        return sent.returncode, summary(sent.stdout), err + sent.stderr

    rc, result, err = transfer()
    assert rc == 1 and result["files_failed"] == 1
    # the sender cannot pass --overwrite: the advice names the receiver's options
    advice = "already exists at the receiver and differs: run the receiver with --overwrite"
    assert err.count(advice) == 2 and "(or --skip-existing to keep it)" in err
    assert (dest / "a.txt").read_text() == "old"
    rc, result, _ = transfer("--skip-existing")
    assert rc == 0 and result["files_skipped"] == 1
    assert (dest / "a.txt").read_text() == "old"
    rc, result, _ = transfer("--overwrite")
    assert rc == 0 and result["files_ok"] == 1
    assert (dest / "a.txt").read_text() == "new"
    assert sorted(os.listdir(dest)) == ["a.txt"]  # no partial or state file left


def test_wrong_code_writes_nothing(tmp_path: Path, sides: list[Side]) -> None:
    src = make_tree(tmp_path / "src", files=3)
    dest = tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--dir", str(dest), "--json")
    sides.append(side)
    sent = run("send", str(src), side.url, "--code", "1-wrong-code-phrase", "--json")
    assert sent.returncode == 1
    assert "code phrase does not match" in sent.stderr
    rc, out, err = side.finish()
    assert rc == 1 and "code phrase does not match" in err
    assert summary(out)["exit"] == 1
    assert list(dest.iterdir()) == []


def test_code_on_one_side_only(tmp_path: Path, sides: list[Side]) -> None:
    (tmp_path / "f").write_text("x")
    side = start("receive", "--listen", LISTEN, "--dir", str(tmp_path / "d"))
    sides.append(side)
    sent = run("send", str(tmp_path / "f"), side.url)
    assert sent.returncode == 1
    assert "the receiver uses a code phrase" in sent.stderr
    assert side.finish()[0] == 1


def test_tls_with_certificates(tmp_path: Path, sides: list[Side]) -> None:
    pki = make_pki(tmp_path)
    src = make_tree(tmp_path / "src", files=10)
    dest = tmp_path / "dest"
    side = start(
        "receive", "--listen", "tls://127.0.0.1:0", "--dir", str(dest),
        "--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
    )  # fmt: skip
    sides.append(side)
    url = side.url.replace("127.0.0.1", "localhost")
    sent = run("send", "--json", str(src), url, "--tls-ca", pki.ca_cert)
    assert sent.returncode == 0, sent.stderr
    assert side.finish()[0] == 0
    assert summary(sent.stdout)["encryption"] == "tls"
    assert_same_tree(src, dest / "tree")


def test_tls_untrusted_certificate(tmp_path: Path, sides: list[Side]) -> None:
    pki = make_pki(tmp_path)
    (tmp_path / "f").write_text("x")
    side = start(
        "receive", "--listen", "tls://127.0.0.1:0", "--dir", str(tmp_path / "d"),
        "--tls-cert", pki.other_server_cert, "--tls-key", pki.other_server_key,
    )  # fmt: skip
    sides.append(side)
    sent = run("send", str(tmp_path / "f"), side.url, "--tls-ca", pki.ca_cert)
    assert sent.returncode == 1
    assert "certificate" in sent.stderr.lower()
    side.proc.kill()  # a listener drops failed handshakes and keeps waiting for its peer
    side.finish()
    assert not (tmp_path / "d").exists() or list((tmp_path / "d").iterdir()) == []


def test_compress(tmp_path: Path, sides: list[Side]) -> None:
    text = tmp_path / "text.log"
    text.write_bytes(b"line of very compressible text\n" * 100_000)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(3 << 20))
    dest = tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest))
    sides.append(side)
    sent = run("send", "--no-code", "--compress", "--json", str(text), str(noise), side.url)
    assert sent.returncode == 0, sent.stderr
    assert side.finish()[0] == 0
    result = summary(sent.stdout)
    assert result["compress"] is True
    assert result["wire_bytes"] < (3 << 20) + 500_000  # the text shrank, the noise went raw
    assert (dest / "text.log").read_bytes() == text.read_bytes()
    assert (dest / "noise.bin").read_bytes() == noise.read_bytes()


def test_json_summary_schema(tmp_path: Path, sides: list[Side]) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(tmp_path / "d"))
    sides.append(side)
    sent = run("send", "--no-code", "--json", "--quiet", str(tmp_path / "f"), side.url)
    assert sent.returncode == 0 and sent.stderr == ""
    side.finish()
    result = summary(sent.stdout)
    assert set(result) == {
        "role", "ok", "peer", "encryption", "hash", "compress", "files_ok", "files_skipped",
        "files_failed", "folders", "total_bytes", "data_bytes", "wire_bytes", "resumed_bytes",
        "seconds", "rate", "files",
    }  # fmt: skip
    assert result["role"] == "send" and result["hash"] in ("blake3", "sha256")
    assert result["files"] == [{"path": "f", "status": "ok", "size": 5}]
    assert result["total_bytes"] == result["data_bytes"] == 5


def test_usage_errors(tmp_path: Path) -> None:
    assert run("send", str(tmp_path)).returncode == 2
    assert run("receive").returncode == 2
    bad = run("send", "--json", str(tmp_path), "udp://127.0.0.1:9")
    assert bad.returncode == 2 and '"exit": 2' in bad.stdout
    assert "files travel over tcp://, tls:// or unix://" in bad.stdout
    swapped = run("send", "tcp://127.0.0.1:9", str(tmp_path))
    assert swapped.returncode == 2 and "the paths come first, the receiver's URL last" in (
        swapped.stderr
    )
    assert run("send", "--rate-limit", "fast", str(tmp_path), "tcp://127.0.0.1:9").returncode == 2
    missing = run("send", str(tmp_path / "nope"), "tcp://127.0.0.1:9")
    assert missing.returncode == 1 and "cannot read" in missing.stderr
