"""Limits: rate, message length, rooms per user, rooms per server, passwords."""

from __future__ import annotations

import pytest

from opensocket.chat import ChatOptions
from opensocket.errors import ConfigError

from .helpers import Harness


def test_rate_limit_with_explicit_clock() -> None:
    h = Harness(rate=2.0, burst=3)
    h.login("a", "alice")  # hello spent one token: two left
    h.login("b", "bob")
    h.join("b", "r")
    h.cmd("a", "join", room="r")  # one left
    h.take_all()
    h.cmd("a", "say", room="r", text="1")  # none left
    assert len(h.take("b")) == 1
    assert len(h.take("a")) == 1  # its own message comes back
    h.cmd("a", "say", room="r", text="2", id="m2")
    (err,) = h.take("a")
    assert err["code"] == "rate_limited" and err["ref"] == "m2"
    assert err["retry_after"] == 0.5
    assert "too fast" in err["message"]
    assert h.take("b") == []  # the dropped message reached nobody
    h.now += 0.25
    h.cmd("a", "say", room="r", text="3")
    assert h.error("a") == "rate_limited"
    h.now += 0.25  # now a whole token has come back
    h.cmd("a", "say", room="r", text="4")
    assert [ev["text"] for ev in h.take("b")] == ["4"]
    h.take("a")
    h.now += 100  # the bucket refills to the burst, not beyond
    for i in range(3):
        h.cmd("a", "say", room="r", text=f"x{i}")
    h.cmd("a", "say", room="r", text="over")
    assert [ev["text"] for ev in h.take("b")] == ["x0", "x1", "x2"]
    assert h.take("a")[-1]["code"] == "rate_limited"
    h.cmd("a", "quit")  # quit always gets through
    assert "a" in h.closed
    assert h.hub.counters.errors["rate_limited"] == 3


def test_max_message_length() -> None:
    h = Harness(max_message_length=10)
    h.login("a", "alice")
    h.join("a", "r")
    h.cmd("a", "say", room="r", text="x" * 10)
    assert h.take("a")[0]["text"] == "x" * 10
    h.cmd("a", "say", room="r", text="x" * 11)
    assert h.error("a") == "too_long"
    h.cmd("a", "msg", to="alice", text="y" * 11)
    assert h.error("a") == "too_long"


def test_max_rooms_per_user_and_per_server() -> None:
    h = Harness(max_rooms_per_user=2, max_rooms=3)
    h.login("a", "alice")
    h.join("a", "r1")
    h.join("a", "r2")
    h.cmd("a", "join", room="r3")
    assert h.error("a") == "too_many_rooms"
    h.login("b", "bob")
    h.join("b", "r3")
    h.cmd("b", "join", room="r4")
    assert h.error("b") == "server_full"
    h.join("b", "r1")  # existing rooms are still open
    h.cmd("a", "leave", room="r2")
    assert h.join("a", "r3")[0]["type"] == "joined"


def test_server_password() -> None:
    h = Harness(password="letmein")
    h.connect("a")
    h.cmd("a", "hello", nick="alice")
    assert h.error("a") == "bad_password"
    h.cmd("a", "hello", nick="alice", password="wrong")
    assert h.error("a") == "bad_password"
    h.cmd("a", "hello", nick="alice", password="letmein")
    assert h.take("a")[0]["type"] == "welcome"


def test_room_password_set_by_first_joiner() -> None:
    h = Harness()
    h.login("a", "alice")
    h.login("b", "bob")
    h.join("a", "secret", password="pw1")
    h.cmd("b", "rooms")
    assert h.take("b")[0]["rooms"][0]["locked"] is True
    h.cmd("b", "join", room="secret")
    assert h.error("b") == "bad_room_password"
    h.cmd("b", "join", room="secret", password="pw2")
    assert h.error("b") == "bad_room_password"
    h.cmd("b", "who", room="secret")
    assert h.error("b") == "not_in_room"
    h.cmd("b", "topic", room="secret")
    assert h.error("b") == "not_in_room"
    assert h.join("b", "secret", password="pw1")[0]["type"] == "joined"


def test_lock_by_owner_or_operator_and_locked_history_dies_with_room() -> None:
    h = Harness()
    h.login("a", "alice")
    h.login("b", "bob")
    h.join("a", "r")
    h.join("b", "r")
    h.take_all()
    h.cmd("b", "lock", room="r", password="pw")
    assert h.error("b") == "not_room_owner"
    h.cmd("b", "lock", room="r", password="pw", token="operator-token-123")
    notice = h.take_all()
    assert notice["a"] == notice["b"] and notice["a"][0]["text"] == "bob set a password on r"
    h.cmd("a", "lock", room="r", password=None)
    assert h.take("b")[0]["text"] == "alice removed the password of r"
    h.cmd("a", "lock", room="r", password="pw")
    h.cmd("a", "say", room="r", text="private stuff")
    h.cmd("a", "leave", room="r")
    h.cmd("b", "leave", room="r")
    h.take_all()
    # the room is gone; whoever recreates it sees neither its password nor its history
    assert [ev["type"] for ev in h.join("b", "r")] == ["joined", "who"]


def test_options_validation() -> None:
    with pytest.raises(ConfigError, match="rate"):
        ChatOptions(rate=0)
    with pytest.raises(ConfigError, match="max_rooms_per_user"):
        ChatOptions(max_rooms_per_user=0)
    with pytest.raises(ConfigError, match="history"):
        ChatOptions(history=-1)
    with pytest.raises(ConfigError, match="max_command_bytes"):
        ChatOptions(max_message_length=5000, max_command_bytes=10_000)
    with pytest.raises(ConfigError, match="operator token"):
        ChatOptions(operator_token="short")


def test_garbage_costs_tokens_too() -> None:
    h = Harness(rate=1.0, burst=2)
    h.connect("a")
    h.send("a", b"\xff")
    h.send("a", b"{")
    assert [e["code"] for e in h.take("a")] == ["invalid_utf8", "invalid_json"]
    h.send("a", b"[]")
    assert h.error("a") == "rate_limited"
    h.now += 1
    h.send("a", b"[]")
    assert h.error("a") == "not_an_object"


def test_hello_timeout_with_timer() -> None:
    h = Harness(hello_timeout=10.0)
    assert h.hub.get_timer() is None
    h.connect("slow")
    h.now += 5
    h.connect("late")
    h.login("fast", "fast")
    assert h.hub.get_timer() == 1010.0
    h.now = 1009.9
    assert h.apply(h.hub.handle_timer(h.now)) == []
    h.now = 1010.0
    h.apply(h.hub.handle_timer(h.now))
    assert h.take("slow") == [
        {"type": "error", "code": "hello_timeout", "message": "no hello in time: goodbye"}
    ]
    assert h.closed == {"slow": (1008, "no hello in time")}
    assert h.hub.get_timer() == 1015.0
    h.cmd("late", "hello", nick="late")  # registering stops the clock
    assert h.hub.get_timer() is None
    h.connect("quitter")
    h.cmd("quitter", "quit")
    assert h.hub.get_timer() is None
    assert "fast" not in h.closed and "late" not in h.closed
    assert Harness(hello_timeout=None).hub.get_timer() is None
    with pytest.raises(ConfigError, match="hello_timeout"):
        ChatOptions(hello_timeout=0)
