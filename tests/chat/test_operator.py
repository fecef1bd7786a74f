"""Operator commands: kick from a room or the server, ban by nick and by IP, unban."""

from __future__ import annotations

from opensocket.chat import ChatOptions, Hub
from opensocket.errors import CloseCode

from .helpers import TOKEN, Harness


def _room_of_three() -> Harness:
    h = Harness()
    h.login("op", "oper", ip="10.0.0.1")
    h.login("b", "bob", ip="10.0.0.2")
    h.login("c", "carol", ip="10.0.0.3")
    for cid in ("op", "b", "c"):
        h.join(cid, "r")
    h.take_all()
    return h


def test_token_required() -> None:
    h = _room_of_three()
    for kind, fields in (
        ("kick", {"nick": "bob"}),
        ("ban", {"nick": "bob"}),
        ("unban", {"nick": "bob"}),
    ):
        h.cmd("c", kind, token="wrong-token", **fields)
        assert h.error("c") == "not_operator"
    assert h.take_all() == {}
    hub = Harness(hub=Hub(ChatOptions()))  # no token configured: nobody is an operator
    hub.login("a", "alice")
    hub.cmd("a", "kick", nick="alice", token=TOKEN)
    assert hub.error("a") == "not_operator"


def test_kick_from_room() -> None:
    h = _room_of_three()
    h.cmd("op", "kick", nick="BOB", room="r", reason="spam", token=TOKEN)
    left = {
        "type": "left",
        "room": "r",
        "nick": "bob",
        "ts": 1000.0,
        "reason": "kicked by oper: spam",
    }
    assert h.take_all() == {
        "op": [{"type": "notice", "text": "kicked BOB", "ts": 1000.0}, left],
        "b": [{"type": "kicked", "by": "oper", "reason": "spam", "room": "r"}, left],
        "c": [left],
    }
    assert "b" not in h.closed
    h.cmd("b", "say", room="r", text="back?")
    assert h.error("b") == "not_in_room"
    h.cmd("op", "kick", nick="bob", room="r", token=TOKEN)
    assert h.error("op") == "not_in_room"


def test_kick_from_server() -> None:
    h = _room_of_three()
    h.cmd("op", "kick", nick="bob", token=TOKEN)
    assert h.closed["b"] == (CloseCode.POLICY, "kicked by oper")
    events = h.take_all()
    assert events["b"] == [{"type": "kicked", "by": "oper"}]
    quit_ = {"type": "quit", "nick": "bob", "ts": 1000.0, "reason": "kicked by oper"}
    assert events["c"] == [quit_]
    assert events["op"] == [{"type": "notice", "text": "kicked bob", "ts": 1000.0}, quit_]
    assert h.hub.disconnect("b", h.now) == []  # the runtime's later disconnect is a no-op
    h.cmd("op", "kick", nick="bob", token=TOKEN)
    assert h.error("op") == "no_such_nick"
    assert h.hub.counters.kicks == 1


def test_ban_by_nick() -> None:
    h = _room_of_three()
    h.cmd("op", "ban", nick="Bob", reason="rude", token=TOKEN)
    assert h.closed["b"][0] == CloseCode.ACCESS_DENIED
    assert h.take("b") == [{"type": "kicked", "by": "oper", "reason": "rude"}]
    assert h.take("c") == [
        {"type": "quit", "nick": "bob", "ts": 1000.0, "reason": "banned by oper: rude"}
    ]
    # the nick is refused, the IP is not
    h.connect("b2", ip="10.0.0.2")
    h.cmd("b2", "hello", nick="BOB")
    assert h.take("b2") == [{"type": "error", "code": "banned", "message": "BOB is banned"}]
    assert h.closed["b2"][0] == CloseCode.ACCESS_DENIED
    h.login("b3", "robert", ip="10.0.0.2")
    h.cmd("b3", "nick", nick="bob")
    assert h.error("b3") == "banned"
    h.cmd("op", "unban", nick="bob", token=TOKEN)
    assert h.take("op")[-1]["text"] == "unbanned bob"
    h.cmd("b3", "nick", nick="bob")
    assert h.take("b3")[0]["new"] == "bob"
    h.cmd("op", "unban", nick="bob", token=TOKEN)
    assert h.take("op")[-1]["text"] == "no such ban"


def test_ban_by_ip_refuses_at_connect() -> None:
    h = _room_of_three()
    h.login("c2", "carol2", ip="10.0.0.3")
    h.cmd("op", "ban", ip="10.0.0.3", token=TOKEN)
    assert h.closed["c"][0] == CloseCode.ACCESS_DENIED
    assert h.closed["c2"][0] == CloseCode.ACCESS_DENIED
    h.take_all()
    out = h.connect("c3", ip="::ffff:10.0.0.3")  # the same address, IPv4-mapped
    assert h.take("c3") == [{"type": "error", "code": "banned", "message": "banned"}]
    assert h.closed["c3"] == (CloseCode.ACCESS_DENIED, "this address is banned")
    assert len(out) == 2
    assert h.hub.receive("c3", b'{"type":"ping"}', h.now) == []
    assert h.hub.counters.refused_total == 1
    h.cmd("op", "unban", ip="10.0.0.3", token=TOKEN)
    h.connect("c4", ip="10.0.0.3")
    assert "c4" not in h.closed


def test_ban_nick_by_ip_also_bans_its_address() -> None:
    h = _room_of_three()
    h.cmd("op", "ban", nick="bob", by_ip=True, token=TOKEN)
    assert "b" in h.closed
    h.connect("b2", ip="10.0.0.2")
    assert h.closed["b2"][0] == CloseCode.ACCESS_DENIED
    h.take_all()
    h.cmd("op", "ban", token=TOKEN)
    assert h.error("op") == "missing_field"
    h.cmd("op", "unban", token=TOKEN)
    assert h.error("op") == "missing_field"
