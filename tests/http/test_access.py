"""Access-log lines, and the HTTPS redirect plan, without sockets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os

from opensocket.http.access import AccessRecord, BufferedLineHandler, format_access
from opensocket.http.files import https_redirect

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
RECORD = AccessRecord("127.0.0.1", "GET", "/a b", "1.1", 200, 13, "http://x/", 'curl "8"')


def test_common_and_combined() -> None:
    assert (
        format_access(RECORD, "common", NOW)
        == '127.0.0.1 - - [14/Nov/2023:22:13:20 +0000] "GET /a b HTTP/1.1" 200 13'
    )
    assert format_access(RECORD, "combined", NOW).endswith('200 13 "http://x/" "curl \\"8\\""')


def test_unparsed_request_and_control_characters() -> None:
    bad = AccessRecord("::1", "", "", "", 400, 0)
    assert format_access(bad, "common", NOW).endswith('"-" 400 -')
    evil = AccessRecord("::1", "GET", '/"\x1b[31m\n', "1.1", 404, 5)
    line = format_access(evil, "common", NOW)
    assert "\x1b" not in line and "\n" not in line
    assert '"GET /\\"\\x1b[31m\\x0a HTTP/1.1"' in line


def test_json() -> None:
    obj = json.loads(format_access(RECORD, "json", NOW))
    assert obj["time"] == "2023-11-14T22:13:20Z"
    assert obj["status"] == 200
    assert obj["target"] == "/a b"
    assert obj["agent"] == 'curl "8"'


def test_https_redirect() -> None:
    def location(host: str, target: str, port: int) -> str:
        plan = https_redirect(host, target, port)
        assert plan.status == 308
        return dict(plan.headers)["Location"]

    assert location("example.com:8080", "/a?b", 8443) == "https://example.com:8443/a?b"
    assert location("example.com", "/", 443) == "https://example.com/"
    assert location("[::1]:80", "/x", 8443) == "https://[::1]:8443/x"
    assert https_redirect("", "/", 443).status == 400
    assert https_redirect("evil.com/x", "/", 443).status == 400


class CountingStream(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def _logger(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(f"opensocket.test.access.{id(handler)}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return log


def test_buffered_handler_flushes_at_once_outside_a_loop() -> None:
    stream = CountingStream()
    _logger(BufferedLineHandler(stream)).info("one")
    assert (stream.getvalue(), stream.flushes) == ("one\n", 1)


async def test_buffered_handler_flushes_once_for_many_lines_in_a_loop() -> None:
    stream = CountingStream()
    handler = BufferedLineHandler(stream)
    log = _logger(handler)
    for i in range(100):
        log.info("line %d", i)
    assert stream.flushes == 0  # written to the stream's buffer, not flushed per line
    assert stream.getvalue().count("\n") == 100
    for _ in range(300):  # 3 s at most; the handler flushes FLUSH_DELAY after the first line
        if stream.flushes:
            break
        await asyncio.sleep(0.01)
    assert stream.flushes == 1
    log.info("later")
    handler.close()
    assert stream.flushes >= 2 and stream.getvalue().endswith("later\n")
    log.removeHandler(handler)


def test_shared_lines_from_two_processes_are_never_torn() -> None:
    # Two writers flush batches bigger than a whole pipe into one pipe at the same moment,
    # while the reader drains it slowly (so writes block and split): each line must still
    # arrive whole, as the access-log lines of several --workers do.
    import re
    import subprocess
    import sys
    import time

    script = (
        "import sys, time\n"
        "from opensocket.http.access import SharedLines\n"
        "out, tag = SharedLines(1), sys.argv[1]\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "for i in range(20000):\n"
        "    out.write(f'{tag} {i:05d} ' + 'x' * (i % 150) + '\\n')\n"
        "    if i % 1000 == 999:\n"
        "        out.flush()\n"
        "out.flush()\n"
    )
    read, write = os.pipe()
    start = str(time.time() + 1.0)  # both write at once, after their start-up
    try:
        writers = [
            subprocess.Popen([sys.executable, "-c", script, tag, start], stdout=write)
            for tag in ("alpha", "omega")
        ]
    finally:
        os.close(write)
    chunks = []
    with os.fdopen(read, "rb", buffering=0) as pipe:
        while chunk := pipe.read(4096):
            chunks.append(chunk)
            time.sleep(0.0002)  # a slow reader keeps the pipe full
    assert all(w.wait(timeout=30) == 0 for w in writers)
    pattern = re.compile(r"^(alpha|omega) (\d{5}) (x*)$")
    seen: dict[str, list[int]] = {"alpha": [], "omega": []}
    for line in b"".join(chunks).decode().splitlines():
        found = pattern.match(line)
        assert found and len(found[3]) == int(found[2]) % 150, f"torn line: {line!r}"
        seen[found[1]].append(int(found[2]))
    assert seen == {"alpha": list(range(20000)), "omega": list(range(20000))}
