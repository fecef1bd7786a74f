"""The asyncio messaging sockets against peers in other processes, killed with SIGKILL."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from opensocket.aio.messaging import Puller, Pusher, Requester
from opensocket.errors import RequestAborted
from opensocket.messaging import BackoffOptions, PullOptions, PushOptions

FAST = BackoffOptions(base=0.02, max_delay=0.1)

# A replier that holds every request (mode "hold") or echoes it reversed ("echo"), and a
# puller that takes one message, reports it, and never acknowledges it.
PEER = """
import asyncio, sys
from opensocket.aio.messaging import Replier, Puller
from opensocket.messaging import PullOptions

async def main(mode, url):
    if mode == "pull":
        sock = Puller(PullOptions(acks=True, prefetch=4))
        await sock.connect(url)
        print("ready", flush=True)
        print("took", (await sock.recv(timeout=10)).decode(), flush=True)
    else:
        async def handler(message):
            if mode == "hold":
                print("holding", message.decode(), flush=True)
                await asyncio.Event().wait()
            return message[::-1]
        sock = Replier(handler)
        await sock.bind(url)
        print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


class Peer:
    """A peer process and its stdout lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(10):
            raw = await self.proc.stdout.readline()
        assert raw, "the peer process exited"
        return raw.decode().strip()

    async def kill(self) -> None:
        self.proc.kill()  # SIGKILL, by PID: no goodbye on the wire
        await self.proc.wait()


Spawn = Callable[[str, str], Awaitable[Peer]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    started: list[Peer] = []

    async def start(mode: str, url: str) -> Peer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PEER, mode, url, stdout=asyncio.subprocess.PIPE
        )
        peer = Peer(proc)
        started.append(peer)
        assert await peer.line() == "ready"
        return peer

    yield start
    for peer in started:
        if peer.proc.returncode is None:
            await peer.kill()


async def test_replier_process_killed_mid_request_then_restarted(
    spawn: Spawn, free_port: int
) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    first = await spawn("hold", url)
    req = Requester(backoff=FAST)
    await req.connect(url)
    plain = asyncio.ensure_future(req.request(b"once"))
    retry = asyncio.ensure_future(req.request(b"again", retryable=True))
    assert sorted([await first.line(), await first.line()]) == ["holding again", "holding once"]
    await first.kill()
    async with asyncio.timeout(5):
        with pytest.raises(RequestAborted):
            await plain
    await spawn("echo", url)
    async with asyncio.timeout(10):
        assert await retry == b"niaga"
    assert req.stats.redeliveries == 1
    await req.close(linger=0)


async def test_puller_process_killed_holding_work_nothing_lost(spawn: Spawn) -> None:
    push = Pusher(PushOptions(acks=True))
    url = await push.bind("tcp://127.0.0.1:0")
    worker = await spawn("pull", url)
    async with asyncio.timeout(5):
        while push.peers < 1 or not all(push.core.credit.values()):
            await push._wait_progress()
    for i in range(20):
        await push.send(b"%d" % i)
    took = await worker.line()
    await worker.kill()
    survivor = Puller(PullOptions(acks=True, prefetch=4))
    await survivor.connect(url)
    got = [await survivor.recv(timeout=5) for _ in range(20)]
    survivor.done()
    assert sorted(got, key=int) == [b"%d" % i for i in range(20)]
    assert took.split()[1].encode() in got  # the killed worker's message was redelivered
    assert push.core.redelivered == 4  # its whole prefetch
    assert await push.close(linger=2) == 0
    await survivor.close()
