"""Mistakes a user makes with the library get an error that says what to do."""

from __future__ import annotations

import pytest

import opensocket
from opensocket.errors import CodecError, ConfigError, OpenSocketError
from opensocket.options import ServerLimits, TLSOptions
from tests.tlsutil import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("usage-pki"))


async def echo(conn: opensocket.Connection) -> None:
    async for message in conn:
        await conn.send(message)


async def test_unknown_codec_is_refused_before_any_connection() -> None:
    with pytest.raises(ConfigError, match="unknown payload codec 'bogus'"):
        await opensocket.serve("tcp://127.0.0.1:0", echo, codec="bogus")
    server = await opensocket.serve("tcp://127.0.0.1:0", echo)
    async with server:
        with pytest.raises(ConfigError, match="known: bytes, json, msgpack"):
            await opensocket.connect(server.url, codec=("json", "nope"))
        assert server.stats.accepted == 0


@pytest.mark.parametrize("checksum", ["on", "off"])
async def test_a_non_bytes_message_on_the_bytes_codec_is_a_codec_error(checksum: str) -> None:
    protocol = opensocket.ProtocolOptions(checksum=checksum)  # type: ignore[arg-type]
    server = await opensocket.serve("tcp://127.0.0.1:0", echo, protocol=protocol)
    async with server, await opensocket.connect(server.url, protocol=protocol) as conn:
        for bad in ("text", {"a": 1}, 42):
            with pytest.raises(CodecError, match="codec='json'"):
                await conn.send(bad)
        with pytest.raises(CodecError, match="not str"):
            await conn.send_many([b"fine", "text"])
        await conn.send(b"still fine")  # nothing half-queued: the stream is intact
        assert await conn.recv(timeout=5) == b"still fine"


async def test_recv_while_a_receiver_is_set_raises_instead_of_hanging() -> None:
    async with (
        await opensocket.serve("tcp://127.0.0.1:0", echo) as server,
        await opensocket.connect(server.url) as conn,
    ):
        conn.set_receiver(lambda batch: None)
        with pytest.raises(OpenSocketError, match="set_receiver"):
            await conn.recv(timeout=5)


def test_a_single_cidr_string_is_accepted() -> None:
    limits = ServerLimits(allow="10.0.0.0/8", deny="10.9.0.0/16")  # type: ignore[arg-type]
    assert [str(n) for n in limits.allow] == ["10.0.0.0/8"]
    assert [str(n) for n in limits.deny] == ["10.9.0.0/16"]


async def test_tls_files_errors_name_the_file_and_come_before_connecting(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"'/nonexistent/cert\.pem' does not exist"):
        await opensocket.serve(
            "tls://127.0.0.1:0",
            echo,
            tls=TLSOptions(cert_file="/nonexistent/cert.pem", key_file=pki.server_key),
        )
    with pytest.raises(ConfigError, match="holds no private key"):
        await opensocket.serve("tls://127.0.0.1:0", echo, tls=TLSOptions(cert_file=pki.server_cert))
    with pytest.raises(ConfigError, match="needs a certificate and its key"):
        await opensocket.serve("tls://127.0.0.1:0", echo)
    # A client's own bad files are found before it connects: nothing needs to listen here.
    with pytest.raises(ConfigError, match=r"CA file not found: /nonexistent/ca\.pem"):
        await opensocket.connect("tls://127.0.0.1:9", tls=TLSOptions(ca_file="/nonexistent/ca.pem"))


async def test_a_tcp_address_served_with_tls_reports_tls(pki: Pki) -> None:
    server = await opensocket.serve("tcp://127.0.0.1:0", echo, tls=pki.server_tls())
    async with server:
        assert server.url.startswith("tls://")
        async with await opensocket.connect(server.url, tls=pki.client_tls()) as conn:
            await conn.send(b"over tls")
            assert await conn.recv(timeout=5) == b"over tls"


async def test_stats_count_frames_as_well_as_messages() -> None:
    server = await opensocket.serve("tcp://127.0.0.1:0", echo)
    async with server, await opensocket.connect(server.url) as conn:
        await conn.send_many([b"a", b"b"])
        assert [await conn.recv(timeout=5) for _ in range(2)] == [b"a", b"b"]
        stats = conn.stats
        assert (stats.messages_out, stats.messages_in) == (2, 2)
        assert stats.frames_out == 3  # HELLO + 2 DATA
        assert stats.frames_in == 3  # WELCOME + 2 DATA
        assert server.stats.frames_in == 3


async def test_socket_options_read_timeout_is_the_default_for_recv() -> None:
    from opensocket import sync
    from opensocket.errors import ReadTimeout

    opts = opensocket.SocketOptions(read_timeout=0.05)
    async with (
        await opensocket.serve("tcp://127.0.0.1:0", echo) as server,
        await opensocket.connect(server.url, options=opts) as conn,
    ):
        with pytest.raises(ReadTimeout, match=r"within 0\.05s"):
            await conn.recv()
        with pytest.raises(ReadTimeout):
            await conn.recv_batch()
        await conn.send(b"x")
        assert await conn.recv(timeout=5) == b"x"  # an explicit timeout wins

    with (
        sync.serve("tcp://127.0.0.1:0", lambda c: [c.send(m) for m in c]) as sserver,
        sync.connect(sserver.url, options=opts) as sconn,
        pytest.raises(ReadTimeout, match=r"within 0\.05s"),
    ):
        sconn.recv()
