"""What a new user ran into: trailing slashes, resuming with the same commands, who went away,
code-phrase and conflict advice, the summary, the examples in the help and docs."""

from __future__ import annotations

import math
import os
import queue
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from opensocket.cli import build_parser
from opensocket.transfer import crypto, scan

from .conftest import Side, assert_same_tree, cli, run, start, summary

LISTEN = "tcp://127.0.0.1:0"
ROOT = Path(__file__).resolve().parents[2]
FOLDER = "Fötos 写真"


def _photos(tmp_path: Path) -> Path:
    top = tmp_path / "src" / FOLDER
    (top / "x" / "y").mkdir(parents=True)
    (top / "x" / "b.jpg").write_bytes(b"jpeg")
    (top / "x" / "y" / "c.txt").write_text("c")
    (top / "a.txt").write_text("a")
    return top


@pytest.mark.parametrize("suffix", ["/", "//", "/./"])
def test_trailing_slash_keeps_folder_names(tmp_path: Path, suffix: str) -> None:
    top = _photos(tmp_path)
    names = sorted(s.entry.path for s in scan([str(top) + suffix]))
    expected = ["", "/a.txt", "/x", "/x/b.jpg", "/x/y", "/x/y/c.txt"]
    assert names == [FOLDER + rest for rest in expected]


def test_trailing_slash_transfer(tmp_path: Path, sides: list[Side]) -> None:
    top = _photos(tmp_path)
    dest = tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest))
    sides.append(side)
    sent = run("send", "--no-code", f"{top}/", side.url)
    assert sent.returncode == 0, sent.stderr
    assert side.finish()[0] == 0
    assert_same_tree(top, dest / FOLDER)


def _wait_for_size(path: Path, at_least: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.stat().st_size >= at_least:
            return
        time.sleep(0.02)  # polling a file another process writes: no event to wait on
    raise AssertionError(f"{path} never reached {at_least} bytes")


def test_resume_multi_file_with_the_same_commands(
    tmp_path: Path, sides: list[Side], free_port: int
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    first, second = src / "a.bin", src / "b.bin"
    first.write_bytes(os.urandom(1 << 20))
    second.write_bytes(os.urandom(32 << 20))
    dest = tmp_path / "dest"
    receive = ("receive", "--listen", f"tcp://127.0.0.1:{free_port}", "--no-code")
    receive += ("--dir", str(dest), "--json")
    send = ("send", "--no-code", "--rate-limit", "16M", "--json", str(first), str(second))
    send += (f"tcp://127.0.0.1:{free_port}",)

    side = start(*receive)
    sides.append(side)
    sender = subprocess.Popen(cli(*send), stdout=subprocess.DEVNULL, text=True)
    try:  # files go in order: b.bin's partial growing means a.bin is complete
        _wait_for_size(dest / ".b.bin.opensocket-part", 4 << 20, sender)
        os.kill(sender.pid, signal.SIGKILL)
    finally:
        sender.wait()
    rc, _, err = side.finish()
    assert rc == 1
    assert (dest / "a.bin").read_bytes() == first.read_bytes()
    # who went away, said once (it was "connection closed by local side: ..." twice)
    assert "the sender (tcp://127.0.0.1:" in err and err.count("disconnected") == 1, err
    assert "local side" not in err and "1006" not in err
    assert "is kept: run the same command again to resume" in err

    side = start(*receive)
    sides.append(side)
    sent = run(*send)
    assert sent.returncode == 0, sent.stderr
    rc, out, err = side.finish()
    assert rc == 0, err
    assert (dest / "a.bin").read_bytes() == first.read_bytes()
    assert (dest / "b.bin").read_bytes() == second.read_bytes()
    assert sorted(os.listdir(dest)) == ["a.bin", "b.bin"]
    for result in (summary(sent.stdout), summary(out)):
        assert result["ok"] and result["files_ok"] == 2 and result["files_failed"] == 0
        done = {"path": "a.bin", "status": "ok", "size": 1 << 20, "already_present": True}
        assert done in result["files"]
        resumed = int(result["resumed_bytes"])
        assert resumed >= 4 << 20
        assert result["data_bytes"] == (32 << 20) - resumed  # a.bin was not sent again
    assert "sent 1 file (" in sent.stderr and "; 1 file already there" in sent.stderr


def test_sender_names_the_receiver_that_went_away(tmp_path: Path, sides: list[Side]) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(16 << 20))
    dest = tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest))
    sides.append(side)
    sender = subprocess.Popen(
        cli("send", "--no-code", "--rate-limit", "8M", str(src), side.url),
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_size(dest / ".big.bin.opensocket-part", 2 << 20, side.proc)
    os.kill(side.proc.pid, signal.SIGKILL)
    side.finish()
    _, err = sender.communicate(timeout=30)
    assert sender.returncode == 1
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"opensocket send: error: the receiver \(tcp://127\.0\.0\.1:\d+\) disconnected "
        r"\((broken pipe|connection reset by peer)\)",
        line,
    ), err
    assert "cannot read" not in err  # the local file was read fine


def _warning(side: Side, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = side.lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        side.seen.append(line)
        if "dropped a connection" in line:
            return line
    raise AssertionError(f"no warning: {''.join(side.seen)}")


def test_stray_connections_logged_plainly(tmp_path: Path, sides: list[Side]) -> None:
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(tmp_path / "d"))
    sides.append(side)
    host, port = side.url.removeprefix("tcp://").rsplit(":", 1)
    scan_ = subprocess.run(["nc", "-z", host, port], capture_output=True, timeout=10)
    assert scan_.returncode == 0
    line = _warning(side)
    assert re.search(
        r"dropped a connection from tcp://127\.0\.0\.1:\d+: it closed without opening a "
        r"transfer$",
        line.rstrip(),
    ), line
    with socket.create_connection((host, int(port)), timeout=5) as stray:
        stray.sendall(b"GET / HTTP/1.0\r\n\r\n")
        line = _warning(side)
    assert "not an opensocket transfer (" in line and "local side" not in line, line
    side.proc.kill()
    side.finish()


def test_code_on_one_side_only_says_what_to_do(tmp_path: Path, sides: list[Side]) -> None:
    (tmp_path / "f").write_text("x")
    side = start("receive", "--listen", LISTEN, "--dir", str(tmp_path / "d"))
    sides.append(side)
    sent = run("send", str(tmp_path / "f"), side.url)
    assert sent.returncode == 1
    assert (
        "the receiver uses a code phrase (if it made one up, it printed it when it started): "
        "pass it with --code"
    ) in sent.stderr
    rc, _, err = side.finish()
    assert rc == 1 and "the sender uses no code phrase but this side does" in err


def test_summary_compression_plural_peer(tmp_path: Path, sides: list[Side]) -> None:
    text = tmp_path / "text.log"
    text.write_bytes(b"line of very compressible text\n" * 150_000)
    dest = tmp_path / "dest"
    side = start("receive", "--listen", LISTEN, "--no-code", "--dir", str(dest), "--json")
    sides.append(side)
    sent = run("send", "--no-code", "--compress", "--json", str(text), side.url)
    assert sent.returncode == 0, sent.stderr
    rc, out, err = side.finish()
    assert rc == 0, err
    shape = (
        r"(sent|received) 1 file \(4\.4 MiB, 4\.4 MiB of data moved as [\d.]+ KiB "
        r"on the wire\) in"
    )
    assert re.search(shape, sent.stderr), sent.stderr
    assert re.search(shape, err), err
    sent_json, got_json = summary(sent.stdout), summary(out)
    assert got_json["compress"] is True
    assert sent_json["peer"] == side.url  # the listener's URL, with its scheme
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", str(got_json["peer"]))


def test_unix_listener_removes_its_socket_file(
    tmp_path: Path, sides: list[Side], sock_path: str
) -> None:
    (tmp_path / "f").write_text("x")
    side = start("receive", "--listen", f"unix://{sock_path}", "--dir", str(tmp_path / "d"))
    sides.append(side)
    assert os.path.exists(sock_path)
    sent = run("send", "--json", str(tmp_path / "f"), side.url)
    assert sent.returncode == 0, sent.stderr
    assert side.finish()[0] == 0
    assert summary(sent.stdout)["peer"] == f"unix://{sock_path}"
    assert not os.path.exists(sock_path)


def _help(name: str) -> str:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return str(action.choices[name].format_help())  # type: ignore[index]


def test_examples_use_one_port() -> None:
    docs = (ROOT / "docs" / "transfer.md").read_text()
    readme = [
        line
        for line in (ROOT / "README.md").read_text().splitlines()
        if re.search(r"opensocket (send|receive)\b", line)
    ]
    assert len(readme) >= 2
    for text in (docs, _help("send"), _help("receive"), *readme):
        ports = set(re.findall(r"(?:tcp|tls)://[^\s:/]+:(\d+)", text)) - {"0"}
        assert ports <= {"9009"}, ports


def test_docs_state_the_code_phrase_entropy() -> None:
    docs = (ROOT / "docs" / "transfer.md").read_text()
    words = len(crypto._WORDS)
    bits = math.log2(1000 * words**3)
    assert f"three words from a list of {words}" in docs
    assert f"{bits:.1f} bits of entropy" in docs
    assert docs.count("bits of entropy") == 1 and "~31 bits" not in docs
