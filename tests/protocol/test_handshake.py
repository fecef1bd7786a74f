"""The opening handshake: negotiation of every setting, authentication, refusals, timeouts."""

from __future__ import annotations

import json

import pytest

from opensocket.errors import (
    AuthenticationFailed,
    CloseCode,
    ConnectionRejected,
    FrameTooLarge,
    HandshakeError,
    HandshakeTimeout,
    NegotiationFailed,
    ProtocolError,
)
from opensocket.options import ProtocolOptions
from opensocket.protocol import FramedConnection, FrameType, State
from opensocket.protocol import handshake as hs
from opensocket.protocol.connection import decode_close, encode_close, peer_error
from opensocket.protocol.frame import Frame, frame_bytes

from .helpers import (
    SECRET,
    Pair,
    client,
    decode_all,
    error_frame,
    hello,
    hello_body,
    server,
    terminated,
    welcome_body,
)

# ---- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "accepted", "chosen"),
    [
        (("msgpack", "json"), ("json", "msgpack"), "msgpack"),
        (("protobuf:x", "json"), ("bytes", "json"), "json"),
        (("bytes",), ("json", "bytes"), "bytes"),
    ],
)
def test_codec_is_the_first_of_the_clients_list_the_server_accepts(
    offered: tuple[str, ...], accepted: tuple[str, ...], chosen: str
) -> None:
    pair = Pair(ProtocolOptions(codecs=offered), ProtocolOptions(codecs=accepted)).open()
    assert pair.handshake("client").codec == chosen
    assert pair.handshake("server").codec == chosen


def test_no_common_codec_fails_on_both_sides() -> None:
    pair = Pair(ProtocolOptions(codecs=("json",)), ProtocolOptions(codecs=("msgpack",)))
    pair.exchange()
    server_end, client_end = pair.terminal("server"), pair.terminal("client")
    assert isinstance(server_end.error, NegotiationFailed)
    assert not server_end.by_peer
    assert isinstance(client_end.error, NegotiationFailed)
    assert client_end.by_peer
    assert client_end.code == server_end.code == CloseCode.NEGOTIATION_FAILED
    assert "client offered json; server accepts msgpack" in str(client_end.error)


def test_newest_common_version_is_chosen() -> None:
    conn = server()
    conn.receive_data(hello(versions=[7, 1, "2"]), 0.0)
    (frame,) = decode_all(conn.data_to_send())
    assert isinstance(frame, Frame)
    assert json.loads(frame.payload)["version"] == 1
    assert conn.state is State.OPEN


@pytest.mark.parametrize(
    ("client_hb", "server_hb", "agreed"),
    [(10.0, 15.0, 10.0), (15.0, 10.0, 10.0), (0.0, 15.0, 15.0), (10.0, 0.0, 10.0), (0.0, 0.0, 0.0)],
)
def test_heartbeat_is_the_smaller_non_zero_interval(
    client_hb: float, server_hb: float, agreed: float
) -> None:
    pair = Pair(ProtocolOptions(heartbeat=client_hb), ProtocolOptions(heartbeat=server_hb))
    pair.open(now=100.0)
    assert pair.handshake("client").heartbeat == agreed
    assert pair.handshake("server").heartbeat == agreed
    expected = 100.0 + agreed if agreed else None
    assert pair.client.get_timer() == expected
    assert pair.server.get_timer() == expected


def test_negative_heartbeat_offer_counts_as_off() -> None:
    conn = server(ProtocolOptions(heartbeat=0))
    conn.receive_data(hello(heartbeat=-5), 0.0)
    (frame,) = decode_all(conn.data_to_send())
    assert isinstance(frame, Frame)
    assert json.loads(frame.payload)["heartbeat"] == 0.0
    assert conn.get_timer() is None


def test_max_frame_size_applies_per_direction() -> None:
    pair = Pair(ProtocolOptions(max_frame_size=1000), ProtocolOptions(max_frame_size=5000)).open()
    with pytest.raises(
        FrameTooLarge, match="5001 bytes exceeds the peer's maximum frame size of 5000"
    ):
        pair.client.send(b"x" * 5001)
    with pytest.raises(FrameTooLarge, match="of 1000 bytes"):
        pair.server.send(b"x" * 1001)
    assert pair.client.state is pair.server.state is State.OPEN  # a local refusal only
    pair.client.send(b"c" * 5000)
    pair.server.send(b"s" * 1000)
    pair.exchange()
    assert pair.server.take_messages() == [b"c" * 5000]
    assert pair.client.take_messages() == [b"s" * 1000]


def test_smallest_frame_limit_still_handshakes_and_closes() -> None:
    """64-byte limits: the handshake frames and long close reasons still get through."""
    tiny = ProtocolOptions(max_frame_size=64, secret=SECRET, name="n" * 200)
    pair = Pair(tiny, tiny).open()
    pair.client.close(
        1.0, CloseCode.NORMAL, "a reason much longer than the peer's 64-byte limit " * 3
    )
    for frame in decode_all(pair.client.data_to_send()):
        assert isinstance(frame, Frame)
        assert len(frame.payload) <= 64
        pair.server.receive_data(frame_bytes(frame.type, frame.payload), 1.0)
    assert pair.server.state is State.CLOSED
    assert pair.terminal("server").error is None


def test_huge_max_frame_offer_is_clamped_to_what_a_header_can_carry() -> None:
    conn = server()
    conn.receive_data(hello(max_frame=1 << 40), 0.0)
    assert conn.agreement is not None
    assert conn.agreement.peer_max_frame_size == 0xFFFFFFFF


def test_peer_name_is_cut_to_255_characters() -> None:
    conn = server()
    conn.receive_data(hello(name="x" * 1000), 0.0)
    assert conn.agreement is not None
    assert conn.agreement.peer_name == "x" * 255


CHECKSUM_CASES = [
    # (client checksum, client on TLS, server checksum, server on TLS) -> on?
    ("auto", False, "auto", False, True),
    ("auto", True, "auto", True, False),
    ("off", False, "off", False, False),
    ("off", True, "on", True, True),
    ("on", True, "auto", True, True),
    ("on", False, "off", False, True),
    ("auto", True, "off", True, False),
    ("off", True, "auto", False, True),
]


@pytest.mark.parametrize(("c_mode", "c_tls", "s_mode", "s_tls", "on"), CHECKSUM_CASES)
def test_checksum_is_on_unless_both_sides_say_off(
    c_mode: str, c_tls: bool, s_mode: str, s_tls: bool, on: bool
) -> None:
    pair = Pair(
        ProtocolOptions(checksum=c_mode),  # type: ignore[arg-type]
        ProtocolOptions(checksum=s_mode),  # type: ignore[arg-type]
        c_tls=c_tls,
        s_tls=s_tls,
    ).open()
    assert pair.handshake("client").checksum is on
    assert pair.handshake("server").checksum is on
    pair.client.send(b"ping")
    pair.server.send(b"pong")
    for conn in (pair.client, pair.server):
        data = conn.data_to_send()
        assert data[9] == (1 if on else 0), "flags byte of the DATA frame"
        assert (data[4:8] != bytes(4)) is on
    for conn in (pair.client, pair.server):
        conn.ping(1.0)
        assert conn.data_to_send()[9] == 1, "control frames always carry a checksum"


def test_unchecked_link_still_verifies_frames_that_carry_a_checksum() -> None:
    opts = ProtocolOptions(checksum="off")
    pair = Pair(opts, opts).open()
    good = frame_bytes(FrameType.DATA, b"ok")
    bad = good[:-1] + b"K"
    pair.server.receive_data(good + frame_bytes(FrameType.DATA, b"no", checksum=False), 1.0)
    assert pair.server.take_messages() == [b"ok", b"no"]
    pair.server.receive_data(bad, 1.0)
    assert terminated(pair.server).code == CloseCode.CHECKSUM_MISMATCH


# ---- authentication ---------------------------------------------------------------------


def test_shared_secret_authenticates_both_sides() -> None:
    opts = ProtocolOptions(secret=SECRET)
    pair = Pair(opts, opts).open()
    assert pair.handshake("client").authenticated
    assert pair.handshake("server").authenticated
    types = [f.type for f in decode_all(pair.wire["c2s"])]  # type: ignore[union-attr]
    assert types == [FrameType.HELLO, FrameType.AUTH]
    types = [f.type for f in decode_all(pair.wire["s2c"])]  # type: ignore[union-attr]
    assert types == [FrameType.WELCOME, FrameType.AUTH_OK]
    _assert_secret_not_sent(pair)
    pair.client.send(b"after auth")
    pair.exchange()
    assert pair.server.take_messages() == [b"after auth"]


def _assert_secret_not_sent(pair: Pair) -> None:
    for data in pair.wire.values():
        assert SECRET not in data
        assert SECRET.hex().encode() not in data


def test_wrong_secret_fails_on_both_sides() -> None:
    pair = Pair(ProtocolOptions(secret=b"the client's secret"), ProtocolOptions(secret=SECRET))
    pair.exchange()
    client_end, server_end = pair.terminal("client"), pair.terminal("server")
    assert isinstance(client_end.error, AuthenticationFailed)
    assert "server's authentication proof does not match" in str(client_end.error)
    assert not client_end.by_peer
    assert isinstance(server_end.error, AuthenticationFailed)
    assert server_end.by_peer
    assert client_end.code == server_end.code == CloseCode.AUTH_FAILED
    assert pair.server.take_messages() == []
    _assert_secret_not_sent(pair)


@pytest.mark.parametrize("proof", ["00" * 32, "zz", 5, None, "ab" * 31])
def test_server_rejects_a_wrong_client_proof(proof: object) -> None:
    opts = ProtocolOptions(secret=SECRET)
    pair = Pair(opts, opts)
    pair.c2s()
    pair.s2c()
    pair.client.data_to_send()  # the real AUTH is dropped; a forged one is sent instead
    body = json.dumps({} if proof is None else {"proof": proof}).encode()
    pair.server.receive_data(frame_bytes(FrameType.AUTH, body), 0.0)
    event = terminated(pair.server)
    assert isinstance(event.error, AuthenticationFailed)
    assert "client's authentication proof does not match" in str(event.error)
    assert error_frame(pair.server.data_to_send())[0] == CloseCode.AUTH_FAILED


def test_server_rejects_a_malformed_auth_body() -> None:
    opts = ProtocolOptions(secret=SECRET)
    pair = Pair(opts, opts)
    pair.c2s()
    pair.server.data_to_send()
    pair.server.receive_data(frame_bytes(FrameType.AUTH, b"not json"), 0.0)
    assert isinstance(terminated(pair.server).error, HandshakeError)


def test_server_requires_a_secret_the_client_does_not_have() -> None:
    pair = Pair(ProtocolOptions(), ProtocolOptions(secret=SECRET))
    pair.exchange()
    server_end, client_end = pair.terminal("server"), pair.terminal("client")
    assert server_end.code == client_end.code == CloseCode.AUTH_REQUIRED
    assert isinstance(server_end.error, AuthenticationFailed)
    assert isinstance(client_end.error, AuthenticationFailed)
    assert "requires a shared secret" in str(client_end.error)


def test_client_with_a_secret_refuses_a_server_without_one() -> None:
    pair = Pair(ProtocolOptions(secret=SECRET), ProtocolOptions())
    pair.exchange()
    client_end = pair.terminal("client")
    assert isinstance(client_end.error, AuthenticationFailed)
    assert "did not authenticate itself" in str(client_end.error)
    server_end = pair.terminal("server")
    assert server_end.by_peer
    assert isinstance(server_end.error, AuthenticationFailed)
    _assert_secret_not_sent(pair)


@pytest.mark.parametrize(
    ("nonce", "message"),
    [("zz" * 16, "nonce is not hex"), ("00" * 15, "nonce must be 16 bytes"), (16, "'nonce'")],
)
def test_bad_nonces(nonce: object, message: str) -> None:
    conn = server(ProtocolOptions(secret=SECRET))
    conn.receive_data(hello(auth="hmac-sha256", nonce=nonce), 0.0)
    event = terminated(conn)
    assert isinstance(event.error, HandshakeError)
    assert message in str(event.error)
    cli = client(ProtocolOptions(secret=SECRET))
    cli.receive_data(
        frame_bytes(FrameType.WELCOME, welcome_body(nonce=nonce, proof="00" * 32)), 0.0
    )
    assert message in str(terminated(cli).error)


def test_unknown_auth_method_counts_as_no_secret() -> None:
    conn = server(ProtocolOptions(secret=SECRET))
    conn.receive_data(hello(auth="plaintext", nonce="00" * 16), 0.0)
    assert terminated(conn).code == CloseCode.AUTH_REQUIRED


def test_client_without_a_secret_ignores_a_servers_proof() -> None:
    conn = client()
    conn.receive_data(frame_bytes(FrameType.WELCOME, welcome_body(proof="00" * 32)), 0.0)
    assert conn.state is State.OPEN


# ---- refusals, timeouts, peer errors ----------------------------------------------------


def test_handshake_timeout() -> None:
    pair = Pair(ProtocolOptions(handshake_timeout=3.0), now=10.0)
    assert pair.client.get_timer() == 13.0
    pair.client.handle_timer(12.999)
    assert pair.client.state is State.HANDSHAKE
    pair.client.handle_timer(13.0)
    client_end = pair.terminal("client")
    assert isinstance(client_end.error, HandshakeTimeout)
    assert "did not complete within 3s" in str(client_end.error)
    assert pair.client.get_timer() is None
    data = pair.client.data_to_send()
    assert error_frame(data)[0] == CloseCode.HANDSHAKE_TIMEOUT
    pair.server.receive_data(data, 13.0)
    server_end = pair.terminal("server")
    assert isinstance(server_end.error, HandshakeTimeout)
    assert server_end.by_peer


def test_server_handshake_timeout_while_waiting_for_auth() -> None:
    opts = ProtocolOptions(secret=SECRET, handshake_timeout=2.0)
    pair = Pair(opts, opts)
    pair.c2s()
    pair.s2c()  # the client's AUTH never arrives
    pair.server.handle_timer(2.0)
    assert isinstance(pair.terminal("server").error, HandshakeTimeout)


@pytest.mark.parametrize(
    "code",
    [
        CloseCode.POLICY,
        CloseCode.CONNECTION_LIMIT,
        CloseCode.RATE_LIMITED,
        CloseCode.ACCESS_DENIED,
        CloseCode.GOING_AWAY,
    ],
)
def test_server_rejection_reaches_the_client(code: CloseCode) -> None:
    pair = Pair()  # refused on accept, before the HELLO is read
    pair.server.reject(code, "go away")
    pair.server.reject(code, "twice")  # a second refusal is a no-op
    pair.s2c()
    client_end = pair.terminal("client")
    assert isinstance(client_end.error, ConnectionRejected)
    assert client_end.error.code == code
    assert "the server refused the connection: go away" in str(client_end.error)
    assert pair.terminal("server").error is None


@pytest.mark.parametrize(
    ("code", "during", "cls"),
    [
        (CloseCode.AUTH_FAILED, True, AuthenticationFailed),
        (CloseCode.AUTH_REQUIRED, False, AuthenticationFailed),
        (CloseCode.NEGOTIATION_FAILED, True, NegotiationFailed),
        (CloseCode.HANDSHAKE_FAILED, True, HandshakeError),
        (CloseCode.HANDSHAKE_TIMEOUT, False, HandshakeTimeout),
        (CloseCode.POLICY, True, ConnectionRejected),
        (CloseCode.POLICY, False, ProtocolError),
        (CloseCode.PROTOCOL_ERROR, False, ProtocolError),
        (4999, True, ProtocolError),
    ],
)
def test_peer_error_mapping(code: int, during: bool, cls: type) -> None:
    error = peer_error(code, "why", during_handshake=during)
    assert type(error) is cls
    assert "why" in str(error)
    if cls is ProtocolError:
        assert error.code == code  # type: ignore[attr-defined]


def test_error_frame_without_a_body_means_no_code() -> None:
    conn = client()
    conn.receive_data(frame_bytes(FrameType.ERROR, b""), 0.0)
    event = terminated(conn)
    assert event.code == CloseCode.NO_CODE
    assert event.by_peer


def test_close_codes_and_reasons() -> None:
    assert decode_close(encode_close(4010, "idle")) == (4010, "idle")
    assert decode_close(b"") == (CloseCode.NO_CODE, "")
    assert decode_close(b"\x03\xe8\xff") == (1000, "\ufffd")
    assert encode_close(1000, "x" * 2000) == b"\x03\xe8" + b"x" * 1024
    cut = encode_close(1000, "é" * 10, limit=5)
    assert cut == b"\x03\xe8" + "éé".encode()
    with pytest.raises(ProtocolError):
        decode_close(b"\x03")


# ---- the pure handshake functions -------------------------------------------------------


def test_hello_body_fields() -> None:
    plain = json.loads(hs.build_hello(ProtocolOptions(name="me"), tls=True, nonce=bytes(16)))
    assert plain == {
        "checksum": False,
        "codecs": ["bytes"],
        "heartbeat": 15.0,
        "max_frame": 16777216,
        "name": "me",
        "versions": [1],
    }
    authed = json.loads(
        hs.build_hello(ProtocolOptions(secret=SECRET), tls=False, nonce=bytes(range(16)))
    )
    assert authed["auth"] == "hmac-sha256"
    assert authed["nonce"] == bytes(range(16)).hex()
    assert authed["checksum"] is True


def test_load_limits_and_shapes() -> None:
    with pytest.raises(HandshakeError, match="HELLO body of 4097 bytes is over 4096"):
        hs.load(b" " * 4097, "HELLO")
    assert hs.load(b" " * 4094 + b"{}", "HELLO") == {}
    with pytest.raises(HandshakeError, match="not valid JSON"):
        hs.load(b"[" * 4096, "HELLO")


def test_numbers() -> None:
    assert hs.number({"h": 3}, "h", "X") == 3.0
    assert hs.number({"h": -3}, "h", "X") == 0.0
    with pytest.raises(HandshakeError, match="finite"):
        hs.number({"h": 10**400}, "h", "X")
    with pytest.raises(HandshakeError, match="wrong type"):
        hs.number({"h": True}, "h", "X")


def test_verify_accepts_only_the_exact_proof() -> None:
    proof = hs.server_proof(SECRET, bytes(16), bytes(16), b"{}")
    hs.verify(proof, proof.hex(), "server")
    hs.verify(proof, proof.hex().upper(), "server")
    for bad in (proof.hex()[:-2], proof[::-1].hex(), None, 1, "é"):
        with pytest.raises(AuthenticationFailed):
            hs.verify(proof, bad, "server")


def test_proofs_bind_every_input() -> None:
    base = (SECRET, bytes(16), bytes([1]) * 16, b"hello", b"welcome")
    proof = hs.client_proof(*base)
    for i in range(5):
        changed = list(base)
        changed[i] = changed[i] + b"!"
        assert hs.client_proof(*changed) != proof
    assert hs.server_proof(*base[:4]) != hs.client_proof(*base)


def test_secret_and_name_are_validated_by_options() -> None:
    with pytest.raises(ValueError, match="at least 8 bytes"):
        ProtocolOptions(secret=b"short")


def test_a_connection_without_options_uses_the_defaults() -> None:
    conn = FramedConnection(client().role, now=0.0)
    data = conn.data_to_send()
    (frame,) = decode_all(data)
    assert isinstance(frame, Frame)
    assert json.loads(frame.payload)["codecs"] == ["bytes"]
    assert hello_body()  # the helper body is valid for a default server
    srv = server()
    srv.receive_data(data, 0.0)
    assert srv.state is State.OPEN


def test_a_client_that_gets_its_hello_back_is_told_the_peer_is_an_echo() -> None:
    from opensocket.errors import HandshakeError

    from .helpers import client, terminated

    conn = client()
    conn.receive_data(conn.data_to_send(), 0.0)  # what a byte-echo server does
    term = terminated(conn)
    assert isinstance(term.error, HandshakeError)
    assert "sent our HELLO back" in term.reason
    assert "raw=True" in term.reason
