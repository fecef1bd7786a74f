"""The command parser: every command, every field rule, every input form."""

from __future__ import annotations

import json
from typing import Any

import pytest

from opensocket.chat import ChatOptions, ErrorCode, InvalidChatMessage, parse_command
from opensocket.chat import commands as c
from opensocket.errors import ProtocolError

OPTS = ChatOptions(max_message_length=20, max_command_bytes=20 * 6 + 1024)

VALID: list[tuple[dict[str, Any], c.Command]] = [
    ({"type": "hello", "nick": "alice"}, c.Hello(nick="alice")),
    (
        {"type": "hello", "nick": "Al_1", "password": "pw", "client": "tui/1", "id": 7},
        c.Hello(nick="Al_1", password="pw", client="tui/1", ref=7),
    ),
    ({"type": "join", "room": "#General"}, c.Join(room="General")),
    ({"type": "join", "room": "a.b-c", "password": "x"}, c.Join(room="a.b-c", password="x")),
    ({"type": "leave", "room": "r", "reason": "bye"}, c.Leave(room="r", reason="bye")),
    ({"type": "rooms"}, c.ListRooms()),
    ({"type": "who", "room": "r"}, c.Who(room="r")),
    ({"type": "nick", "nick": "b[o]b"}, c.Nick(nick="b[o]b")),
    ({"type": "say", "room": "r", "text": "hi\nthere\t!"}, c.Say(room="r", text="hi\nthere\t!")),
    ({"type": "me", "room": "r", "text": "waves"}, c.Me(room="r", text="waves")),
    ({"type": "msg", "to": "bob", "text": "psst"}, c.Msg(to="bob", text="psst")),
    ({"type": "topic", "room": "r"}, c.Topic(room="r")),
    ({"type": "topic", "room": "r", "topic": ""}, c.Topic(room="r", topic="")),
    ({"type": "lock", "room": "r", "password": None}, c.Lock(room="r", password=None)),
    (
        {"type": "lock", "room": "r", "password": "p", "token": "t"},
        c.Lock(room="r", password="p", token="t"),
    ),
    (
        {"type": "kick", "nick": "bob", "token": "t", "room": "r", "reason": "spam"},
        c.Kick(nick="bob", token="t", room="r", reason="spam"),
    ),
    ({"type": "ban", "token": "t", "ip": "::ffff:10.0.0.1"}, c.Ban(token="t", ip="10.0.0.1")),
    (
        {"type": "ban", "token": "t", "nick": "x", "by_ip": True},
        c.Ban(token="t", nick="x", by_ip=True),
    ),
    ({"type": "unban", "token": "t", "ip": "2001:DB8::1"}, c.Unban(token="t", ip="2001:db8::1")),
    ({"type": "ping", "data": "abc", "id": "q1"}, c.Ping(data="abc", ref="q1")),
    ({"type": "quit"}, c.Quit()),
    ({"type": "quit", "reason": None}, c.Quit()),
]


@pytest.mark.parametrize(("obj", "expected"), VALID)
def test_valid_commands_in_every_form(obj: dict[str, Any], expected: c.Command) -> None:
    text = json.dumps(obj)
    assert parse_command(obj, OPTS) == expected
    assert parse_command(text, OPTS) == expected
    assert parse_command(text.encode(), OPTS) == expected
    assert parse_command(bytearray(text.encode()), OPTS) == expected
    assert parse_command(memoryview(text.encode()), OPTS) == expected


def test_every_command_has_a_valid_case() -> None:
    assert {type(cmd).name for _, cmd in VALID} == set(c.COMMANDS)


INVALID: list[tuple[Any, ErrorCode]] = [
    (b"\xff\xfe{}", ErrorCode.INVALID_UTF8),
    (b'{"type":"say","room":"r","text":"\xc3"}', ErrorCode.INVALID_UTF8),
    ("{nope", ErrorCode.INVALID_JSON),
    ('{"type":"rooms"} trailing', ErrorCode.INVALID_JSON),
    ('{"type":"rooms"}{"type":"rooms"}', ErrorCode.INVALID_JSON),
    ("", ErrorCode.INVALID_JSON),
    ("[" * 1100 + "]" * 1100, ErrorCode.TOO_LARGE),
    ("[]", ErrorCode.NOT_AN_OBJECT),
    ('"hello"', ErrorCode.NOT_AN_OBJECT),
    ([1, 2], ErrorCode.NOT_AN_OBJECT),
    (None, ErrorCode.NOT_AN_OBJECT),
    ({}, ErrorCode.MISSING_FIELD),
    ({"type": 3}, ErrorCode.INVALID_FIELD),
    ({"type": "dance"}, ErrorCode.UNKNOWN_COMMAND),
    ({"type": "hello"}, ErrorCode.MISSING_FIELD),
    ({"type": "hello", "nick": None}, ErrorCode.INVALID_FIELD),
    ({"type": "hello", "nick": "a", "color": "red"}, ErrorCode.UNKNOWN_FIELD),
    ({"type": "hello", "nick": 5}, ErrorCode.INVALID_FIELD),
    ({"type": "hello", "nick": "1abc"}, ErrorCode.INVALID_NICK),
    ({"type": "hello", "nick": "a b"}, ErrorCode.INVALID_NICK),
    ({"type": "hello", "nick": "élan"}, ErrorCode.INVALID_NICK),
    ({"type": "hello", "nick": "a" * 25}, ErrorCode.INVALID_NICK),
    ({"type": "hello", "nick": "a" * 200}, ErrorCode.TOO_LONG),
    ({"type": "hello", "nick": "a", "password": ""}, ErrorCode.INVALID_FIELD),
    ({"type": "join", "room": "#"}, ErrorCode.INVALID_ROOM),
    ({"type": "join", "room": "-x"}, ErrorCode.INVALID_ROOM),
    ({"type": "join", "room": "a/b"}, ErrorCode.INVALID_ROOM),
    ({"type": "join", "room": "r" * 33}, ErrorCode.INVALID_ROOM),
    ({"type": "say", "room": "r", "text": "x" * 21}, ErrorCode.TOO_LONG),
    ({"type": "say", "room": "r", "text": "   "}, ErrorCode.INVALID_TEXT),
    ({"type": "say", "room": "r", "text": "bell\x07"}, ErrorCode.INVALID_TEXT),
    ({"type": "say", "room": "r", "text": "lone \ud800"}, ErrorCode.INVALID_TEXT),
    ({"type": "say", "room": "r", "text": ["x"]}, ErrorCode.INVALID_FIELD),
    ({"type": "say", "room": "r"}, ErrorCode.MISSING_FIELD),
    ({"type": "leave", "room": "r", "reason": "a\nb"}, ErrorCode.INVALID_TEXT),
    ({"type": "lock", "room": "r"}, ErrorCode.MISSING_FIELD),
    ({"type": "ban", "token": "t", "ip": "10.0.0.300"}, ErrorCode.INVALID_FIELD),
    ({"type": "ban", "token": "t", "by_ip": 1}, ErrorCode.INVALID_FIELD),
    ({"type": "ping", "id": True}, ErrorCode.INVALID_FIELD),
    ({"type": "ping", "id": 2**60}, ErrorCode.INVALID_FIELD),
    ({"type": "ping", "id": 1.5}, ErrorCode.INVALID_FIELD),
    ({"type": "ping", "id": "x" * 65}, ErrorCode.TOO_LONG),
    ({"type": "topic", "room": "r", "topic": "t" * 301}, ErrorCode.TOO_LONG),
    ("x" * (OPTS.max_command_bytes + 1), ErrorCode.TOO_LARGE),
    (b"x" * (OPTS.max_command_bytes + 1), ErrorCode.TOO_LARGE),
]


@pytest.mark.parametrize(("data", "code"), INVALID)
def test_invalid_commands_raise_one_documented_error(data: Any, code: ErrorCode) -> None:
    with pytest.raises(InvalidChatMessage) as info:
        parse_command(data, OPTS)
    assert info.value.error is code
    assert isinstance(info.value, ProtocolError)
    assert str(info.value)


def test_deep_nesting_within_the_size_limit_is_invalid_json() -> None:
    opts = ChatOptions(max_command_bytes=200_000)
    with pytest.raises(InvalidChatMessage) as info:
        parse_command("[" * 90_000 + "]" * 90_000, opts)
    assert info.value.error is ErrorCode.INVALID_JSON


def test_message_of_exactly_max_length_with_escapes_fits() -> None:
    text = "\u2603" * OPTS.max_message_length
    raw = json.dumps({"type": "say", "room": "r", "text": text})  # ensure_ascii: \uXXXX each
    assert len(raw) > OPTS.max_message_length * 6
    assert parse_command(raw, OPTS) == c.Say(room="r", text=text)


def test_helpers() -> None:
    assert c.nick_key("AlIce") == "alice"
    assert c.room_key("#Gen") == "#gen"
    assert c.valid_room("#Gen", 5) == "Gen"
    assert c.valid_room("Genera", 5) is None
    assert c.normalize_ip("fe80::1%eth0") == "fe80::1"
    assert c.normalize_ip("nope") is None


@pytest.mark.parametrize(("obj", "expected"), VALID)
def test_encode_command_round_trips(obj: dict[str, Any], expected: c.Command) -> None:
    data = c.encode_command(expected)
    assert parse_command(data, OPTS) == expected
    assert json.loads(data)["type"] == expected.name


def test_encode_command_exact_bytes() -> None:
    assert c.encode_command(c.Say(room="r", text="hé", ref=3)) == (
        '{"type":"say","id":3,"room":"r","text":"hé"}'.encode()
    )
    assert c.encode_command(c.Lock(room="r", password=None)) == (
        b'{"type":"lock","room":"r","password":null}'
    )
