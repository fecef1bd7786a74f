"""``opensocket broker``: help with pasteable examples, usage errors that name the flag, and a
real broker process over TLS with a secret from the environment (never on its command line)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
from pathlib import Path

import pytest

from opensocket.aio.messaging import Replier, Requester
from opensocket.cli import main, parse_args
from opensocket.messaging import BackoffOptions
from tests.tlsutil import make_pki

FAST = BackoffOptions(base=0.02, max_delay=0.1)
LOCAL = "tcp://127.0.0.1:0"
CLI = [sys.executable, "-c", "from opensocket.cli import run; run()"]
BASE = ["broker", "--mode", "reqrep", "--front", LOCAL, "--back", LOCAL]


def test_help_examples_parse_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--balance", "--tls-cert", "--tls-key", "--secret-env", "--secret-file"):
        assert flag in out
    section = out.split("\nexamples:\n", 1)[1].replace("\\\n", " ")
    examples = [line for line in section.splitlines() if line.strip()]
    assert len(examples) >= 5
    for line in examples:
        words = shlex.split(line, comments=True)
        assert words[0] == "opensocket", line
        parse_args(words[1:])  # a UsageError if an example does not parse


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--front", "tls://127.0.0.1:0"], "--front tls://127.0.0.1:0: a tls:// address needs"),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], "apply to tls:// addresses only"),
        (["--secret-env", "OPENSOCKET_TEST_UNSET_VAR"], "OPENSOCKET_TEST_UNSET_VAR is not set"),
        (["--request-timeout", "0"], "--request-timeout must be a positive number"),
        (["--front", "udp://127.0.0.1:0"], "listens on tcp://, tls:// or unix://"),
    ],
)
def test_usage_errors_name_the_flag(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*BASE, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opensocket broker: error: ") and message in err, err


def test_reqrep_options_are_refused_in_pubsub_mode(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["broker", "--mode", "pubsub", "--front", LOCAL, "--back", LOCAL, "--balance"]
    assert main([*argv, "round-robin", "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out == {"error": "--balance applies to --mode reqrep only", "exit": 2}


def test_a_short_secret_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("short\n")
    assert main([*BASE, "--secret-file", str(secret)]) == 2
    assert "at least 8 bytes" in capsys.readouterr().err


def test_the_broker_takes_no_codec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--codec", "json"]) == 2
    assert "unrecognized arguments: --codec" in capsys.readouterr().err


async def test_tls_broker_process_with_a_secret_from_the_environment(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    secret = "cli-broker-secret-value"
    proc = await asyncio.create_subprocess_exec(
        *CLI, "broker", "--mode", "reqrep", "--front", "tls://127.0.0.1:0",
        "--back", "tls://127.0.0.1:0", "--tls-cert", pki.server_cert, "--tls-key",
        pki.server_key, "--secret-env", "BROKER_SECRET", "--json",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "BROKER_SECRET": secret},
    )  # fmt: skip
    assert proc.stdout is not None
    socks: list[Replier | Requester] = []
    try:
        async with asyncio.timeout(10):
            banner = json.loads(await proc.stdout.readline())
        assert banner["event"] == "listening" and banner["balance"] == "least-loaded"
        assert banner["secret"] is True and secret not in json.dumps(banner)
        assert banner["front"].startswith("tls://") and banner["back"].startswith("tls://")
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline  # what ps shows
        worker = Replier(lambda m: asyncio.sleep(0, m.upper()), tls=pki.client_tls(), secret=secret)
        socks.append(worker)
        await worker.connect(banner["back"])
        req = Requester(tls=pki.client_tls(), secret=secret, backoff=FAST)
        socks.append(req)
        await req.connect(banner["front"])
        assert await req.request(b"secure", timeout=5) == b"SECURE"
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            out = await proc.stdout.read()
            assert await proc.wait() == 0
        for sock in socks:
            await sock.close(linger=0.5)
    stopped = json.loads(out)
    assert stopped["event"] == "stopped" and stopped["forwarded"] == 1


async def test_text_banner_says_where_and_how_to_stop() -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "broker", "--mode", "pubsub", "--front", LOCAL, "--back", LOCAL,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(10):
            first = (await proc.stdout.readline()).decode()
            second = (await proc.stdout.readline()).decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest = (await proc.stdout.read()).decode()
            assert await proc.wait() == 0
    assert first.startswith("pubsub broker: front tcp://127.0.0.1:") and ", back tcp://" in first
    assert second == "press Ctrl-C to stop\n"
    assert rest  # the stop summary
