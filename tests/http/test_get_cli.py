"""``opensocket http get`` in-process and as a subprocess, against our server and http.server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opensocket.cli import main
from opensocket.http import HttpServer, fetch, serve_http

from ..tlsutil import make_pki
from .conftest import BIG_SIZE, LIMITS


async def get(*argv: str) -> int:
    """``opensocket http get ARGV`` in-process, off the loop that runs the server."""
    return await asyncio.to_thread(main, ["http", "get", *argv])


async def test_download_resume_and_restart(
    server: HttpServer, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, expected = server.url + "big.bin", (site / "big.bin").read_bytes()
    out, part = tmp_path / "big.bin", tmp_path / "big.bin.part"
    assert await get("-o", str(out), url) == 0
    assert out.read_bytes() == expected and not part.exists()
    validator = Path(f"{part}.validator")
    assert not validator.exists()  # removed with the download complete
    etag = (await fetch(url, method="HEAD")).header("etag")
    assert etag is not None
    # an interrupted download: the first 3 MiB in FILE.part with the ETag they came with
    out.unlink()
    part.write_bytes(expected[: 3 << 20])
    validator.write_text(etag + "\n")
    capsys.readouterr()
    assert await get("-C", "--json", "-o", str(out), url) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["status"], summary["resumed_from"]) == (206, 3 << 20)
    assert summary["bytes"] == BIG_SIZE - (3 << 20) and summary["file"] == str(out)
    assert out.read_bytes() == expected and not part.exists() and not validator.exists()
    # a FILE.part that is already complete: the server says 416, the file is put in place
    out.unlink()
    part.write_bytes(expected)
    validator.write_text(etag + "\n")
    assert await get("-C", "-o", str(out), url) == 0
    assert out.read_bytes() == expected and not part.exists() and not validator.exists()
    # without -C a leftover FILE.part is started over
    part.write_bytes(b"junk from another download")
    assert await get("-o", str(out), url) == 0
    assert out.read_bytes() == expected and not part.exists()


async def test_statuses_headers_and_redirects(
    server: HttpServer, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    out = tmp_path / "x"
    assert await get("-o", str(out), server.url + "nope") == 1
    assert b"answered 404 Not Found" in capsysbinary.readouterr().err
    assert not out.exists() and not Path(f"{out}.part").exists()

    assert await get("-i", server.url + "hello.txt") == 0
    head, body = capsysbinary.readouterr().out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"hello, world\n"
    etag = next(v for k, v in (h.split(b": ", 1) for h in head.split(b"\r\n")[1:]) if k == b"ETag")

    assert await get("-H", f"If-None-Match: {etag.decode()}", server.url + "hello.txt") == 0
    assert capsysbinary.readouterr().out == b""  # 304: success, nothing to print

    assert await get("-I", server.url + "hello.txt") == 0
    printed = capsysbinary.readouterr().out
    assert b"Content-Length: 13\r\n" in printed and not printed.endswith(b"world\n")
    assert b"content-length" not in printed  # the names as the server sent them, as curl does

    assert await get("--json", server.url + "docs") == 0
    summary = json.loads(capsysbinary.readouterr().out)
    assert summary["final_url"] == server.url + "docs/"
    assert summary["redirects"] == [server.url + "docs"] and summary["status"] == 200
    assert await get("--max-redirects", "0", server.url + "docs") == 1
    assert b"answered 301" in capsysbinary.readouterr().err


async def test_https_verification(
    tmp_path: Path, site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path)
    srv = await serve_http("https://127.0.0.1:0", site, tls=pki.server_tls(), limits=LIMITS)
    url = srv.url + "hello.txt"
    try:
        assert await get("--tls-ca", pki.ca_cert, url) == 0
        assert capsys.readouterr().out == "hello, world\n"
        assert await get(url) == 1
        assert "not signed by a trusted CA" in capsys.readouterr().err
        assert await get("--tls-insecure", url) == 0
        assert capsys.readouterr().out == "hello, world\n"
        assert await get("--tls-ca", pki.ca_cert, srv.url.replace("https", "http")) == 1
        captured = capsys.readouterr()
        assert "https://" in captured.out + captured.err  # the server's 400 page, or our hint
    finally:
        await srv.close(1.0)


async def test_server_requiring_a_client_certificate(
    tmp_path: Path, site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path)
    tls = pki.server_tls(client_auth="required")
    srv = await serve_http("https://127.0.0.1:0", site, tls=tls, limits=LIMITS)
    url = srv.url + "hello.txt"
    try:
        mine = ("--tls-cert", pki.client_cert, "--tls-key", pki.client_key)
        assert await get("--tls-ca", pki.ca_cert, *mine, url) == 0
        assert capsys.readouterr().out == "hello, world\n"
        assert await get("--tls-ca", pki.ca_cert, url) == 1
        err = capsys.readouterr().err
        assert "requires a client certificate" in err and "--tls-cert" in err
        assert "http:// URL" not in err and "Traceback" not in err
    finally:
        await srv.close(1.0)


def test_connection_refused(free_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["http", "get", "--json", f"http://127.0.0.1:{free_port}/"]) == 1
    captured = capsys.readouterr()
    assert "connection refused" in captured.err
    assert json.loads(captured.out)["exit"] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-C", "http://127.0.0.1:9/"], "give the file with -o"),
        (["ftp://127.0.0.1/"], "http:// or https://"),
        (["-H", "no colon", "http://127.0.0.1:9/"], "'Name: value'"),
        (["--json", "-i", "http://127.0.0.1:9/"], "drop -i/-I"),
        (["--timeout", "0", "http://127.0.0.1:9/"], "--timeout must be a positive"),
        (["--max-redirects", "-1", "http://127.0.0.1:9/"], "--max-redirects"),
        (["-o", "/no/such/dir/f", "http://127.0.0.1:9/"], "does not exist"),
        (["--bogus", "http://127.0.0.1:9/"], "unrecognized arguments"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["http", "get", *argv]) == 2
    assert message in capsys.readouterr().err


def test_http_needs_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["http"]) == 2
    assert "ACTION" in capsys.readouterr().err


# ---- against python -m http.server ----------------------------------------------------------


@pytest.fixture
def http_server(tmp_path: Path, free_port: int) -> Iterator[tuple[str, Path]]:
    """``python -m http.server`` on a loopback port, serving a folder with one binary file."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.bin").write_bytes(bytes(range(256)) * 4096 + b"tail")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", str(free_port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "Serving HTTP" in proc.stdout.readline()  # it listens before it says so
        yield f"http://127.0.0.1:{free_port}/", root
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_against_python_http_server(
    http_server: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, root = http_server
    expected = (root / "data.bin").read_bytes()
    out = tmp_path / "data.bin"
    assert main(["http", "get", "-o", str(out), base + "data.bin"]) == 0
    assert out.read_bytes() == expected
    # http.server ignores Range: a 200 to a resume starts the file over
    out.unlink()
    Path(f"{out}.part").write_bytes(b"stale prefix")
    capsys.readouterr()
    assert main(["http", "get", "-C", "--json", "-o", str(out), base + "data.bin"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["status"], summary["resumed_from"], summary["bytes"]) == (200, 0, len(expected))
    assert out.read_bytes() == expected
    assert main(["http", "get", base + "missing"]) == 1


def test_subprocess(http_server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_server
    expected = (root / "data.bin").read_bytes()
    command = [sys.executable, "-m", "opensocket", "http", "get"]
    done = subprocess.run([*command, base + "data.bin"], capture_output=True, timeout=30)
    assert done.returncode == 0 and done.stdout == expected  # binary-safe stdout
    # /dev/stdout: a link to a pipe here, written in place (it is no file to rename onto)
    done = subprocess.run(
        [*command, "-o", "/dev/stdout", base + "data.bin"], capture_output=True, timeout=30
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, expected, b"")
    out = tmp_path / "copy.bin"
    done = subprocess.run(
        [*command, "--progress", "-o", str(out), base + "data.bin"],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0 and out.read_bytes() == expected
    assert str(out).encode() in done.stderr and b"MB" in done.stderr  # the progress bar
    assert not os.path.exists(f"{out}.part")
