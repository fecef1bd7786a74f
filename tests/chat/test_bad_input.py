"""Bad input gets exactly one error event, for the sender only; nobody else notices."""

from __future__ import annotations

from typing import Any

import pytest

from opensocket.chat import Deliver

from .helpers import Harness

BAD: list[tuple[Any, str]] = [
    (b'{"type":"say","room":"r","text":"\xff"}', "invalid_utf8"),
    (b"\xc3\x28", "invalid_utf8"),
    (b'{"type":"say",', "invalid_json"),
    ("not json at all", "invalid_json"),
    (b"[1,2,3]", "not_an_object"),
    ([1, 2, 3], "not_an_object"),
    (42, "not_an_object"),
    ({"type": "shout", "room": "r"}, "unknown_command"),
    ({"type": "say", "room": 5, "text": "x"}, "invalid_field"),
    ({"type": "say", "room": "r", "text": "x", "html": "<b>"}, "unknown_field"),
    ({"type": "say", "room": "r", "text": "x" * 2001}, "too_long"),
    (b"x" * 20_000, "too_large"),
    ("{" * 17_000, "too_large"),
    ({"type": "say", "room": "r", "text": "\x00"}, "invalid_text"),
    ({"type": "join", "room": "no spaces"}, "invalid_room"),
    ({"type": "nick", "nick": "9lives"}, "invalid_nick"),
]


@pytest.mark.parametrize(("data", "code"), BAD)
def test_one_error_to_the_sender_only(data: Any, code: str) -> None:
    h = Harness()
    for cid, nick in (("a", "alice"), ("b", "bob"), ("c", "carol")):
        h.login(cid, nick)
        h.join(cid, "r")
    h.take_all()
    out = h.send("b", data)
    assert len(out) == 1 and isinstance(out[0], Deliver) and out[0].recipients == ("b",)
    assert h.take_all() == {"b": [{"type": "error", "code": code, "message": out[0].event.message}]}  # type: ignore[attr-defined]
    assert h.closed == {}
    # the room carries on as before
    h.cmd("b", "say", room="r", text="still here")
    assert {k: [e["text"] for e in v] for k, v in h.take_all().items()} == {
        "a": ["still here"],
        "b": ["still here"],
        "c": ["still here"],
    }
    assert h.hub.counters.errors[code] == 1


def test_error_echoes_the_command_id() -> None:
    h = Harness()
    h.login("a", "alice")
    h.cmd("a", "leave", room="r", id=99)
    assert h.take("a")[0]["ref"] == 99
