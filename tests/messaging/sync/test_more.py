"""Blocking messaging sockets: batches, concurrent publishers on one socket, unix sockets
with a secret, TLS, unsendable messages, lost sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from opensocket.errors import AuthenticationFailed
from opensocket.messaging import Event, PullOptions, PushOptions, SessionLost, SessionOptions
from opensocket.options import ProtocolOptions
from opensocket.sync.messaging import (
    Pair,
    Publisher,
    Puller,
    Pusher,
    Replier,
    Requester,
    Subscriber,
)
from tests.sync.conftest import in_thread
from tests.tlsutil import make_pki

from .conftest import FAST, LOCAL, closing, settle


def test_batches_with_acks_are_acknowledged_by_the_next_call() -> None:
    push = Pusher(PushOptions(acks=True))
    pull = Puller(PullOptions(acks=True, prefetch=50))
    with closing(pull, push):
        pull.connect(push.bind(LOCAL))
        push.send_many([b"%d" % i for i in range(200)])
        got: list[bytes] = []
        while len(got) < 200:
            got.extend(pull.recv_many(max_messages=30, timeout=5))
        pull.done()
        assert got == [b"%d" % i for i in range(200)]
        settle(push, lambda: push.core.acked == 200)
        assert push.close(linger=1) == 0


def test_publish_many_from_several_threads_each_in_order() -> None:
    sub = Subscriber(codec="json")
    pub_json = Publisher(codec="json")
    with closing(sub, pub_json):
        sub.connect(pub_json.bind(LOCAL))
        sub.subscribe("", timeout=5)
        threads = [
            in_thread(lambda t=t: [pub_json.publish_many(f"t{t}", [[t, i]]) for i in range(300)])
            for t in range(4)
        ]
        for thread, _ in threads:
            thread.join(10)
        got: list[tuple[str, list[int]]] = []
        while len(got) < 1200:
            got.extend(sub.recv_many(timeout=5))
        for t in range(4):  # one publisher socket, four threads: each thread's order kept
            assert [m[1] for topic, m in got if topic == f"t{t}"] == list(range(300))


def test_unix_socket_with_shared_secret(sock_path: str) -> None:
    url = f"unix://{sock_path}"
    rep = Replier(lambda m: m[::-1], secret="s3cret-shared")
    req = Requester(secret="s3cret-shared")
    intruder = Requester(secret="wrong-secret")
    with closing(req, intruder, rep):
        rep.bind(url)
        req.connect(url)
        assert req.request(b"abc", timeout=5) == b"cba"
        with pytest.raises(AuthenticationFailed):
            intruder.connect(url)


def test_oversized_message_closes_only_that_link() -> None:
    pub = Publisher()
    tiny = Subscriber(protocol=ProtocolOptions(max_frame_size=4096), backoff=FAST)
    big = Subscriber()
    with closing(tiny, big, pub):
        url = pub.bind(LOCAL)
        for sub in (tiny, big):
            sub.connect(url)
            sub.subscribe("t", timeout=5)
        pub.publish("t", b"x" * 10_000)  # over tiny's limit, fine for big
        assert big.recv(timeout=5) == ("t", b"x" * 10_000)
        assert pub.stats.drops["unsendable"] == 1  # counted, never silent
        settle(tiny, lambda: tiny.stats.reconnects == 1 and tiny.core.ready(b"t"))
        pub.publish("t", b"ok")
        assert tiny.recv(timeout=5) == ("t", b"ok")
        assert big.recv(timeout=5) == ("t", b"ok")


def test_session_lost_is_reported_when_the_server_forgot_it(free_port: int) -> None:
    url = f"tcp://127.0.0.1:{free_port}"
    seen: list[Event] = []
    pair = Pair(sessions=SessionOptions())
    pair.bind(url)
    peer = Pair(sessions=SessionOptions(), backoff=FAST, on_event=seen.append)
    restarted = Pair(sessions=SessionOptions())
    with closing(peer, restarted, pair):
        peer.connect(url)
        settle(pair, lambda: pair.peers == 1)
        pair.close(linger=0)  # a restarted server knows no session
        restarted.bind(url)
        settle(peer, lambda: any(isinstance(e, SessionLost) for e in seen))
        lost = next(e for e in seen if isinstance(e, SessionLost))
        assert "no longer knows" in lost.reason
        assert peer.stats.sessions_lost == 1
        settle(restarted, lambda: restarted.peers == 1)
        peer.send(b"fresh")
        assert restarted.recv(timeout=5) == b"fresh"


def test_tls_request_reply_and_pipeline_with_a_real_pki(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    rep = Replier(lambda m: m.upper(), tls=pki.server_tls())
    req = Requester(tls=pki.client_tls())
    push = Pusher(tls=pki.server_tls())
    pull = Puller(tls=pki.client_tls())
    with closing(req, rep, pull, push):
        req.connect(rep.bind("tls://127.0.0.1:0"))
        assert req.request(b"secret", timeout=5) == b"SECRET"
        pull.connect(push.bind("tls://127.0.0.1:0"))
        push.send_many([b"%d" % i + b"." * 5000 for i in range(300)])
        got = [pull.recv(timeout=5) for _ in range(300)]
        assert [int(m.split(b".")[0]) for m in got] == list(range(300))
