"""Whatever decodable frame a peer sends, a pattern core raises nothing but ProtocolError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from opensocket.errors import ProtocolError
from opensocket.messaging.envelope import RULES, Envelope, Kind, MetaFlags
from opensocket.messaging.pair import Pair
from opensocket.messaging.pubsub import Publisher, PublisherOptions, Subscriber
from opensocket.messaging.pushpull import Puller, PullOptions, Pusher, PushOptions
from opensocket.messaging.reqrep import Replier, Requester


def envelope(kind: Kind, payload: bytes, ident: int, topic: bytes, flags: int) -> Envelope:
    rule = RULES[kind]
    return Envelope(
        kind,
        payload if rule.payload else b"",
        ident if rule.required & MetaFlags.HAS_ID else None,
        topic if rule.required & MetaFlags.HAS_TOPIC else None,
        flags & rule.allowed & 0x0F,
    )


envelopes = st.builds(
    envelope,
    st.sampled_from([k for k in Kind if k not in (Kind.SESSION, Kind.SESSION_OK, Kind.ACK)]),
    st.binary(max_size=8),
    st.integers(0, 5),
    st.binary(max_size=3),
    st.integers(0, 15),
)


def cores() -> list:  # type: ignore[type-arg]
    return [
        Requester(),
        Replier(),
        Publisher(PublisherOptions(last_value_cache=True)),
        Subscriber(),
        Pusher(PushOptions(acks=True)),
        Puller(PullOptions(acks=True)),
        Pair(),
    ]


@given(st.lists(envelopes, max_size=8))
@settings(max_examples=300, deadline=None)
def test_cores_raise_only_protocol_errors(batch: list[Envelope]) -> None:
    for core in cores():
        core.peer_up(1, 0)
        for env in batch:
            try:
                core.receive(1, env, 0)
            except ProtocolError:
                pass
        core.frames_to_send()
        core.events()
        core.peer_down(1, 0)
