"""``opensocket http serve --workers N``: pre-forked processes on one port, a dead worker
replaced, all stopped together; and the supervisor (``opensocket.prefork``) on its own."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from opensocket.cli import main

from ..tlsutil import make_pki
from .test_cli import _serve

WAIT = 10.0
LINE = re.compile(r'^127\.0\.0\.1 - - \[[^]]+\] "GET /(index\.html)? HTTP/1\.1" 200 \d+$')


def _workers(proc: subprocess.Popen[str], count: int) -> list[int]:
    """The worker PIDs once there are ``count`` of them (bounded wait)."""
    deadline = time.monotonic() + WAIT
    while True:
        pids = [child.pid for child in psutil.Process(proc.pid).children()]
        if len(pids) == count or time.monotonic() > deadline:
            assert len(pids) == count, f"workers: {pids}"
            return sorted(pids)
        time.sleep(0.05)  # polling another process's children: there is no event to wait on


def _get(url: str, times: int) -> None:
    for _ in range(times):  # a new connection each time: any worker may take it
        with httpx.Client(timeout=WAIT) as client:
            assert client.get(url).text == "home\n"


def test_workers_share_the_port_replace_a_dead_one_and_stop_together(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("home\n")
    proc, url = _serve([str(tmp_path), "--listen", "127.0.0.1:0", "--workers", "3"])
    try:
        first = _workers(proc, 3)
        _get(url, 10)
        assert proc.stdout is not None
        logged = [proc.stdout.readline() for _ in range(10)]  # out within FLUSH_DELAY
        os.kill(first[0], signal.SIGKILL)  # one of ours: the master must replace it
        deadline = time.monotonic() + WAIT
        while (now := _workers(proc, 3)) and first[0] in now:
            assert time.monotonic() < deadline, "the killed worker was not reaped"
            time.sleep(0.05)
        assert set(now) & set(first) == set(first[1:])  # the others kept running
        _get(url, 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert all(not psutil.pid_exists(pid) for pid in {*first, *now})  # nobody left behind
    assert f"worker {first[0]} was killed by SIGKILL: starting another" in err
    lines = [line.rstrip("\n") for line in logged] + out.splitlines()
    assert len(lines) == 20 and all(LINE.match(line) for line in lines), lines  # all logged


def test_workers_serve_https_and_check_the_files_once(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("home\n")
    pki = make_pki(tmp_path)
    tls = ["--tls-cert", pki.server_cert, "--tls-key", pki.server_key]
    proc, url = _serve([str(tmp_path), "--listen", "https://127.0.0.1:0", "--workers", "2", *tls])
    try:
        _workers(proc, 2)
        done = subprocess.run(
            ["curl", "-sS", "--cacert", pki.ca_cert, url], capture_output=True, timeout=10
        )
        assert done.stdout == b"home\n", done.stderr
    finally:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C would, to the master alone
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    bad = [*tls[:2], "--tls-key", str(tmp_path / "missing.pem")]
    argv = ["http", "serve", str(tmp_path), "--listen", "https://127.0.0.1:0", "--workers", "2"]
    assert main([*argv, *bad]) != 0  # refused before any worker starts


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_must_be_positive(workers: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["http", "serve", ".", "--listen", "127.0.0.1:0", "--workers", workers]) == 2
    assert "--workers must be 1 or more" in capsys.readouterr().err


def test_supervisor_gives_up_when_workers_die_at_serve() -> None:
    script = textwrap.dedent(
        """
        import logging, sys
        from opensocket.prefork import run_workers
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        sys.exit(run_workers(2, lambda: 3))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "exited with status 3" in done.stderr
    assert "workers keep dying at start: stopping" in done.stderr


STUBBORN = textwrap.dedent(
    """
    import logging, signal, sys, time
    from opensocket.prefork import run_workers
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    def stubborn():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("up", flush=True)
        time.sleep(60)
        return 0
    sys.exit(run_workers(1, stubborn, grace=0.3))
    """
)


def test_supervisor_kills_a_worker_that_will_not_stop() -> None:
    script = STUBBORN
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "up\n"
    worker = _workers(proc, 1)[0]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f"worker {worker} did not stop within 0.3 s: killed" in err
    assert not psutil.pid_exists(worker)


def test_a_second_signal_stops_stubborn_workers_at_once() -> None:
    script = STUBBORN.replace("grace=0.3", "grace=60")
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "up\n"
    worker = _workers(proc, 1)[0]
    proc.send_signal(signal.SIGTERM)  # the worker ignores it: the parent would wait 60 s
    time.sleep(0.2)  # let the parent reach its wait (a signal before it is also handled)
    proc.send_signal(signal.SIGINT)  # a second Ctrl-C: stop now
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err  # a clean stop, not a KeyboardInterrupt
    assert "did not stop" not in err and "Traceback" not in err
    assert not psutil.pid_exists(worker)


def test_workers_end_when_their_parent_is_killed(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("home\n")
    proc, url = _serve([str(tmp_path), "--listen", "127.0.0.1:0", "--workers", "2"])
    workers = _workers(proc, 2)
    proc.kill()  # SIGKILL: the parent cannot stop them itself
    proc.communicate(timeout=10)
    try:
        deadline = time.monotonic() + WAIT
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "workers outlived their parent"
            time.sleep(0.05)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=2)  # nobody holds the port any more
    finally:
        for pid in workers:  # ours: not left running if the test fails
            with contextlib.suppress(psutil.NoSuchProcess):
                worker = psutil.Process(pid)
                if "serve" in worker.cmdline():  # still our worker, not a reused PID
                    worker.kill()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
