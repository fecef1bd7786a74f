"""The blocking sockets refuse an oversized message at send time (FrameTooLarge), before it
enters a queue or a session, as the asyncio sockets do."""

from __future__ import annotations

import pytest

from opensocket.errors import FrameTooLarge
from opensocket.messaging import SessionOptions
from opensocket.options import ProtocolOptions
from opensocket.sync.messaging import Publisher, Puller, Pusher, Requester, Subscriber

from .conftest import LOCAL, closing, settle

SMALL = ProtocolOptions(max_frame_size=4096)


def test_the_core_limit_comes_from_the_protocol_options() -> None:
    default, small = Pusher(), Pusher(protocol=SMALL)
    with closing(default, small):
        assert default.core.max_size == ProtocolOptions().max_frame_size
        assert small.core.max_size == 4096


def test_an_oversized_push_raises_and_never_enters_the_session() -> None:
    push = Pusher(sessions=SessionOptions(), protocol=SMALL)
    pull = Puller(sessions=SessionOptions(), protocol=SMALL)
    with closing(pull, push):
        pull.connect(push.bind(LOCAL))
        settle(push, lambda: push.peers == 1 and all(push.core.credit.values()))
        with pytest.raises(FrameTooLarge, match="maximum frame size of 4096"):
            push.send(b"x" * 5000)
        assert push.unsettled() == 0
        push.send(b"ok")
        assert pull.recv(timeout=5) == b"ok"


def test_an_oversized_message_raises_before_any_peer_is_connected() -> None:
    req = Requester(protocol=SMALL)
    with closing(req):
        with pytest.raises(FrameTooLarge):
            req.request(b"x" * 5000, timeout=1)
        assert not req.core.pending  # nothing half-queued


def test_with_sessions_the_limit_follows_a_peer_that_accepts_less() -> None:
    pub = Publisher(sessions=SessionOptions())
    sub = Subscriber(protocol=ProtocolOptions(max_frame_size=2048), sessions=SessionOptions())
    with closing(sub, pub):
        sub.connect(pub.bind(LOCAL))
        sub.subscribe("t", timeout=5)
        assert pub.core.max_size == 2048  # lowered from the default: a session would replay it
        with pytest.raises(FrameTooLarge):
            pub.publish("t", b"x" * 3000)
        pub.publish("t", b"fits")
        assert sub.recv(timeout=5) == ("t", b"fits")
