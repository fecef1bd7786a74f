"""The hub: registration, rooms, messages and presence, with the exact events per recipient."""

from __future__ import annotations

from opensocket.chat import ChatOptions, Close, Deliver, Hub
from opensocket.errors import CloseCode

from .helpers import Harness


def test_hello_welcome_and_registration_rules() -> None:
    h = Harness(motd="be nice", server_name="hubby")
    h.connect("a")
    h.cmd("a", "say", room="r", text="hi")
    assert h.error("a") == "hello_required"
    h.cmd("a", "ping", data="p", id=1)
    assert h.take("a") == [{"type": "pong", "data": "p", "ref": 1}]
    h.cmd("a", "hello", nick="Alice")
    (welcome,) = h.take("a")
    assert welcome["type"] == "welcome" and welcome["nick"] == "Alice"
    assert welcome["server"] == "hubby" and welcome["motd"] == "be nice"
    assert welcome["limits"]["max_message_length"] == 2000
    h.cmd("a", "hello", nick="Other")
    assert h.error("a") == "already_registered"


def test_nicks_are_unique_case_insensitively_and_freed_on_disconnect() -> None:
    h = Harness()
    h.login("a", "Alice")
    h.connect("b")
    for nick in ("alice", "ALICE", "Alice"):
        h.cmd("b", "hello", nick=nick, id="x")
        events = h.take("b")
        assert events[0]["code"] == "nick_taken" and events[0]["ref"] == "x"
    h.disconnect("a")
    h.cmd("b", "hello", nick="alice")
    assert h.take("b")[0]["type"] == "welcome"


def test_two_rooms_many_clients_exact_events() -> None:
    h = Harness()
    for i in range(6):
        h.login(i, f"u{i}")
    for i in (0, 1, 2):
        h.join(i, "red")
    for i in (2, 3, 4):
        h.join(i, "blue")
    h.take_all()
    h.cmd(0, "say", room="red", text="hello red")
    red = {"type": "message", "room": "red", "nick": "u0", "text": "hello red", "ts": 1000.0}
    assert h.take_all() == {0: [red], 1: [red], 2: [red]}
    h.cmd(3, "me", room="blue", text="waves")
    action = {"type": "action", "room": "blue", "nick": "u3", "text": "waves", "ts": 1000.0}
    assert h.take_all() == {2: [action], 3: [action], 4: [action]}
    # u2 is in both rooms: its quit reaches everyone sharing a room with it, once each.
    h.disconnect(2, "lost")
    quit_ = {"type": "quit", "nick": "u2", "ts": 1000.0, "reason": "lost"}
    assert h.take_all() == {0: [quit_], 1: [quit_], 3: [quit_], 4: [quit_]}
    h.cmd(5, "rooms")
    (listing,) = h.take(5)
    assert listing["rooms"] == [
        {"name": "blue", "members": 2, "topic": "", "locked": False},
        {"name": "red", "members": 2, "topic": "", "locked": False},
    ]
    assert h.take_all() == {}


def test_join_sequence_and_presence() -> None:
    h = Harness()
    h.login("a", "alice")
    h.login("b", "bob")
    assert h.join("a", "#Lobby") == [
        {"type": "joined", "room": "Lobby", "nick": "alice", "ts": 1000.0},
        {"type": "who", "room": "Lobby", "nicks": ["alice"]},
    ]
    h.cmd("a", "topic", room="lobby", topic="welcome all")
    assert h.take("a") == [
        {"type": "topic", "room": "Lobby", "topic": "welcome all", "by": "alice", "ts": 1000.0}
    ]
    h.now += 1
    assert h.join("b", "LOBBY") == [
        {"type": "joined", "room": "Lobby", "nick": "bob", "ts": 1001.0},
        {"type": "topic", "room": "Lobby", "topic": "welcome all", "by": "alice", "ts": 1000.0},
        {"type": "who", "room": "Lobby", "nicks": ["alice", "bob"]},
    ]
    assert h.take("a") == [{"type": "joined", "room": "Lobby", "nick": "bob", "ts": 1001.0}]
    h.cmd("b", "join", room="lobby")
    assert h.error("b") == "already_in_room"
    h.cmd("b", "leave", room="lobby", reason="later")
    left = {"type": "left", "room": "Lobby", "nick": "bob", "ts": 1001.0, "reason": "later"}
    assert h.take_all() == {"a": [left], "b": [left]}
    h.cmd("b", "leave", room="lobby")
    assert h.error("b") == "not_in_room"
    h.cmd("b", "who", room="lobby")
    assert h.take("b") == [{"type": "who", "room": "Lobby", "nicks": ["alice"]}]
    h.cmd("b", "topic", room="lobby")
    assert h.take("b")[0]["topic"] == "welcome all"
    h.cmd("b", "topic", room="lobby", topic="mine")
    assert h.error("b") == "not_in_room"
    h.cmd("b", "who", room="nowhere")
    assert h.error("b") == "no_such_room"
    h.cmd("b", "say", room="lobby", text="hi")
    assert h.error("b") == "not_in_room"


def test_empty_room_disappears_and_is_recreated() -> None:
    h = Harness()
    h.login("a", "alice")
    h.join("a", "Temp")
    h.cmd("a", "leave", room="temp")
    h.cmd("a", "rooms")
    assert h.take("a")[-1]["rooms"] == []
    assert h.join("a", "TEMP")[0]["room"] == "TEMP"


def test_nick_change_notifies_shared_rooms_once() -> None:
    h = Harness()
    for cid, nick in (("a", "alice"), ("b", "bob"), ("c", "carol"), ("d", "dave")):
        h.login(cid, nick)
    h.join("a", "one")
    h.join("a", "two")
    h.join("b", "one")
    h.join("b", "two")
    h.join("c", "two")
    h.take_all()
    h.cmd("a", "nick", nick="Alicia")
    change = {"type": "nick", "old": "alice", "new": "Alicia", "ts": 1000.0}
    assert h.take_all() == {"a": [change], "b": [change], "c": [change]}
    h.cmd("b", "who", room="one")
    assert h.take("b")[0]["nicks"] == ["Alicia", "bob"]
    h.cmd("d", "hello", nick="x")  # d is registered already
    assert h.error("d") == "already_registered"
    h.cmd("d", "nick", nick="ALICIA")
    assert h.error("d") == "nick_taken"
    h.cmd("d", "nick", nick="alice")  # the old nick is free again
    assert h.take("d") == [{"type": "nick", "old": "dave", "new": "alice", "ts": 1000.0}]
    h.cmd("b", "nick", nick="BOB")  # only the case changes
    assert h.take("b")[0]["new"] == "BOB"
    h.cmd("c", "who", room="one")
    nick_event, who = h.take("c")
    assert nick_event == {"type": "nick", "old": "bob", "new": "BOB", "ts": 1000.0}
    assert who["nicks"] == ["Alicia", "BOB"]


def test_sole_member_renames_and_room_survives() -> None:
    h = Harness()
    h.login("a", "alice")
    h.join("a", "solo")
    h.cmd("a", "nick", nick="zed")
    h.take("a")
    h.cmd("a", "who", room="solo")
    assert h.take("a") == [{"type": "who", "room": "solo", "nicks": ["zed"]}]


def test_private_messages() -> None:
    h = Harness()
    h.login("a", "alice")
    h.login("b", "Bob")
    h.login("c", "carol")
    h.cmd("a", "msg", to="BOB", text="psst")
    private = {"type": "private", "nick": "alice", "to": "Bob", "text": "psst", "ts": 1000.0}
    assert h.take_all() == {"a": [private], "b": [private]}
    h.cmd("a", "msg", to="nobody", text="hi")
    assert h.error("a") == "no_such_nick"
    h.cmd("a", "msg", to="alice", text="note to self")
    assert len(h.take("a")) == 1
    assert h.take_all() == {}


def test_quit_closes_and_later_input_is_ignored() -> None:
    h = Harness()
    h.login("a", "alice")
    h.login("b", "bob")
    h.join("a", "r")
    h.join("b", "r")
    h.take_all()
    out = h.cmd("a", "quit", reason="bye")
    assert isinstance(out[-1], Close) and out[-1].code == CloseCode.NORMAL
    assert h.take("b") == [{"type": "quit", "nick": "alice", "ts": 1000.0, "reason": "bye"}]
    assert h.hub.receive("a", b'{"type":"ping"}', h.now) == []
    assert h.hub.disconnect("a", h.now) == []
    assert h.hub.receive("ghost", b"junk", h.now) == []


def test_quit_before_hello_and_reused_client_id() -> None:
    h = Harness()
    h.connect("a")
    assert isinstance(h.cmd("a", "quit")[-1], Close)
    h.closed.clear()
    h.login("b", "bob")
    h.join("b", "r")
    h.login("c", "carol")
    h.join("c", "r")
    h.take_all()
    h.connect("b")  # the runtime reused an id: the old session is dropped first
    assert h.take("c")[0]["type"] == "quit"
    h.cmd("b", "hello", nick="bob")
    assert h.take("b")[0]["type"] == "welcome"


def test_history_replayed_on_join() -> None:
    h = Harness(history=3)
    h.login("a", "alice")
    h.join("a", "r")
    for i in range(5):
        h.now += 1
        h.cmd("a", "say" if i % 2 == 0 else "me", room="r", text=f"m{i}")
    h.take("a")
    h.login("b", "bob")
    events = h.join("b", "r")
    assert [ev["type"] for ev in events] == ["joined", "who", "history"]
    assert [(m["type"], m["text"], m["ts"]) for m in events[2]["messages"]] == [
        ("message", "m2", 1003.0),
        ("action", "m3", 1004.0),
        ("message", "m4", 1005.0),
    ]
    # everyone leaves: the history of an open room stays for whoever comes back
    h.cmd("a", "leave", room="r")
    h.cmd("b", "leave", room="r")
    assert [m["text"] for m in h.join("a", "r")[-1]["messages"]] == ["m2", "m3", "m4"]


def test_no_history_when_disabled() -> None:
    h = Harness(history=0)
    h.login("a", "alice")
    h.join("a", "r")
    h.cmd("a", "say", room="r", text="x")
    h.login("b", "bob")
    assert [ev["type"] for ev in h.join("b", "r")] == ["joined", "who"]


def test_protocol_counts_and_payload_shared_across_protocols() -> None:
    hub = Hub(ChatOptions())
    hub.connect("n", 0.0, "10.0.0.1", "native")
    hub.connect("w", 0.0, "10.0.0.2", "websocket")
    for cid, nick in (("n", "nat"), ("w", "web")):
        hub.receive(cid, {"type": "hello", "nick": nick}, 0.0)
        hub.receive(cid, {"type": "join", "room": "mixed"}, 0.0)
    (out,) = hub.receive("w", '{"type":"say","room":"mixed","text":"from the browser"}', 1.0)
    assert isinstance(out, Deliver) and set(out.recipients) == {"n", "w"}
    assert out.payload.text == out.payload.data.decode()
    assert out.payload.text is out.payload.text
    counters = hub.metrics()
    assert counters.connections_open == {"native": 1, "websocket": 1}
    assert counters.users == 2 and counters.rooms == 1


def test_damaged_history_entries_are_skipped() -> None:
    h = Harness()
    h.login("a", "alice")
    h.join("a", "r")
    h.cmd("a", "say", room="r", text="good")
    h.hub.backplane.append_history("r", {"type": "bogus"}, 50)
    h.hub.backplane.append_history("r", {"type": "notice", "text": "not a message", "ts": 1.0}, 50)
    h.login("b", "bob")
    history = h.join("b", "r")[-1]
    assert [m["text"] for m in history["messages"]] == ["good"]
    assert h.hub.counters.remote_bad == 1
