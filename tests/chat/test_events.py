"""Events: the exact JSON of each, and the client-side parser."""

from __future__ import annotations

import json

import pytest

from opensocket.chat import EVENTS, ErrorCode, InvalidChatMessage, encode_event, parse_event
from opensocket.chat import events as e

SAMPLES: list[e.Event] = [
    e.Welcome(nick="alice", server="hub", motd="hi", limits={"rate": 5.0}),
    e.Joined(room="r", nick="alice", ts=1.5),
    e.Left(room="r", nick="alice", ts=2.0, reason="bye"),
    e.Left(room="r", nick="alice", ts=2.0),
    e.NickChanged(old="a", new="b", ts=3.0),
    e.QuitNotice(nick="a", ts=4.0, reason="gone"),
    e.Message(room="r", nick="a", text="hé ☃", ts=5.0),
    e.Action(room="r", nick="a", text="waves", ts=6.0),
    e.Private(nick="a", to="b", text="psst", ts=7.0),
    e.RoomList(rooms=(e.RoomInfo(name="r", members=2, topic="t", locked=True),)),
    e.WhoList(room="r", nicks=("a", "b")),
    e.TopicInfo(room="r", topic="t", by="a", ts=8.0),
    e.TopicInfo(room="r", topic=""),
    e.History(
        room="r",
        messages=(
            e.Message(room="r", nick="a", text="1", ts=1.0),
            e.Action(room="r", nick="b", text="2", ts=2.0),
        ),
    ),
    e.ErrorEvent(code="rate_limited", message="slow down", ref=3, retry_after=0.2),
    e.Notice(text="hello", ts=9.0),
    e.Kicked(by="op", reason="spam", room="r"),
    e.Pong(data="x", ref="id1"),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda ev: type(ev).__name__)
def test_round_trip(event: e.Event) -> None:
    data = encode_event(event)
    assert parse_event(data) == event
    assert parse_event(data.decode()) == event
    assert parse_event(json.loads(data)) == event


def test_every_event_type_sampled() -> None:
    assert {ev.type for ev in SAMPLES} == set(EVENTS)


def test_exact_bytes() -> None:
    assert encode_event(e.Message(room="r", nick="a", text="hé", ts=5.0)) == (
        '{"type":"message","room":"r","nick":"a","text":"hé","ts":5.0}'.encode()
    )
    assert (
        encode_event(e.Left(room="r", nick="a", ts=1.0))
        == b'{"type":"left","room":"r","nick":"a","ts":1.0}'
    )
    assert encode_event(e.RoomList(rooms=(e.RoomInfo(name="r", members=1),))) == (
        b'{"type":"rooms","rooms":[{"name":"r","members":1,"topic":"","locked":false}]}'
    )


def test_unknown_fields_are_ignored_by_clients() -> None:
    event = parse_event('{"type":"notice","text":"x","ts":1,"new_field":true}')
    assert event == e.Notice(text="x", ts=1)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ('{"type":"nope"}', ErrorCode.UNKNOWN_COMMAND),
        ("[1]", ErrorCode.NOT_AN_OBJECT),
        ('{"type":"joined","room":"r"}', ErrorCode.MISSING_FIELD),
        ('{"type":"rooms","rooms":[3]}', ErrorCode.INVALID_FIELD),
        (b"\xff", ErrorCode.INVALID_UTF8),
    ],
)
def test_bad_events(data: str | bytes, code: ErrorCode) -> None:
    with pytest.raises(InvalidChatMessage) as info:
        parse_event(data)
    assert info.value.error is code
