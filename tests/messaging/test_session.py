"""Resumable sessions over an in-memory link cut at random points."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensocket.errors import ConfigError, MalformedEnvelope, ProtocolError, UnexpectedFrame
from opensocket.messaging.envelope import (
    Envelope,
    Kind,
    SessionHello,
    SessionStatus,
    encode,
    encode_hello,
)
from opensocket.messaging.events import Acked, SessionLost, SessionResumed, SessionStarted
from opensocket.messaging.session import (
    ResumeWindow,
    Session,
    SessionOptions,
    SessionState,
    SessionStore,
)

from .helpers import SessionLink


def numbered(prefix: str, count: int, start: int = 0) -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(start, start + count)]


def test_fresh_session_both_directions() -> None:
    link = SessionLink()
    link.send_client(b"early")  # queued before any link: goes out once the session exists
    link.connect()
    link.pump()
    assert link.server is not None
    assert link.client.state is link.server.state is SessionState.ATTACHED
    assert link.client.id == link.server.id == (1).to_bytes(16, "big")
    link.send_server(b"hello")
    link.send_client(b"world")
    link.pump()
    assert link.at_server.received == [b"early", b"world"]
    assert link.at_client.received == [b"hello"]
    sid = link.client.id
    assert link.at_client.events == [SessionStarted(sid), Acked(1, 1)]  # "hello" acked "early"
    assert link.at_server.events == [SessionStarted(sid)]


def test_acks_piggyback_count_and_delay() -> None:
    link = SessionLink(SessionOptions(ack_every=4, ack_delay=0.5))
    link.connect()
    link.pump()
    for payload in numbered("c", 3):
        link.send_client(payload)
    link.pump()
    assert link.client.held == 3  # no ack yet: below ack_every, delay not reached
    assert link.server is not None and link.server.get_timer() == 0.5
    link.send_server(b"s0")  # piggybacks the ack
    link.pump()
    assert link.client.held == 0
    assert link.at_client.of(Acked) == [Acked(3, 3)]
    for payload in numbered("c", 4, 3):
        link.send_client(payload)
    link.pump()  # the 4th triggers an explicit ACK at once
    assert link.client.held == 0
    link.send_client(b"c7")
    link.pump()
    assert link.client.held == 1
    link.advance(0.5)  # the delayed ack goes out
    link.pump()
    assert link.client.held == 0
    assert link.client.acked == 8
    assert link.at_server.received == numbered("c", 8)


@pytest.mark.parametrize("seed", range(12))
def test_random_cuts_every_message_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    link = SessionLink(SessionOptions(ack_every=rng.choice([1, 3, 16]), ack_delay=0.1))
    total = 300
    sent_c = sent_s = cuts = 0
    link.connect()
    link.pump()
    while sent_c < total or sent_s < total:
        for _ in range(rng.randint(1, 12)):
            if sent_c < total and rng.random() < 0.5:
                link.send_client(f"c{sent_c}".encode())
                sent_c += 1
            elif sent_s < total:
                link.send_server(f"s{sent_s}".encode())
                sent_s += 1
        if rng.random() < 0.3:
            link.advance(rng.choice([0.0, 0.05, 0.2]))
        if link.pump(rng.randint(0, 25)):
            continue
        link.cut()
        cuts += 1
        if rng.random() < 0.5:  # some sending while the link is down
            link.send_client(f"c{sent_c}".encode()) if sent_c < total else None
            sent_c += sent_c < total
        link.advance(rng.choice([0.0, 1.0]))
        link.connect()
    link.pump()
    link.advance(1.0)
    link.pump()
    assert cuts > 3
    assert link.at_server.received == numbered("c", total)
    assert link.at_client.received == numbered("s", total)
    assert not link.at_client.of(SessionLost) and not link.at_server.of(SessionLost)
    # a cut between SESSION and SESSION_OK resumes on the server side only
    assert 1 <= len(link.at_client.of(SessionResumed)) <= len(link.at_server.of(SessionResumed))
    assert link.client.held == 0 and link.server is not None and link.server.held == 0
    assert len(link.store.sessions) == 1


def test_replay_counts() -> None:
    link = SessionLink(SessionOptions(ack_every=100, ack_delay=10.0))
    link.connect()
    link.pump()
    for payload in numbered("c", 5):
        link.send_client(payload)
    assert not link.pump(3)  # SESSION was done; 3 of 5 arrive, 2 are in flight
    link.cut()
    link.connect()
    link.pump()
    (event,) = link.at_client.of(SessionResumed)
    assert event.replayed == 2  # the server had 3: only 2 go again
    assert link.at_server.of(SessionResumed) == [SessionResumed(link.client.id, 0)]
    assert link.at_server.received == numbered("c", 5)
    assert link.server is not None and link.server.duplicates == 0


def test_duplicate_frames_are_dropped() -> None:
    client = Session(connecting=True)
    store = SessionStore()
    client.link_up(0)
    server = store.open(*client.frames_to_send()[0], 0)
    for frame in server.frames_to_send():
        client.receive(*frame, 0)
    client.send(Envelope(Kind.MESSAGE, b"x"), 0)
    (frame,) = client.frames_to_send()
    server.receive(*frame, 0)
    server.receive(*frame, 0)
    assert [e.payload for e in server.take_messages()] == [b"x"]
    assert server.duplicates == 1


def test_past_the_window_session_lost_with_exact_counts() -> None:
    window = ResumeWindow(max_messages=5, max_bytes=1 << 20, max_age=100)
    link = SessionLink(SessionOptions(window=window, ack_every=1))
    link.connect()
    link.pump()
    link.send_client(b"c0")
    link.send_server(b"s0")
    link.pump()
    old_id = link.client.id
    link.cut()
    for payload in numbered("c", 8, 1):  # 8 while down: 3 fall out of the 5-message window
        link.send_client(payload)
    link.send_server(b"s1")  # the server's side is within its window
    assert link.client.evicted == 3
    link.connect()
    link.pump()
    (lost_c,) = link.at_client.of(SessionLost)
    (lost_s,) = link.at_server.of(SessionLost)
    assert (lost_c.session_id, lost_c.lost_out, lost_c.lost_in) == (old_id, 8, 1)
    assert (lost_s.session_id, lost_s.lost_out, lost_s.lost_in) == (old_id, 1, 8)
    assert lost_c.lost == lost_s.lost == 9
    assert link.client.id == link.server.id != old_id  # type: ignore[union-attr]
    # accounting: sent = received + lost, both directions
    assert len(link.at_server.received) + lost_s.lost_in == 9
    assert len(link.at_client.received) + lost_c.lost_in == 2
    link.send_client(b"after")
    link.pump()
    assert link.at_server.received == [b"c0", b"after"]
    assert len(link.store.sessions) == 1


def test_window_bytes_and_age() -> None:
    window = ResumeWindow(max_messages=100, max_bytes=10, max_age=5.0)
    link = SessionLink(SessionOptions(window=window, ack_delay=1.0))
    link.connect()
    link.pump()
    link.cut()
    link.send_client(b"123456")
    link.send_client(b"123456")  # 12 bytes > 10: the first is evicted
    assert (link.client.held, link.client.held_bytes, link.client.evicted) == (1, 6, 1)
    link.advance(5.0)  # the second ages out
    assert (link.client.held, link.client.evicted) == (0, 2)


def test_expired_session_unknown_to_the_server() -> None:
    window = ResumeWindow(max_age=10.0)
    link = SessionLink(SessionOptions(window=window))
    link.connect()
    link.pump()
    link.send_client(b"a")
    link.pump()
    link.advance(0.05)  # the server's delayed ack for "a"
    link.pump()
    link.cut()
    link.send_client(b"b")
    link.send_client(b"c")
    # the server expires its copy; the client (a slower clock here) has not yet
    link.now = 10.05
    expired = link.store.handle_timer(link.now)
    assert len(expired) == 1 and not link.store.sessions
    (server_lost,) = expired[0].events()
    assert isinstance(server_lost, SessionLost)
    assert server_lost.reason == "not resumed within 10s"
    link.now = 9.0
    link.connect()
    link.pump()
    (lost,) = link.at_client.of(SessionLost)
    assert lost.reason.startswith("the peer no longer knows the session")
    assert (lost.lost_out, lost.lost_in) == (2, 0)  # b and c were never confirmed
    assert link.at_client.of(SessionStarted)[-1].session_id == link.client.id


def test_client_side_expiry_then_fresh_session() -> None:
    link = SessionLink(SessionOptions(window=ResumeWindow(max_age=3.0)))
    link.connect()
    link.pump()
    link.cut()
    link.send_client(b"lost")
    link.advance(3.0)
    (lost,) = link.at_client.of(SessionLost)
    assert (lost.lost_out, lost.reason) == (1, "not resumed within 3s")
    link.send_client(b"new")
    link.connect()
    link.pump()
    assert link.at_server.received == [b"new"]
    assert len(link.at_client.of(SessionStarted)) == 2


def test_evicted_before_the_first_session() -> None:
    window = ResumeWindow(max_messages=2)
    link = SessionLink(SessionOptions(window=window))
    for payload in numbered("c", 5):
        link.send_client(payload)
    link.connect()
    link.pump()
    (lost,) = link.at_client.of(SessionLost)
    assert (lost.lost_out, lost.reason) == (3, "evicted before the session started")
    assert link.at_server.received == [b"c3", b"c4"]


def test_takeover_of_an_attached_session() -> None:
    link = SessionLink()
    link.connect()
    link.pump()
    server = link.server
    assert server is not None
    link.send_client(b"x")
    link.client.link_down(0)  # the client noticed; the server did not
    link.client.link_up(0)
    again = link.store.open(*link.client.frames_to_send()[0], 0)
    assert again is server and server.state is SessionState.ATTACHED
    assert server.events()[-1] == SessionResumed(server.id, 0)


def hello_pair() -> tuple[Session, Session]:
    client = Session(connecting=True)
    store = SessionStore()
    client.link_up(0)
    server = store.open(*client.frames_to_send()[0], 0)
    for frame in server.frames_to_send():
        client.receive(*frame, 0)
    return client, server


def test_protocol_violations() -> None:
    _, server = hello_pair()
    with pytest.raises(MalformedEnvelope, match="sequence gap: got 2, expected 1"):
        server.receive(*encode(Envelope(Kind.MESSAGE, b"", seq=2)), 0)
    with pytest.raises(MalformedEnvelope, match="no sequence number"):
        server.receive(*encode(Envelope(Kind.MESSAGE, b"")), 0)
    with pytest.raises(MalformedEnvelope, match="acknowledged seq 5; we sent 0"):
        server.receive(*encode(Envelope(Kind.ACK, ack=5)), 0)
    with pytest.raises(UnexpectedFrame, match="unexpected SESSION "):
        server.receive(*encode_hello(SessionHello(bytes(16))), 0)
    with pytest.raises(UnexpectedFrame, match="must be SESSION, not MESSAGE"):
        SessionStore().open(*encode(Envelope(Kind.MESSAGE, b"", seq=1)), 0)
    idle = Session(connecting=True)
    with pytest.raises(UnexpectedFrame, match="before the session was established"):
        idle.receive(*encode(Envelope(Kind.MESSAGE, b"", seq=1)), 0)


def test_resume_claims_are_checked() -> None:
    link = SessionLink()
    link.connect()
    link.pump()
    link.cut()
    store_session = link.server
    assert store_session is not None
    lie = SessionHello(link.client.id, last_received=7, last_sent=0, first_held=1)
    with pytest.raises(ProtocolError, match="claims seq 7; we only sent 0"):
        link.store.open(*encode_hello(lie), 0)


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError):
        ResumeWindow(max_messages=0)
    with pytest.raises(ConfigError):
        ResumeWindow(max_age=0)
    with pytest.raises(ConfigError):
        SessionOptions(ack_every=0)
    with pytest.raises(ConfigError):
        SessionOptions(window=ResumeWindow(max_age=1), ack_delay=2)


def answer(client: Session, hello: SessionHello) -> None:
    client.receive(*encode_hello(hello), 0)


def test_bad_session_ok_answers() -> None:
    link = SessionLink()
    link.connect()
    link.pump()
    sid = link.client.id
    cases = [
        (SessionHello(bytes(15) + b"\x09", status=SessionStatus.RESUMED), "did not ask for"),
        (SessionHello(sid, 1, 0, 1, SessionStatus.RESUMED), "says it sent 0; we received 1"),
        (SessionHello(sid, 0, 0, 1, SessionStatus.NEW), "started a new session"),
    ]
    link.client.send(Envelope(Kind.MESSAGE, b"x"), 0)
    link.pump()
    link.advance(1.0)
    link.pump()
    link.send_server(b"y")
    link.pump()
    assert link.client.last_received == 1
    for hello, message in cases:
        link.cut()
        link.client.link_up(0)
        with pytest.raises(MalformedEnvelope, match=message):
            answer(link.client, hello)
    link.cut()
    link.client.link_up(0)
    link.client.send(Envelope(Kind.MESSAGE, b"z"), 0)
    window_ok = SessionHello(sid, 0, 1, 1, SessionStatus.RESUMED)  # we hold 2.. only
    link.client._held.popleft()  # simulate: seq 2 gone from our window
    with pytest.raises(MalformedEnvelope, match="outside our window"):
        answer(link.client, window_ok)


frames = st.tuples(
    st.integers(0x20, 0x2F),
    st.binary(max_size=40).map(lambda b: b"\x01" + b) | st.binary(max_size=12),
    st.binary(max_size=48),
)


@given(st.lists(frames, max_size=6))
@settings(max_examples=300, deadline=None)
def test_fuzz_sessions_raise_only_protocol_errors(batch: list[tuple[int, bytes, bytes]]) -> None:
    client, server = hello_pair()
    for target in (client, server):
        for frame in batch:
            try:
                target.receive(*frame, 1.0)
            except ProtocolError:
                break
    for frame in batch:
        try:
            SessionStore().open(*frame, 0)
        except ProtocolError:
            pass
