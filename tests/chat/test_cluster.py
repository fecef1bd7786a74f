"""Two hubs sharing one in-memory backplane: a deterministic cluster."""

from __future__ import annotations

from opensocket.chat import ChatOptions, Envelope, Hub, MemoryBackplane
from opensocket.errors import CloseCode

from .helpers import TOKEN, Harness


class Cluster:
    """Hubs "n1" and "n2" over one MemoryBackplane; ``pump`` moves envelopes until quiet."""

    def __init__(self, **options: object) -> None:
        self.backplane = MemoryBackplane()
        opts = ChatOptions(operator_token=TOKEN, **options)  # type: ignore[arg-type]
        self.n1 = Harness(hub=Hub(opts, self.backplane, node="n1"))
        self.n2 = Harness(hub=Hub(opts, self.backplane, node="n2"))

    def pump(self) -> None:
        for _ in range(10):
            moved = False
            for node in (self.n1, self.n2):
                for envelope in self.backplane.take(node.hub.node):
                    moved = True
                    node.apply(node.hub.deliver(envelope, node.now))
            if not moved:
                return
        raise AssertionError("envelopes kept coming")


def _two_users() -> Cluster:
    c = Cluster()
    c.n1.login("a", "alice")
    c.n2.login("b", "bob")
    c.n1.join("a", "r")
    c.pump()
    c.n2.join("b", "r")
    c.pump()
    c.n1.take_all()
    c.n2.take_all()
    return c


def test_users_on_two_hubs_share_a_room() -> None:
    c = _two_users()
    c.n1.cmd("a", "say", room="r", text="hi from n1")
    c.pump()
    msg = {"type": "message", "room": "r", "nick": "alice", "text": "hi from n1", "ts": 1000.0}
    assert c.n1.take_all() == {"a": [msg]}
    assert c.n2.take_all() == {"b": [msg]}
    c.n2.cmd("b", "who", room="r")
    assert c.n2.take("b") == [{"type": "who", "room": "r", "nicks": ["alice", "bob"]}]
    c.n2.cmd("b", "rooms")
    assert c.n2.take("b")[0]["rooms"] == [{"name": "r", "members": 2, "topic": "", "locked": False}]


def test_join_presence_history_and_topic_across_hubs() -> None:
    c = Cluster()
    c.n1.login("a", "alice")
    c.n1.join("a", "r")
    c.n1.cmd("a", "topic", room="r", topic="shared")
    c.n1.cmd("a", "say", room="r", text="before bob")
    c.pump()
    c.n2.login("b", "bob")
    events = c.n2.join("b", "R")
    assert [e["type"] for e in events] == ["joined", "topic", "who", "history"]
    assert events[3]["messages"][0]["text"] == "before bob"
    c.pump()
    assert c.n1.take("a")[-1] == {"type": "joined", "room": "r", "nick": "bob", "ts": 1000.0}


def test_nick_uniqueness_across_hubs() -> None:
    c = Cluster()
    c.n1.login("a", "Alice")
    c.n2.connect("b")
    c.n2.cmd("b", "hello", nick="ALICE")
    assert c.n2.error("b") == "nick_taken"
    c.n2.cmd("b", "hello", nick="bob")
    c.n2.take("b")
    c.n1.cmd("a", "nick", nick="Bob")
    assert c.n1.error("a") == "nick_taken"
    c.n1.disconnect("a")
    c.pump()
    c.n2.cmd("b", "nick", nick="alice")
    assert c.n2.take("b")[0]["new"] == "alice"


def test_private_message_across_hubs() -> None:
    c = _two_users()
    c.n1.cmd("a", "msg", to="BOB", text="psst")
    c.pump()
    private = {"type": "private", "nick": "alice", "to": "BOB", "text": "psst", "ts": 1000.0}
    assert c.n1.take_all() == {"a": [private]}
    assert c.n2.take_all() == {"b": [private]}


def test_nick_change_and_quit_cross_hubs() -> None:
    c = _two_users()
    c.n2.cmd("b", "nick", nick="robert")
    c.pump()
    assert c.n1.take("a") == [{"type": "nick", "old": "bob", "new": "robert", "ts": 1000.0}]
    c.n2.disconnect("b", "gone")
    c.pump()
    assert c.n1.take("a") == [{"type": "quit", "nick": "robert", "ts": 1000.0, "reason": "gone"}]
    c.n1.cmd("a", "who", room="r")
    assert c.n1.take("a")[0]["nicks"] == ["alice"]


def test_reap_takes_a_dead_nodes_user_out_of_its_rooms() -> None:
    c = _two_users()
    assert c.n2.hub.reap("BOB", ["r"], c.n2.now) == []  # a user of our own is alive
    assert c.n1.hub.reap("carol", [], c.n1.now) == []  # in no room: nothing to say
    c.n1.apply(c.n1.hub.reap("bob", ["r"], c.n1.now))  # n1 found bob left behind by n2
    quit = {"type": "quit", "nick": "bob", "ts": 1000.0, "reason": "their hub stopped"}
    assert c.n1.take_all() == {"a": [quit]}
    assert c.backplane.members("r") == ["alice"]
    assert c.n1.hub.metrics().ghosts == 1


def test_operator_on_one_hub_kicks_and_bans_on_the_other() -> None:
    c = _two_users()
    c.n2.login("c", "carol", ip="10.9.9.9")
    c.n1.cmd("a", "kick", nick="bob", room="r", token=TOKEN)
    assert c.n1.take("a")[0]["text"] == "kicked bob"
    c.pump()
    assert c.n2.take("b")[0] == {"type": "kicked", "by": "alice", "room": "r"}
    assert c.n1.take("a") == [
        {"type": "left", "room": "r", "nick": "bob", "ts": 1000.0, "reason": "kicked by alice"}
    ]
    c.n1.cmd("a", "kick", nick="bob", token=TOKEN)
    c.pump()
    assert c.n2.closed["b"][0] == CloseCode.POLICY
    c.n1.cmd("a", "ban", nick="carol", by_ip=True, token=TOKEN)
    c.pump()
    assert c.n2.closed["c"][0] == CloseCode.ACCESS_DENIED
    c.n1.connect("c2", ip="10.9.9.9")  # the IP ban made on n2 holds on n1
    assert c.n1.closed["c2"][0] == CloseCode.ACCESS_DENIED
    c.n1.take_all()
    c.n1.cmd("a", "kick", nick="nobody", token=TOKEN)
    assert c.n1.error("a") == "no_such_nick"


def test_resync_after_backplane_loss() -> None:
    c = _two_users()
    # the backplane "lost" everything (a Redis restart without persistence)
    fresh = MemoryBackplane()
    c.n1.hub.backplane = fresh
    c.n2.hub.backplane = fresh
    c.backplane = fresh
    fresh.attach("n1")
    fresh.attach("n2")
    c.n2.apply(c.n2.hub.resync(c.n2.now))
    c.n1.apply(c.n1.hub.resync(c.n1.now))
    assert c.n1.take_all() == {} and c.n2.take_all() == {}
    c.n1.cmd("a", "who", room="r")
    assert c.n1.take("a")[0]["nicks"] == ["alice", "bob"]
    c.n1.cmd("a", "say", room="r", text="still one room")
    c.pump()
    assert c.n2.take("b")[0]["text"] == "still one room"


def test_resync_renames_a_nick_taken_meanwhile() -> None:
    c = _two_users()
    fresh = MemoryBackplane()
    for harness in (c.n1, c.n2):
        harness.hub.backplane = fresh
        fresh.attach(harness.hub.node)
    c.backplane = fresh
    c.n2.login("b2", "Alice")  # during the outage n2 gave away alice's nick
    c.n2.join("b2", "r")
    c.n1.apply(c.n1.hub.resync(c.n1.now))
    events = c.n1.take("a")
    assert events[0]["code"] == "nick_taken" and "Guest1" in events[0]["message"]
    assert events[1] == {"type": "nick", "old": "alice", "new": "Guest1", "ts": 1000.0}
    c.n2.apply(c.n2.hub.resync(c.n2.now))
    c.pump()
    c.n2.cmd("b2", "who", room="r")
    assert c.n2.take("b2")[-1]["nicks"] == ["Alice", "bob", "Guest1"]
    c.n1.cmd("a", "msg", to="alice", text="who are you?")
    c.pump()
    assert c.n2.take("b2")[-1]["text"] == "who are you?"


def test_envelopes_from_self_and_for_absent_nicks_are_ignored() -> None:
    c = _two_users()
    c.n1.cmd("a", "msg", to="bob", text="x")
    (envelope,) = c.backplane.take("n2")
    assert c.n1.hub.deliver(envelope, 0.0) == []  # its own envelope
    c.n2.disconnect("b")
    assert c.n2.hub.deliver(envelope, 0.0) == []  # bob left meanwhile
    c.backplane.detach("n2")
    assert c.backplane.take("n2") == []


def test_broken_envelope_is_counted_not_delivered() -> None:
    c = _two_users()
    bad = Envelope("n1", "rooms", data=b'{"type":"nonsense"}', rooms=("r",))
    assert c.n2.hub.deliver(bad, 0.0) == []
    assert c.n2.hub.deliver(Envelope("n1", "rooms", data=b"junk", rooms=("nowhere",)), 0.0) == []
    assert c.n2.hub.counters.remote_bad == 1


def test_nick_lost_renames_the_local_holder() -> None:
    c = _two_users()
    c.n1.apply(c.n1.hub.nick_lost("alice", c.n1.now))
    events = c.n1.take("a")
    assert events[0]["code"] == "nick_taken"
    assert events[1] == {"type": "nick", "old": "alice", "new": "Guest1", "ts": 1000.0}
    c.pump()
    assert c.n2.take("b") == [events[1]]
    c.n2.cmd("b", "who", room="r")
    assert c.n2.take("b")[0]["nicks"] == ["bob", "Guest1"]
    assert c.n1.hub.nick_lost("nobody", c.n1.now) == []


def test_resync_is_idempotent_and_keeps_room_settings() -> None:
    c = _two_users()
    c.n1.cmd("a", "lock", room="r", password="pw")
    c.pump()
    c.n1.take_all()
    c.n2.take_all()
    assert c.n1.hub.resync(c.n1.now) == []  # nothing was lost: nothing changes
    assert c.n1.hub.backplane.members("r") == ["alice", "bob"]
    meta = c.backplane.room_meta("r")
    assert meta is not None and meta.password is not None
    fresh = MemoryBackplane()  # lost members and nicks, but the settings survived (a mirror)
    fresh.create_room("r", meta)
    for harness in (c.n1, c.n2):
        harness.hub.backplane = fresh
        fresh.attach(harness.hub.node)
        assert harness.hub.resync(harness.now) == []
    assert fresh.room_meta("r") == meta
    assert fresh.members("r") == ["alice", "bob"]
