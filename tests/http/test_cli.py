"""``opensocket http serve`` in-process (usage errors) and as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from opensocket.cli import main
from opensocket.http import http_address

from ..tlsutil import make_pki


def test_addresses() -> None:
    assert str(http_address("127.0.0.1:8000")) == "tcp://127.0.0.1:8000"
    assert str(http_address("http://127.0.0.1:80")) == "tcp://127.0.0.1:80"
    assert str(http_address("https://127.0.0.1:443")) == "tls://127.0.0.1:443"
    assert str(http_address("tls://[::1]:443")) == "tls://[::1]:443"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["http", "serve", "/no/such/folder"], "is not a folder"),
        (["http", "serve", ".", "--listen", "ftp://127.0.0.1:0"], "unknown scheme"),
        (["http", "serve", ".", "--listen", "https://127.0.0.1:0"], "needs a certificate"),
        (["http", "serve", ".", "--listen", "127.0.0.1:0", "--tls-cert", "x.pem"], "tls://"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def _serve(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "opensocket", "http", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for _ in range(5):
        line = proc.stdout.readline()
        if line.startswith("open "):
            return proc, line.split()[1]
    proc.kill()
    raise AssertionError(f"no URL announced: {proc.communicate(timeout=5)}")


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)  # also closes the pipes
    return proc.returncode, out


def test_serve_subprocess_http_and_https(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<h1>home</h1>")
    proc, url = _serve([str(tmp_path), "--listen", "http://127.0.0.1:0"])
    try:
        assert url.startswith("http://127.0.0.1:")
        response = httpx.get(url, timeout=5)
        assert response.text == "<h1>home</h1>"
        assert response.headers["content-type"] == "text/html; charset=utf-8"
    finally:
        code, out = _stop(proc)
    assert code == 0
    assert '"GET / HTTP/1.1" 200 13' in out  # the access log
    pki = make_pki(tmp_path)
    tls = ["--tls-cert", pki.server_cert, "--tls-key", pki.server_key]
    proc, url = _serve([str(tmp_path), "--listen", "https://127.0.0.1:0", *tls])
    try:
        done = subprocess.run(
            # a real host name: HSTS is never sent to localhost or an IP literal
            ["curl", "-sS", "-i", "--cacert", pki.ca_cert, "-H", "Host: www.example.test", url],
            capture_output=True,
            timeout=10,
            check=True,
        )
        assert b"Strict-Transport-Security" in done.stdout
        assert done.stdout.endswith(b"<h1>home</h1>")
    finally:
        assert _stop(proc)[0] == 0


def test_wildcard_banner_names_localhost_and_this_machine(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<h1>home</h1>")
    proc, url = _serve([str(tmp_path), "--listen", "*:0"])
    try:
        assert url.startswith("http://localhost:")  # not http://[::]:PORT/
        assert httpx.get(url, timeout=5).text == "<h1>home</h1>"
        assert proc.stdout is not None
        others = proc.stdout.readline()
        assert others.startswith("  from other machines: http://")
        assert "[::]" not in others and "0.0.0.0" not in others and "127.0.0.1" not in others
    finally:
        assert _stop(proc)[0] == 0


def test_json_access_log_keeps_stdout_json(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "opensocket", "http", "serve", str(tmp_path), "--listen",
         "127.0.0.1:0", "--access-log", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    banner = json.loads(proc.stdout.readline())
    assert banner["event"] == "listening" and banner["workers"] == 1
    url = banner["urls"][0]
    try:
        assert httpx.get(url + "a.txt", timeout=5).text == "a"
    finally:
        code, out = _stop(proc)
    assert code == 0
    assert [json.loads(line)["status"] for line in out.splitlines()] == [200]


def test_hsts_max_age_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "index.html").write_text("<h1>home</h1>")
    pki = make_pki(tmp_path)
    tls = ["--tls-cert", pki.server_cert, "--tls-key", pki.server_key]
    proc, url = _serve(
        [str(tmp_path), "--listen", "https://127.0.0.1:0", "--hsts-max-age", "0", *tls]
    )
    try:
        done = subprocess.run(
            ["curl", "-sS", "-i", "--cacert", pki.ca_cert, "-H", "Host: www.example.test", url],
            capture_output=True, timeout=10, check=True,
        )  # fmt: skip
        assert done.stdout.startswith(b"HTTP/1.1 200") and b"Strict-Transport" not in done.stdout
    finally:
        assert _stop(proc)[0] == 0
    argv = ["http", "serve", str(tmp_path), "--listen", "https://127.0.0.1:0", *tls]
    assert main([*argv, "--hsts-max-age", "-5"]) == 2
    assert "--hsts-max-age must be 0 (none) or seconds" in capsys.readouterr().err


def test_stop_says_it_waits_for_downloads_and_a_second_ctrl_c_ends_them(tmp_path: Path) -> None:
    with open(tmp_path / "big.bin", "wb") as big:
        big.truncate(64 * 1024 * 1024)  # sparse: nothing written
    proc, url = _serve([str(tmp_path), "--listen", "127.0.0.1:0", "--quiet"])
    slow = subprocess.Popen(
        ["curl", "-sS", "--limit-rate", "200k", "-o", str(tmp_path / "dl.bin"), url + "big.bin"],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while _size(tmp_path / "dl.bin") == 0:  # the response is in flight once bytes arrive
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "stopping: letting 1 response(s) in flight finish (up to 5 s" in line
        assert "Ctrl-C again to stop now" in line
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=4)  # well before the 5 s grace
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        slow.kill()
        slow.communicate()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
