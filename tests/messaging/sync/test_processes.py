"""Blocking messaging sockets against peers in other processes, killed with SIGKILL."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from opensocket.errors import RequestAborted
from opensocket.messaging import PullOptions, PushOptions
from opensocket.sync.messaging import Puller, Pusher, Requester
from tests.sync.conftest import in_thread

from .conftest import FAST, closing, settle

# A blocking replier that holds every request ("hold") or echoes it reversed ("echo"), and a
# blocking puller that takes one message, reports it, and never acknowledges it.
PEER = """
import sys, threading
from opensocket.sync.messaging import Replier, Puller
from opensocket.messaging import PullOptions

mode, url = sys.argv[1], sys.argv[2]
said = threading.Lock()
if mode == "pull":
    sock = Puller(PullOptions(acks=True, prefetch=4))
    sock.connect(url)
    print("ready", flush=True)
    print("took " + sock.recv(timeout=10).decode(), flush=True)
else:
    def handler(message):
        if mode == "hold":
            with said:  # handlers run in parallel: one whole line each
                print("holding " + message.decode(), flush=True)
            threading.Event().wait()
        return message[::-1]
    sock = Replier(handler, concurrency=4)
    sock.bind(url)
    print("ready", flush=True)
threading.Event().wait()
"""


class Peer:
    """A peer process and its stdout lines (read with a deadline)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._pending = b""
        self._selector = selectors.DefaultSelector()
        assert proc.stdout is not None
        self._selector.register(proc.stdout, selectors.EVENT_READ)

    def line(self, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self._pending:
            assert self._selector.select(timeout), "the peer process said nothing in time"
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            assert chunk, "the peer process exited"
            self._pending += chunk
        raw, self._pending = self._pending.split(b"\n", 1)
        return raw.decode().strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL, by PID: no goodbye on the wire
        self.proc.wait(10)
        self._selector.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


Spawn = Callable[[str, str], Peer]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    started: list[Peer] = []

    def start(mode: str, url: str) -> Peer:
        proc = subprocess.Popen([sys.executable, "-c", PEER, mode, url], stdout=subprocess.PIPE)
        peer = Peer(proc)
        started.append(peer)
        assert peer.line() == "ready"
        return peer

    yield start
    for peer in started:
        peer.kill()


def test_replier_process_killed_mid_request_then_restarted(spawn: Spawn, free_port: int) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    first = spawn("hold", url)
    req = Requester(backoff=FAST)
    with closing(req, linger=0):
        req.connect(url)
        plain, plain_result = in_thread(lambda: req.request(b"once"))
        retry, retry_result = in_thread(lambda: req.request(b"again", retryable=True))
        assert sorted([first.line(), first.line()]) == ["holding again", "holding once"]
        first.kill()
        assert isinstance(plain_result.get(timeout=5), RequestAborted)  # no hang
        spawn("echo", url)
        assert retry_result.get(timeout=10) == b"niaga"
        assert req.stats.redeliveries == 1
        plain.join(5)
        retry.join(5)


def test_puller_process_killed_holding_work_nothing_lost(spawn: Spawn) -> None:
    push = Pusher(PushOptions(acks=True))
    survivor = Puller(PullOptions(acks=True, prefetch=4))
    with closing(survivor, push):
        url = push.bind("tcp://127.0.0.1:0")
        worker = spawn("pull", url)
        settle(push, lambda: push.peers == 1 and all(push.core.credit.values()))
        for i in range(20):
            push.send(b"%d" % i)
        took = worker.line()
        worker.kill()
        survivor.connect(url)
        got = [survivor.recv(timeout=5) for _ in range(20)]
        survivor.done()
        assert sorted(got, key=int) == [b"%d" % i for i in range(20)]
        assert took.split()[1].encode() in got  # the killed worker's message was redelivered
        assert push.core.redelivered == 4  # its whole prefetch
        assert push.close(linger=2) == 0
