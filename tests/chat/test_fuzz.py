"""Hypothesis: no command, dict or byte string ever raises out of the hub."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opensocket.chat import COMMANDS, ChatOptions, Close, Deliver, ErrorCode, Hub, MemoryBackplane

from .helpers import TOKEN

NICKS = st.sampled_from(
    ["user0", "USER1", "user2", "user3", "user4", "alice", "Guest1", "1bad", ""]
)
ROOMS = st.sampled_from(["r", "#r", "R", "other", "#", "bad room", "x" * 40])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    NICKS,
    ROOMS,
    st.sampled_from([TOKEN, "10.0.0.1", "::1"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = sorted({f for _, fields in COMMANDS.values() for f in fields} | {"id", "type"})


@st.composite
def commands(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from([*COMMANDS, "nope"]))
    obj: dict[str, Any] = {"type": kind}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5)):
        obj[name] = draw(VALUES)
    obj["type"] = kind if draw(st.integers(0, 9)) else draw(VALUES)
    form = draw(st.integers(0, 3))
    if form == 0:
        return obj
    try:
        text = json.dumps(obj)
    except ValueError:
        return obj
    return text if form == 1 else text.encode()


PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "nick": NICKS,
    "to": NICKS,
    "room": ROOMS,
    "text": st.sampled_from(["hi", "line\nbreak", "", "x" * 2001]),
    "token": st.sampled_from([TOKEN, "wrong-token"]),
    "password": st.sampled_from(["pw", "other", None]),
    "ip": st.sampled_from(["10.0.0.1", "10.0.0.2", "::ffff:10.0.0.0", "bad"]),
    "by_ip": st.booleans(),
    "topic": st.sampled_from(["", "a topic", None]),
}


@st.composite
def plausible(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid commands, so that the fuzz reaches deep into the hub."""
    kind = draw(st.sampled_from(list(COMMANDS)))
    obj: dict[str, Any] = {"type": kind}
    for name in COMMANDS[kind][1]:
        if draw(st.integers(0, 9)) < 8:
            obj[name] = draw(PLAUSIBLE.get(name, st.text(max_size=8)))
    return obj


INPUTS = st.one_of(
    *[plausible()] * 6, commands(), st.binary(max_size=64), st.text(max_size=64), VALUES
)
ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["recv"] * 8 + ["connect", "disconnect", "pump", "pump"]),
        st.integers(0, 4),
        INPUTS,
        st.floats(0, 5),
    ),
    min_size=10,
    max_size=40,
)
KNOWN = {code.value for code in ErrorCode} - {"internal_error"}


def _check_errors_stay_private(client: int, out: list[Any]) -> None:
    """A refused command answers its sender alone: one error event (and a close if banned)."""
    errors = [x for x in out if isinstance(x, Deliver) and x.event.type == "error"]
    if not errors:
        return
    assert out[0] is errors[0] and out[0].recipients == (client,)
    assert len(out) == 1 or (
        len(out) == 2 and isinstance(out[1], Close) and out[1].client == client
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ACTIONS)
def test_hub_never_raises(actions: list[tuple[str, int, Any, float]]) -> None:
    backplane = MemoryBackplane()
    opts = ChatOptions(operator_token=TOKEN, history=3, max_rooms_per_user=2, burst=20)
    hubs = [Hub(opts, backplane, node="n1"), Hub(opts, backplane, node="n2")]
    now = 0.0
    for client in range(5):
        hubs[client % 2].connect(client, now, f"10.0.0.{client % 3}", "native")
        hubs[client % 2].receive(client, {"type": "hello", "nick": f"user{client}"}, now)
        hubs[client % 2].receive(client, {"type": "join", "room": "r"}, now)
    for action, client, data, step in actions:
        now += step
        hub = hubs[client % 2]
        if action == "recv":
            out = hub.receive(client, data, now)
            _check_errors_stay_private(client, out)
        elif action == "connect":
            out = hub.connect(client, now, "10.0.0.1", "websocket")
        elif action == "disconnect":
            out = hub.disconnect(client, now, "fuzz")
        else:
            out = []
            for h in hubs:
                for envelope in backplane.take(h.node):
                    out += h.deliver(envelope, now)
        for item in out:
            assert isinstance(item, Deliver | Close)
            if isinstance(item, Deliver):
                assert json.loads(item.payload.data) == item.event.to_dict()
                if item.event.type == "error":
                    assert item.event.code in KNOWN  # type: ignore[attr-defined]
    for hub in hubs:
        counters = hub.metrics()
        assert all(v >= 0 for v in counters.connections_open.values())
        assert set(hub.nicks) == {s.key for s in hub.sessions.values() if s.nick is not None}
