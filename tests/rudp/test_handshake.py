"""The stateless-cookie handshake, anti-amplification, secrets and negotiation."""

from __future__ import annotations

from dataclasses import replace

import pytest

from opensocket.errors import CloseCode
from opensocket.rudp import (
    ChannelKind,
    Connected,
    ConnectionTerminated,
    RudpConnection,
    RudpOptions,
    RudpServer,
    State,
)
from opensocket.rudp.crypto import seal_crc
from opensocket.rudp.wire import MIN_INITIAL, PacketType, parse_header

from .helpers import open_sim, received
from .sim import CLIENT, SERVER, Sim

SECRET = b"0123456789abcdef-shared"


def first_initial(opts: RudpOptions | None = None) -> tuple[RudpConnection, bytes]:
    client = RudpConnection.connect(SERVER, opts, now=0.0)
    [(data, addr)] = client.datagrams_to_send(0.0)
    assert addr == SERVER
    return client, data


def test_initial_is_padded_and_answered_by_a_smaller_stateless_retry() -> None:
    _, initial = first_initial()
    assert len(initial) >= MIN_INITIAL
    assert len(initial) == 1200
    server = RudpServer(now=0.0)
    server.receive_datagram(initial, CLIENT, 0.0)
    replies = server.datagrams_to_send(0.0)
    assert [parse_header(d).type for d, _ in replies] == [PacketType.RETRY]
    assert sum(len(d) for d, _ in replies) <= len(initial)  # anti-amplification
    assert server.connections == {}  # no state before the cookie
    assert server._by_client == {}
    assert server.next_event() is None


def test_cookie_creates_the_connection_and_accept_is_small() -> None:
    client, initial = first_initial()
    server = RudpServer(now=0.0)
    server.receive_datagram(initial, CLIENT, 0.0)
    [(retry, _)] = server.datagrams_to_send(0.0)
    client.receive_datagram(retry, SERVER, 0.01)
    [(second, _)] = client.datagrams_to_send(0.01)
    server.receive_datagram(second, CLIENT, 0.02)
    out = server.datagrams_to_send(0.02)
    assert [parse_header(d).type for d, _ in out] == [PacketType.ACCEPT]
    assert len(out[0][0]) <= len(second)
    assert len(server.connections) == 1
    server.receive_datagram(second, CLIENT, 0.03)  # the same INITIAL again: ACCEPT again
    again = server.datagrams_to_send(0.03)
    assert [parse_header(d).type for d, _ in again] == [PacketType.ACCEPT]
    assert len(server.connections) == 1
    client.receive_datagram(out[0][0], SERVER, 0.04)
    assert client.state is State.OPEN
    assert isinstance(client.next_event(), Connected)


@pytest.mark.parametrize("seed", range(6))
def test_amplification_limit_holds_under_loss(seed: int) -> None:
    sim = Sim(seed=seed, loss=0.3)
    sent_unvalidated: list[int] = []

    def watch(data: bytes) -> bool:
        if not sim.server.connections:  # nothing validated yet: count every byte sent
            sent_unvalidated.append(len(data))
            assert sum(sent_unvalidated) <= sim.server.stats.bytes_received
        return False

    sim.down.filter = watch
    sim.run(lambda: sim.client.state is State.OPEN and sim.conn is not None, limit=30)
    assert sent_unvalidated  # the RETRY (and its repeats) were counted
    assert sum(sent_unvalidated) * 10 < sim.server.stats.bytes_received  # far below, in fact


def _with_token(client: RudpConnection, server: RudpServer, now: float) -> bytes:
    [(initial, _)] = client.datagrams_to_send(now)
    server.receive_datagram(initial, CLIENT, now)
    [(retry, _)] = server.datagrams_to_send(now)
    client.receive_datagram(retry, SERVER, now)
    [(second, _)] = client.datagrams_to_send(now)
    return second


def test_stale_cookie_is_refused() -> None:
    opts = RudpOptions(cookie_lifetime=5.0)
    server = RudpServer(opts, now=0.0)
    client = RudpConnection.connect(SERVER, opts, now=0.0)
    second = _with_token(client, server, 0.0)
    server.receive_datagram(second, CLIENT, 11.0)  # two lifetimes later
    out = server.datagrams_to_send(11.0)
    assert server.connections == {}
    assert server.stats.dropped["bad cookie"] == 1
    assert [parse_header(d).type for d, _ in out] == [PacketType.RETRY]  # a fresh one


def test_cookie_from_another_address_or_forged_is_refused() -> None:
    server = RudpServer(now=0.0)
    client = RudpConnection.connect(SERVER, now=0.0)
    second = _with_token(client, server, 0.0)
    server.receive_datagram(second, ("10.9.9.9", 40000), 0.1)
    forged = bytearray(second)
    forged[12 + 20 + 8 + 3 + 1 + 10] ^= 0xFF  # a MAC byte of the token (CRC redone below)
    server.receive_datagram(seal_crc(forged[:-4]), CLIENT, 0.1)
    assert server.connections == {}
    assert server.stats.dropped["bad cookie"] == 2


def test_cookie_secret_rotates() -> None:
    server = RudpServer(RudpOptions(cookie_lifetime=1.0), now=0.0)
    client = RudpConnection.connect(SERVER, now=0.0)
    second = _with_token(client, server, 0.0)
    server.receive_datagram(bytes(1300), CLIENT, 1.5)  # time passes: the server rotates
    server.receive_datagram(second, CLIENT, 1.5)  # made under the previous secret: still good
    assert len(server.connections) == 1


def test_secret_gives_an_authenticated_encrypted_connection() -> None:
    opts = RudpOptions(secret=SECRET)
    sim = open_sim(options=opts, loss=0.1, seed=3)
    assert sim.client_events[0] == Connected(sim.client.local_cid, sim.client.peer_cid, True)
    sim.client.send(0, b"secret hello")
    sim.flush()
    sim.run(lambda: received(sim.server_events) == [b"secret hello"], limit=10)
    packet = sim.up.bytes  # something was sent, and none of it in clear:
    assert packet > 0


def test_payload_is_not_in_clear_with_a_secret() -> None:
    seen: list[bytes] = []
    sim = open_sim(options=RudpOptions(secret=SECRET))
    sim.up.filter = lambda d: seen.append(d) or False  # type: ignore[func-returns-value]
    sim.client.send(0, b"PLAINTEXT-MARKER")
    sim.flush()
    sim.run(lambda: received(sim.server_events) == [b"PLAINTEXT-MARKER"], limit=5)
    assert seen
    assert not any(b"PLAINTEXT-MARKER" in d for d in seen)


def test_wrong_secret_never_connects() -> None:
    sim = Sim(
        options=RudpOptions(secret=SECRET, handshake_timeout=2.0),
        server_options=RudpOptions(secret=b"another secret of 16+"),
    )
    sim.run(lambda: sim.client.state is State.CLOSED, limit=5)
    assert sim.server.connections == {}
    assert sim.server.stats.dropped["handshake authentication"] >= 1
    assert sim.client_events == [
        ConnectionTerminated(CloseCode.HANDSHAKE_TIMEOUT, "no answer to the handshake", False)
    ]


@pytest.mark.parametrize(
    ("client", "server", "code"),
    [
        (RudpOptions(), RudpOptions(secret=SECRET), CloseCode.AUTH_REQUIRED),
        (RudpOptions(secret=SECRET), RudpOptions(), CloseCode.NEGOTIATION_FAILED),
        (
            RudpOptions(channels=(ChannelKind.RELIABLE_ORDERED,)),
            RudpOptions(),
            CloseCode.NEGOTIATION_FAILED,
        ),
    ],
)
def test_mismatches_are_rejected(client: RudpOptions, server: RudpOptions, code: int) -> None:
    sim = Sim(options=client, server_options=server)
    sim.run(lambda: sim.client.state is State.CLOSED, limit=5)
    [event] = sim.client_events
    assert isinstance(event, ConnectionTerminated)
    assert (event.code, event.by_peer) == (code, True)
    assert sim.server.connections == {}


def test_handshake_timeout_without_a_server() -> None:
    sim = Sim(options=replace(RudpOptions(), handshake_timeout=3.0))
    sim.up.loss = 1.0
    sim.run(lambda: sim.client.state is State.CLOSED, limit=10)
    assert sim.now == pytest.approx(3.0)
    assert sim.client_events == [
        ConnectionTerminated(CloseCode.HANDSHAKE_TIMEOUT, "no answer to the handshake", False)
    ]
    assert sim.up.sent >= 4  # the INITIAL was retransmitted


def test_server_connection_limit() -> None:
    sim = Sim()
    sim.server.max_connections = 0
    sim.run(lambda: sim.client.state is State.CLOSED, limit=5)
    assert sim.client_events[0].code == CloseCode.CONNECTION_LIMIT  # type: ignore[attr-defined]


def test_tampered_accept_is_dropped_with_a_secret() -> None:
    opts = RudpOptions(secret=SECRET)
    sim = Sim(options=opts)

    def tamper(data: bytes) -> bool:
        if parse_header(data).type == PacketType.ACCEPT:
            forged = bytearray(data[:-4])
            forged[16] ^= 1  # the server's nonce, under the MAC
            sim.inject(seal_crc(forged), CLIENT, SERVER, delay=0.01)
            return True  # the genuine one is lost
        return False

    sim.down.filter = tamper
    sim.run_for(0.5)
    assert sim.client.state is State.HANDSHAKE
    assert sim.client.stats.dropped["handshake authentication"] >= 1
