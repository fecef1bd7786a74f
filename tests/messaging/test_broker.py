"""The broker over real loopback connections: request/reply and publish/subscribe."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import Callable

import pytest

from opensocket.aio.messaging import Broker, Publisher, Replier, Requester, Socket, Subscriber
from opensocket.cli import broker as cli_broker
from opensocket.errors import AddressError, ConfigError
from opensocket.messaging import BackoffOptions

FAST = BackoffOptions(base=0.02, max_delay=0.1)
LOCAL = "tcp://127.0.0.1:0"


async def until(sock: Socket, condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (event-driven: each pump of ``sock``) until ``condition`` holds."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await sock._wait_progress(deadline)


def worker(name: str, seen: Counter[str]) -> Replier:
    async def handle(message: bytes) -> bytes:
        seen[name] += 1
        return name.encode() + b":" + message

    return Replier(handle, backoff=FAST)


async def test_reqrep_two_requesters_three_workers_every_request_answered_once() -> None:
    broker = Broker("reqrep")
    front, back = await broker.bind(LOCAL, LOCAL)
    seen: Counter[str] = Counter()
    workers = [worker(f"w{i}", seen) for i in range(3)]
    for w in workers:
        await w.connect(back)
    await until(broker.back, lambda: broker.back.peers == 3)
    requesters = [Requester(backoff=FAST) for _ in range(2)]
    for r in requesters:
        await r.connect(front)

    async def one(r: Requester, text: str) -> tuple[str, bytes]:
        return text, await r.request(text.encode(), timeout=5)

    async with asyncio.timeout(10):
        got = await asyncio.gather(
            *(one(r, f"r{n}-{i}") for n, r in enumerate(requesters) for i in range(150))
        )
    for text, reply in got:  # each reply is the answer to its own request
        name, _, echoed = reply.partition(b":")
        assert echoed == text.encode() and name in (b"w0", b"w1", b"w2")
    assert sum(seen.values()) == 300  # each request handled exactly once
    assert all(seen[f"w{i}"] > 0 for i in range(3)), seen  # spread over every worker
    assert broker.forwarded == 300 and broker.failed == 0
    for sock in (*requesters, *workers):
        await sock.close(linger=0.5)
    assert await broker.close(linger=0.5) == 0


async def test_reqrep_worker_killed_mid_request_retryable_go_to_another() -> None:
    broker = Broker("reqrep")
    front, back = await broker.bind(LOCAL, LOCAL)
    victim = Replier(backoff=FAST)  # takes requests and never answers
    await victim.connect(back)
    await until(broker.back, lambda: broker.back.peers == 1)
    req = Requester(backoff=FAST)
    await req.connect(front)
    retry = [asyncio.ensure_future(req.request(f"r{i}".encode(), retryable=True)) for i in range(3)]
    plain = asyncio.ensure_future(req.request(b"plain"))
    async with asyncio.timeout(5):
        held = [await victim.recv_request() for _ in range(4)]
    assert sorted(r.message for r in held) == [b"plain", b"r0", b"r1", b"r2"]

    seen: Counter[str] = Counter()
    survivors = [worker("s0", seen), worker("s1", seen)]
    for w in survivors:
        await w.connect(back)
    await until(broker.back, lambda: broker.back.peers == 3)
    await victim.close(linger=0)  # dies holding all four
    async with asyncio.timeout(5):
        replies = await asyncio.gather(*retry)
        with pytest.raises(Exception, match="RequestAborted"):  # not retryable: an error reply
            await plain
    assert sorted(r.partition(b":")[2] for r in replies) == [b"r0", b"r1", b"r2"]
    assert all(r.partition(b":")[0] in (b"s0", b"s1") for r in replies)
    assert sum(seen.values()) == 3  # each retryable one answered once, by a survivor
    assert broker.back.stats.redeliveries == 3
    assert broker.failed == 1
    for sock in (req, *survivors):
        await sock.close(linger=0.5)
    await broker.close(linger=0.5)


async def test_pubsub_many_publishers_many_subscribers_filtered() -> None:
    broker = Broker("pubsub", backoff=FAST)
    front, back = await broker.bind(LOCAL, LOCAL)
    prefixes = {"a": "news.", "b": "news.sport", "c": "weather"}
    subs = {name: Subscriber(backoff=FAST) for name in prefixes}
    for name, sub in subs.items():
        await sub.connect(back)
        await sub.subscribe(prefixes[name], timeout=5)
    pubs = [Publisher(backoff=FAST) for _ in range(2)]
    for pub in pubs:
        await pub.connect(front)
    await until(broker.front, lambda: broker.front.peers == 2)
    for prefix in prefixes.values():
        await broker.ready(prefix, timeout=5)  # every publisher holds it: nothing missed
    assert broker.front.core.topics == {b"news.", b"news.sport", b"weather"}  # type: ignore[attr-defined]

    topics = ["news.sport.f1", "news.tech", "weather.paris", "stocks.acme"]
    sent: list[tuple[str, bytes]] = []
    for n, pub in enumerate(pubs):
        for i in range(50):
            topic = topics[i % len(topics)]
            payload = f"p{n}-{i}".encode()
            await pub.publish(topic, payload)
            sent.append((topic, payload))
    expected = {
        name: sorted(m for m in sent if m[0].startswith(prefix))
        for name, prefix in prefixes.items()
    }
    got: dict[str, list[tuple[str, bytes]]] = {}
    async with asyncio.timeout(5):
        for name, sub in subs.items():
            got[name] = sorted([await sub.recv() for _ in range(len(expected[name]))])
    for name, sub in subs.items():
        assert got[name] == expected[name]  # every matching message, once
        with pytest.raises(Exception, match="no message"):  # and nothing else
            await sub.recv(timeout=0.05)
    # Filtering happened at the publishers: "stocks." never crossed into the broker.
    wanted = [m for m in sent if m[0].startswith(tuple(prefixes.values()))]
    assert len(wanted) == 76 and len(sent) == 100  # 24 "stocks." messages match nobody
    assert sum(pub.stats.messages_out for pub in pubs) == 76
    assert broker.front.stats.messages_in == 76
    assert broker.forwarded == 76

    await subs["c"].close(linger=0)  # nobody wants weather any more: dropped upstream
    await until(broker.front, lambda: b"weather" not in broker.front.core.topics)  # type: ignore[attr-defined]
    for sock in (*pubs, subs["a"], subs["b"]):
        await sock.close(linger=0.5)
    await broker.close(linger=0.5)


async def test_broker_rejects_bad_mode_and_codec() -> None:
    with pytest.raises(ConfigError, match="unknown broker mode"):
        Broker("fanout")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no codec"):
        Broker("reqrep", codec="json")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="opensocket broker")
    cli_broker.configure(parser)
    return parser.parse_args(argv)


def test_cli_broker_rejects_an_unusable_address() -> None:
    args = _parse(["--mode", "reqrep", "--front", "udp://127.0.0.1:0", "--back", LOCAL])
    with pytest.raises(AddressError, match=r"--front udp://127\.0\.0\.1:0"):
        cli_broker.execute(args)


_RUN = (
    "import sys, argparse; from opensocket.cli import broker as b; "
    "p = argparse.ArgumentParser(); b.configure(p); sys.exit(b.execute(p.parse_args(sys.argv[1:])))"
)


async def test_cli_broker_process_forwards_requests_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _RUN, "--mode", "reqrep", "--front", LOCAL, "--back", LOCAL,
        "--json", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(10):
            banner = json.loads(await proc.stdout.readline())
            assert banner["event"] == "listening" and banner["mode"] == "reqrep"
            rep = Replier(lambda m: asyncio.sleep(0, m.upper()), backoff=FAST)
            await rep.connect(banner["back"])
            req = Requester(codec="json", backoff=FAST)
            await req.connect(banner["front"])
            assert await req.request("hi", timeout=5) == "HI"  # JSON bytes, upper-cased
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            out = await proc.stdout.read()
            assert await proc.wait() == 0
    assert json.loads(out)["forwarded"] == 1
    await req.close(linger=0.5)
    await rep.close(linger=0.5)


async def test_reqrep_request_queued_before_any_worker_is_answered() -> None:
    broker = Broker("reqrep")
    front, back = await broker.bind(LOCAL, LOCAL)
    req = Requester(backoff=FAST)
    await req.connect(front)
    pending = asyncio.ensure_future(req.request(b"early", timeout=5))  # a worker connects first
    await until(broker.front, lambda: broker.front.stats.messages_in == 1)  # at the broker
    seen: Counter[str] = Counter()
    late = worker("late", seen)
    await late.connect(back)  # the broker sends the queued request at once
    try:
        assert await pending == b"late:early"
    finally:
        for sock in (req, late):
            await sock.close(linger=0)
        await broker.close(linger=0)
