"""Fan-out: one encoding per event, the same bytes object for every recipient."""

from __future__ import annotations

from opensocket.chat import ChatOptions, Deliver, Hub, Payload


def test_one_payload_object_for_a_thousand_recipients() -> None:
    hub = Hub(ChatOptions(rate=1e9, burst=10_000))
    for i in range(1000):
        hub.connect(i, 0.0, "127.0.0.1", "websocket" if i % 2 else "native")
        hub.receive(i, {"type": "hello", "nick": f"u{i}"}, 0.0)
        hub.receive(i, {"type": "join", "room": "big"}, 0.0)
    out = hub.receive(7, b'{"type":"say","room":"big","text":"to all"}', 1.0)
    assert len(out) == 1
    (deliver,) = out
    assert isinstance(deliver, Deliver)
    assert len(deliver.recipients) == 1000 and set(deliver.recipients) == set(range(1000))
    # what a runtime does per recipient: it gets the same object every time
    sent = [deliver.payload.data for _ in deliver.recipients]
    assert all(item is sent[0] for item in sent)
    texts = [deliver.payload.text for _ in deliver.recipients]
    assert all(item is texts[0] for item in texts)
    calls: list[bytes] = []

    def frame(data: bytes) -> bytes:
        calls.append(data)
        return b"\x81" + data

    frames = [deliver.payload.memo("ws", frame) for _ in deliver.recipients]
    assert len(calls) == 1 and all(f is frames[0] for f in frames)


def test_presence_fanout_is_one_delivery_per_event() -> None:
    hub = Hub(ChatOptions(rate=1e9, burst=10_000))
    for i in range(50):
        hub.connect(i, 0.0, None, "native")
        hub.receive(i, {"type": "hello", "nick": f"u{i}"}, 0.0)
        hub.receive(i, {"type": "join", "room": "a"}, 0.0)
        hub.receive(i, {"type": "join", "room": "b"}, 0.0)
    out = hub.disconnect(0, 1.0)
    assert len(out) == 1 and isinstance(out[0], Deliver)
    assert sorted(out[0].recipients) == list(range(1, 50))  # in both rooms, told once


def test_payload_repr_and_len() -> None:
    payload = Payload(b"x" * 100)
    assert len(payload) == 100
    assert repr(payload).endswith("...)")


def test_each_room_event_is_encoded_once() -> None:
    hub = Hub(ChatOptions())
    for i in range(3):
        hub.connect(i, 0.0, None, "native")
        hub.receive(i, {"type": "hello", "nick": f"u{i}"}, 0.0)
        hub.receive(i, {"type": "join", "room": "r"}, 0.0)
    for command in (
        {"type": "nick", "nick": "renamed"},
        {"type": "topic", "room": "r", "topic": "t"},
        {"type": "me", "room": "r", "text": "waves"},
        {"type": "leave", "room": "r"},
    ):
        out = hub.receive(0, command, 1.0)
        assert len(out) == 1 and isinstance(out[0], Deliver), command
        assert sorted(out[0].recipients) == [0, 1, 2]


def test_recipients_follow_membership_changes() -> None:
    hub = Hub(ChatOptions())
    for i in range(3):
        hub.connect(i, 0.0, None, "native")
        hub.receive(i, {"type": "hello", "nick": f"u{i}"}, 0.0)
    say = {"type": "say", "room": "r", "text": "x"}

    def recipients() -> list[object]:
        (out,) = hub.receive(0, say, 1.0)
        assert isinstance(out, Deliver)
        return sorted(out.recipients)  # type: ignore[type-var]

    hub.receive(0, {"type": "join", "room": "r"}, 0.0)
    assert recipients() == [0]
    hub.receive(1, {"type": "join", "room": "r"}, 0.0)
    hub.receive(2, {"type": "join", "room": "r"}, 0.0)
    assert recipients() == [0, 1, 2]
    hub.receive(1, {"type": "leave", "room": "r"}, 0.0)
    assert recipients() == [0, 2]
    hub.disconnect(2, 0.0)
    assert recipients() == [0]
