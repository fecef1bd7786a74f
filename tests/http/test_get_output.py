"""Where ``opensocket http get`` writes: stdout, terminals, devices, FIFOs, symlinks, FILE.part."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TextIO

import h11
import pytest

from opensocket.cli import main
from opensocket.http import HttpServer, fetch

BINARY = bytes(range(256)) * 4  # NUL bytes, served as application/octet-stream


async def get(*argv: str) -> int:
    """``opensocket http get ARGV`` in-process, off the loop that runs the server."""
    return await asyncio.to_thread(main, ["http", "get", *argv])


# ---- -o -, devices, FIFOs and symlinks -------------------------------------------------------


async def test_dash_is_stdout(
    server: HttpServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert await get("-o", "-", server.url + "hello.txt") == 0
    assert capsysbinary.readouterr().out == b"hello, world\n"
    assert not (tmp_path / "-").exists() and not (tmp_path / "-.part").exists()
    assert await get("-C", "-o", "-", server.url + "hello.txt") == 2
    assert "-o - (stdout) cannot be" in capsysbinary.readouterr().err.decode()
    assert await get("--json", "-o", "-", server.url + "hello.txt") == 2
    assert "give -o FILE for the body" in capsysbinary.readouterr().err.decode()


async def test_character_device_is_written_in_place(
    server: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # our own /dev/null
    assert await get("-o", str(null), server.url + "big.bin") == 0
    assert stat.S_ISCHR(os.lstat(null).st_mode)  # not replaced by a regular file
    assert not Path(f"{null}.part").exists() and not Path(f"{null}.part.validator").exists()
    capsys.readouterr()
    assert await get("-C", "-o", str(null), server.url + "big.bin") == 2
    assert "it is not a regular file" in capsys.readouterr().err
    assert stat.S_ISCHR(os.lstat(null).st_mode)


async def test_fifo_is_written_through(server: HttpServer, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = await asyncio.create_subprocess_exec("cat", str(fifo), stdout=asyncio.subprocess.PIPE)
    try:
        assert await get("-o", str(fifo), server.url + "hello.txt") == 0
        async with asyncio.timeout(10):
            received, _ = await reader.communicate()
    finally:
        if reader.returncode is None:
            reader.kill()
            await reader.wait()
    assert received == b"hello, world\n" and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not Path(f"{fifo}.part").exists()


async def test_symlink_target_is_the_file_replaced(
    server: HttpServer, site: Path, tmp_path: Path
) -> None:
    url, expected = server.url + "big.bin", (site / "big.bin").read_bytes()
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "big.bin", tmp_path / "link.bin"
    target.write_bytes(b"old")
    link.symlink_to(target)
    assert await get("-o", str(link), url) == 0
    assert link.is_symlink() and target.read_bytes() == expected
    assert not Path(f"{link}.part").exists() and not Path(f"{target}.part").exists()
    # a complete FILE.part (beside the target) found by -C through the link: a 416, renamed
    etag = (await fetch(url, method="HEAD")).header("etag")
    assert etag is not None
    target.unlink()
    Path(f"{target}.part").write_bytes(expected)
    Path(f"{target}.part.validator").write_text(etag + "\n")
    assert await get("-C", "-o", str(link), url) == 0
    assert link.is_symlink() and target.read_bytes() == expected
    assert not Path(f"{target}.part").exists() and not Path(f"{target}.part.validator").exists()


# ---- -C with If-Range ------------------------------------------------------------------------


async def test_resume_of_a_file_changed_on_the_server_starts_over(
    server: HttpServer, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, url = site / "data.bin", server.url + "data.bin"
    old, new = b"A" * 100_000, b"B" * 100_000
    source.write_bytes(old)
    etag = (await fetch(url, method="HEAD")).header("etag")
    assert etag is not None
    # interrupted after 40000 bytes of the old version, then the file changes on the server
    out = tmp_path / "data.bin"
    part, validator = Path(f"{out}.part"), Path(f"{out}.part.validator")
    part.write_bytes(old[:40_000])
    validator.write_text(etag + "\n")
    source.write_bytes(new)
    mtime = source.stat().st_mtime + 10  # a new ETag even on a coarse clock
    os.utime(source, (mtime, mtime))
    capsys.readouterr()
    assert await get("-C", "--json", "-o", str(out), url) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["status"], summary["resumed_from"], summary["bytes"]) == (200, 0, len(new))
    assert out.read_bytes() == new and not part.exists() and not validator.exists()
    # no validator: a FILE.part is never spliced blind, the download starts over
    out.unlink()
    part.write_bytes(new[:40_000])
    assert await get("-C", "--json", "-o", str(out), url) == 0
    captured = capsys.readouterr()
    assert f"no validator saved for {part}: downloading again from the start" in captured.err
    assert json.loads(captured.out)["status"] == 200 and out.read_bytes() == new


# ---- a binary body on a terminal -------------------------------------------------------------


@pytest.fixture
def terminal() -> Iterator[tuple[int, TextIO]]:
    """A pseudo-terminal: its master side, and its slave side as a text stream for stdout."""
    master, slave = os.openpty()
    tty = open(slave, "w", encoding="utf-8", closefd=True)  # noqa: SIM115 - closed below
    try:
        yield master, tty
    finally:
        tty.close()
        os.close(master)


def printed(master: int, at_least: int = 0) -> bytes:
    """What the terminal received: at least ``at_least`` bytes (the pty hands them over
    asynchronously, and turns \\n into \\r\\n), then whatever else is there at once."""
    data = b""
    deadline = time.monotonic() + 5.0
    while True:
        wait = max(0.0, deadline - time.monotonic()) if len(data) < at_least else 0.0
        if not select.select([master], [], [], wait)[0]:
            return data
        data += os.read(master, 65536)


async def test_binary_body_is_not_written_to_a_terminal(
    server: HttpServer,
    site: Path,
    terminal: tuple[int, TextIO],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    master, tty = terminal
    monkeypatch.setattr(sys, "stdout", tty)  # here: capture swaps stdout after the fixtures
    (site / "small.bin").write_bytes(BINARY)
    (site / "nul.txt").write_bytes(b"text with a \0 in it")
    assert sys.stdout.isatty()
    for name in ("small.bin", "nul.txt"):  # by Content-Type, and by the NUL byte
        assert await get(server.url + name) == 1
        assert (
            "binary output can mess up your terminal: use -o FILE (or -o - to write it "
            "anyway)" in capsys.readouterr().err
        )
        assert printed(master) == b""
    assert await get(server.url + "hello.txt") == 0
    assert printed(master, 14) == b"hello, world\r\n"
    assert await get("-o", "-", server.url + "small.bin") == 0  # asked for: written
    assert len(printed(master, len(BINARY))) >= len(BINARY)


# ---- URL without a scheme ------------------------------------------------------------------


async def test_url_without_scheme_is_http(
    server: HttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = server.url.removeprefix("http://")
    assert await get(bare + "hello.txt") == 0
    assert capsys.readouterr().out == "hello, world\n"
    assert await get("--json", bare + "hello.txt") == 0
    assert json.loads(capsys.readouterr().out)["url"] == server.url + "hello.txt"
    assert await get("ftp://" + bare) == 2  # a scheme that is there is still checked
    assert "http:// or https://" in capsys.readouterr().err


# ---- Ctrl-C, then -C with If-Range -----------------------------------------------------------

FULL = bytes(range(256)) * 40
ETAG = '"v1"'


@contextlib.asynccontextmanager
async def half_then_rest() -> AsyncIterator[tuple[str, list[h11.Request]]]:
    """A server that sends the first 1000 bytes of FULL and stalls, then on a request with
    ``If-Range: ETAG`` answers 206 with the rest."""
    requests: list[h11.Request] = []
    stalled = asyncio.Event()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while (event := conn.next_event()) is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            assert isinstance(event, h11.Request)
            requests.append(event)
            headers = dict(event.headers)
            common = [("ETag", ETAG), ("Content-Type", "application/octet-stream")]
            if (
                headers.get(b"if-range") == ETAG.encode()
                and headers.get(b"range") == b"bytes=1000-"
            ):
                rest = FULL[1000:]
                range_ = ("Content-Range", f"bytes 1000-{len(FULL) - 1}/{len(FULL)}")
                head = [*common, range_, ("Content-Length", str(len(rest)))]
                writer.write(conn.send(h11.Response(status_code=206, headers=head)))
                writer.write(conn.send(h11.Data(data=rest)) + conn.send(h11.EndOfMessage()))
            else:
                head = [*common, ("Content-Length", str(len(FULL)))]
                response = conn.send(h11.Response(status_code=200, headers=head))
                # one write: the client gets the head and the bytes in one read
                writer.write(response + conn.send(h11.Data(data=FULL[:1000])))
                await writer.drain()
                await stalled.wait()  # until the test ends
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/file.bin", requests
    finally:
        stalled.set()
        server.close()
        await server.wait_closed()


async def wait_for(path: Path, limit: float = 10.0) -> None:
    """Until ``path`` exists: the client makes it, nothing else tells us when."""
    deadline = time.monotonic() + limit
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.01)


async def test_ctrl_c_keeps_the_part_and_c_resumes_it(tmp_path: Path) -> None:
    out = tmp_path / "file.bin"
    part, validator = Path(f"{out}.part"), Path(f"{out}.part.validator")
    async with half_then_rest() as (url, requests):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "opensocket",
            "http",
            "get",
            "-o",
            str(out),
            url,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            # written once the head is in and before the body: the 1000 bytes that came with
            # the head are written before the interrupt (cancellation waits for an await)
            await wait_for(validator)
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(10):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 130
        kept = f"the partial download is kept in {part}: run the same command with -C to resume"
        assert f"opensocket http get: interrupted: {kept}".encode() in err
        assert validator.read_text() == ETAG + "\n" and not out.exists()
        assert part.read_bytes() == FULL[:1000]
        assert await get("-C", "-o", str(out), url) == 0
        sent = dict(requests[-1].headers)
        assert (sent[b"range"], sent[b"if-range"]) == (b"bytes=1000-", ETAG.encode())
    assert out.read_bytes() == FULL and not part.exists() and not validator.exists()


async def test_dev_stdout_redirected_to_a_file_appends_instead_of_replacing(
    server: HttpServer, site: Path, tmp_path: Path
) -> None:
    log = tmp_path / "keep.log"
    log.write_text("precious line\n")
    with open(log, "ab") as append:  # as the shell's ">> keep.log" opens it
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "opensocket", "http", "get", "-o", "/dev/stdout",
            server.url + "hello.txt", stdout=append,
        )  # fmt: skip
        assert await proc.wait() == 0
    assert log.read_bytes() == b"precious line\n" + (site / "hello.txt").read_bytes()


def test_a_folder_name_for_a_missing_folder_is_refused(tmp_path: Path) -> None:
    assert main(["http", "get", "-o", f"{tmp_path}/newdir/", "http://127.0.0.1:9/x"]) == 2
    assert not (tmp_path / "newdir").exists()
