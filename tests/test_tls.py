"""TLS end to end with the asyncio runtime, over loopback, with certificates made in the test.

Every case runs on the default asyncio loop and on uvloop (what ``opensocket.run`` uses):
their TLS layers differ in how a failed handshake reaches the protocol.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import warnings
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

import opensocket
from opensocket import (
    CertificateExpired,
    Connection,
    HandshakeError,
    Hooks,
    HostnameMismatch,
    NotTLS,
    Server,
    Stream,
    TLSError,
    TLSHandshakeError,
    TLSOptions,
    UnknownCA,
)
from opensocket.tls import client_context, server_context, tls_error
from tests.tlsutil import Pki, make_pki

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    """Run a coroutine to completion on a fresh loop of each kind, within 15 seconds."""

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as loop_runner:
            return loop_runner.run(asyncio.wait_for(coro, 15))

    return runner


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def expired_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("expired"), expired=True)


@pytest.fixture(scope="module")
def other_host_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("host"), hosts=("example.test",))


async def echo(conn: Connection) -> None:
    async for message in conn:
        await conn.send(message)


async def echo_raw(stream: Stream) -> None:
    while data := await stream.recv():
        await stream.send_all(data)


class FailedHandshakes:
    """A Hooks.on_handshake_failed that keeps what the server saw, and wakes a waiter."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.event = asyncio.Event()

    def __call__(self, peer: str, error: BaseException) -> None:
        self.errors.append(error)
        self.event.set()

    async def wait(self, count: int = 1) -> list[BaseException]:
        while len(self.errors) < count:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), 5)
        return self.errors


async def tls_server(
    tls: TLSOptions, *, raw: bool = False, failed: FailedHandshakes | None = None
) -> Server:
    hooks = Hooks(on_handshake_failed=failed) if failed is not None else None
    return await opensocket.serve(
        "tls://127.0.0.1:0", echo_raw if raw else echo, raw=raw, tls=tls, hooks=hooks
    )


def host_port(server: Server) -> str:
    return server.url.split("://", 1)[1]


# ---- working connections ------------------------------------------------------------------


def test_framed_echo_over_tls_turns_checksums_off(run: Run, pki: Pki) -> None:
    async def main() -> None:
        async with (
            await tls_server(pki.server_tls()) as server,
            await opensocket.connect(server.url, tls=pki.client_tls()) as conn,
        ):
            await conn.send(b"over tls")
            assert await conn.recv() == b"over tls"
            assert conn._core.tls is True
            agreement = conn._core.agreement
            assert agreement is not None
            assert agreement.checksum is False

    run(main())


def test_plain_tcp_keeps_checksums_on(run: Run) -> None:
    async def main() -> None:
        async with (
            await opensocket.serve("tcp://127.0.0.1:0", echo) as server,
            await opensocket.connect(server.url) as conn,
        ):
            await conn.send(b"plain")
            assert await conn.recv() == b"plain"
            agreement = conn._core.agreement
            assert agreement is not None
            assert agreement.checksum is True

    run(main())


def test_many_messages_in_both_directions(run: Run, pki: Pki) -> None:
    async def main() -> None:
        async with (
            await tls_server(pki.server_tls()) as server,
            await opensocket.connect(server.url, tls=pki.client_tls()) as conn,
        ):
            payloads = [bytes([i % 256]) * (i * 97 % 70_000) for i in range(60)]
            for payload in payloads:
                await conn.send(payload)
            assert [await conn.recv() for _ in payloads] == payloads

    run(main())


def test_raw_tls_stream(run: Run, pki: Pki) -> None:
    async def main() -> None:
        async with await tls_server(pki.server_tls(), raw=True) as server:
            stream = await opensocket.connect(server.url, raw=True, tls=pki.client_tls())
            async with stream:
                await stream.send_all(b"line one\n")
                assert await stream.readline() == b"line one\n"
                await stream.send_all(b"x" * 100_000)
                assert await stream.recv_exactly(100_000) == b"x" * 100_000

    run(main())


def test_ipv6_and_localhost_names_verify(run: Run, pki: Pki) -> None:
    async def main() -> None:
        server = await opensocket.serve(
            ["tls://127.0.0.1:0", "tls://[::1]:0"], echo, tls=pki.server_tls()
        )
        async with server:
            port4, port6 = (a.port for a in server.addresses)
            for url in (f"tls://[::1]:{port6}", f"tls://localhost:{port4}"):
                async with await opensocket.connect(url, tls=pki.client_tls()) as conn:
                    await conn.send(url.encode())
                    assert await conn.recv() == url.encode()

    run(main())


def test_openssl_s_client_verifies_our_server(run: Run, pki: Pki) -> None:
    """A real peer tool checks the chain and host name our server presents."""

    async def one_line(stream: Stream) -> None:
        await stream.send_all(await stream.readline())

    async def main() -> str:
        server = await opensocket.serve(
            "tls://127.0.0.1:0", one_line, raw=True, tls=pki.server_tls()
        )
        async with server:
            proc = await asyncio.create_subprocess_exec(
                "openssl", "s_client", "-connect", host_port(server), "-CAfile", pki.ca_cert,
                "-verify_return_error", "-verify_ip", "127.0.0.1", "-brief", "-ign_eof",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(b"ping\n"), 10)
            assert proc.returncode == 0, out
            return out.decode()

    out = run(main())
    assert "Verification: OK" in out
    assert "Protocol version: TLSv1.3" in out
    assert "ping" in out  # echoed back by our server before it closed


# ---- what the client sees when the server's certificate is wrong -------------------------


def test_verification_is_on_by_default(run: Run, pki: Pki) -> None:
    async def main() -> None:
        async with await tls_server(pki.server_tls()) as server:
            where = host_port(server)
            for kwargs in ({}, {"tls": TLSOptions()}, {"raw": True}):
                with pytest.raises(UnknownCA) as info:
                    await opensocket.connect(server.url, **kwargs)
                message = str(info.value)
                assert where in message
                assert "not signed by a trusted CA" in message
                assert "--tls-ca" in message
                assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)

    run(main())


def test_certificate_from_an_unrelated_ca(run: Run, pki: Pki) -> None:
    async def main() -> None:
        async with await tls_server(pki.server_tls()) as server:
            with pytest.raises(UnknownCA, match="not signed by a trusted CA"):
                await opensocket.connect(server.url, tls=TLSOptions(ca_file=pki.other_ca_cert))

    run(main())


def test_verify_false_accepts_any_certificate(run: Run, pki: Pki) -> None:
    async def main() -> None:
        async with (
            await tls_server(pki.server_tls()) as server,
            await opensocket.connect(server.url, tls=TLSOptions(verify=False)) as conn,
        ):
            await conn.send(b"unverified")
            assert await conn.recv() == b"unverified"

    run(main())


def test_wrong_host_name(run: Run, other_host_pki: Pki) -> None:
    async def main() -> None:
        async with await tls_server(other_host_pki.server_tls()) as server:
            with pytest.raises(HostnameMismatch) as info:
                await opensocket.connect(server.url, tls=other_host_pki.client_tls())
            message = str(info.value)
            assert host_port(server) in message
            assert "does not match the host name" in message
            assert "'127.0.0.1'" in message  # OpenSSL's detail names the address we asked for
            # The same certificate verifies under the name it was issued for.
            tls = other_host_pki.client_tls(server_hostname="example.test")
            async with await opensocket.connect(server.url, tls=tls) as conn:
                await conn.send(b"by name")
                assert await conn.recv() == b"by name"

    run(main())


def test_expired_certificate(run: Run, expired_pki: Pki) -> None:
    async def main() -> None:
        async with await tls_server(expired_pki.server_tls()) as server:
            with pytest.raises(CertificateExpired) as info:
                await opensocket.connect(server.url, tls=expired_pki.client_tls())
            assert host_port(server) in str(info.value)
            assert "certificate has expired" in str(info.value)

    run(main())


def test_tls_client_against_plaintext_server(run: Run, pki: Pki) -> None:
    async def main() -> None:
        async with await opensocket.serve("tcp://127.0.0.1:0", echo) as server:
            url = server.url.replace("tcp://", "tls://")
            for raw in (False, True):
                with pytest.raises(NotTLS) as info:
                    await opensocket.connect(url, raw=raw, tls=pki.client_tls())
                assert host_port(server) in str(info.value)
                assert "not speaking TLS" in str(info.value)

    run(main())


def test_plaintext_client_against_tls_server(run: Run, pki: Pki) -> None:
    """The plaintext client is told TLS may be needed; the server counts it and carries on."""

    async def main() -> None:
        failed = FailedHandshakes()
        async with await tls_server(pki.server_tls(), failed=failed) as server:
            async with await opensocket.connect(server.url, tls=pki.client_tls()) as good:
                url = server.url.replace("tls://", "tcp://")
                with pytest.raises(HandshakeError, match=r"TLS \(tls://\)"):
                    await opensocket.connect(url)
                (error,) = await failed.wait()
                assert isinstance(error, NotTLS)
                assert "sent plaintext" in str(error)
                assert server.stats.handshakes_failed == 1
                # The good client, connected all along, still gets answers.
                await good.send(b"still here")
                assert await good.recv() == b"still here"
            async with await opensocket.connect(server.url, tls=pki.client_tls()) as again:
                await again.send(b"new client")
                assert await again.recv() == b"new client"
            assert server.stats.handshakes_failed == 1

    run(main())


# ---- mutual TLS ----------------------------------------------------------------------------


def test_client_auth_required_accepts_a_certificate_from_the_ca(run: Run, pki: Pki) -> None:
    async def main() -> None:
        async with await tls_server(pki.server_tls(client_auth="required")) as server:
            tls = pki.client_tls(with_cert=True)
            async with await opensocket.connect(server.url, tls=tls) as conn:
                await conn.send(b"mutual")
                assert await conn.recv() == b"mutual"

    run(main())


def test_client_auth_required_refuses_no_certificate(run: Run, pki: Pki) -> None:
    async def main() -> None:
        failed = FailedHandshakes()
        tls = pki.server_tls(client_auth="required")
        async with await tls_server(tls, failed=failed) as server:
            # With TLS 1.3 the client finishes its side of the TLS handshake before the server
            # checks the client certificate, and asyncio sends no alert: the refusal reaches
            # the client as the server closing the connection during the framed handshake.
            with pytest.raises(HandshakeError, match="client certificate") as info:
                await opensocket.connect(server.url, tls=pki.client_tls())
            assert "TLS" in str(info.value)
            (error,) = await failed.wait()
            assert isinstance(error, TLSHandshakeError)
            assert "sent no certificate" in str(error)
            assert "requires one" in str(error)
            assert server.stats.handshakes_failed == 1

    run(main())


def test_client_auth_required_refuses_a_certificate_from_another_ca(run: Run, pki: Pki) -> None:
    async def main() -> None:
        failed = FailedHandshakes()
        tls = pki.server_tls(client_auth="required")
        async with await tls_server(tls, failed=failed) as server:
            client = pki.client_tls(cert_file=pki.other_client_cert, key_file=pki.other_client_key)
            with pytest.raises(HandshakeError, match="client certificate"):
                await opensocket.connect(server.url, tls=client)
            (error,) = await failed.wait()
            assert isinstance(error, UnknownCA)
            assert "the certificate of the client 127.0.0.1:" in str(error)

    run(main())


def test_client_auth_required_with_tls_1_2(run: Run, pki: Pki) -> None:
    """Under TLS 1.2 the refusal happens inside the TLS handshake: a TLSError at once."""

    async def main() -> None:
        async with await tls_server(pki.server_tls(client_auth="required")) as server:
            ctx = client_context(pki.client_tls())
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises(TLSHandshakeError) as info:
                await opensocket.connect(server.url, tls=ctx)
            assert host_port(server) in str(info.value)
            assert "client certificate" in str(info.value)

    run(main())


def test_client_auth_optional_accepts_with_and_without(run: Run, pki: Pki) -> None:
    async def main() -> None:
        failed = FailedHandshakes()
        tls = pki.server_tls(client_auth="optional")
        async with await tls_server(tls, failed=failed) as server:
            for with_cert in (True, False):
                client = pki.client_tls(with_cert=with_cert)
                async with await opensocket.connect(server.url, tls=client) as conn:
                    await conn.send(b"optional")
                    assert await conn.recv() == b"optional"
            # A certificate that is presented must still verify.
            client = pki.client_tls(cert_file=pki.other_client_cert, key_file=pki.other_client_key)
            with pytest.raises(HandshakeError):
                await opensocket.connect(server.url, tls=client)
            (error,) = await failed.wait()
            assert isinstance(error, UnknownCA)

    run(main())


@pytest.mark.parametrize("with_cert", [False, True])
def test_against_openssl_s_server_requiring_client_certs(
    run: Run, pki: Pki, free_port: int, with_cert: bool
) -> None:
    """openssl sends the TLS alerts asyncio does not: the client reports the real reason."""

    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_server", "-accept", f"127.0.0.1:{free_port}", "-naccept", "1",
            "-cert", pki.server_cert, "-key", pki.server_key, "-CAfile", pki.ca_cert,
            "-Verify", "1", "-rev",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            while b"ACCEPT" not in await asyncio.wait_for(proc.stdout.readline(), 10):
                pass
            url = f"tls://127.0.0.1:{free_port}"
            if with_cert:
                tls = pki.client_tls(with_cert=True)
                async with await opensocket.connect(url, raw=True, tls=tls) as stream:
                    await stream.send_all(b"hello\n")
                    assert await stream.readline() == b"olleh\n"  # -rev reverses each line
            else:
                with pytest.raises(TLSHandshakeError) as info:
                    await opensocket.connect(url, tls=pki.client_tls())
                assert f"127.0.0.1:{free_port} requires a client certificate" in str(info.value)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    run(main())


# ---- versions ------------------------------------------------------------------------------


def test_contexts_require_tls_1_2_or_newer(pki: Pki) -> None:
    assert server_context(pki.server_tls()).minimum_version is ssl.TLSVersion.TLSv1_2
    assert client_context(pki.client_tls()).minimum_version is ssl.TLSVersion.TLSv1_2
    strict = pki.server_tls(minimum_version="1.3")
    assert server_context(strict).minimum_version is ssl.TLSVersion.TLSv1_3


def _tls_1_1_client(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca_cert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # naming TLS 1.0/1.1 warns
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL 3 offers TLS 1.0/1.1 only at security level 0 (they sign with SHA-1/MD5).
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def test_a_tls_1_1_client_is_refused(run: Run, pki: Pki) -> None:
    async def main() -> None:
        failed = FailedHandshakes()
        async with await tls_server(pki.server_tls(), failed=failed) as server:
            with pytest.raises(TLSHandshakeError) as info:
                await opensocket.connect(server.url, tls=_tls_1_1_client(pki))
            cause = info.value.__cause__
            if isinstance(cause, ssl.SSLError) and cause.reason == "NO_PROTOCOLS_AVAILABLE":
                # This OpenSSL cannot even offer TLS 1.1: the client gave up on its own, and
                # the server's minimum is checked in test_contexts_require_tls_1_2_or_newer.
                assert "no TLS version in common" in str(info.value)
                assert server.stats.handshakes_failed == 0
            else:
                # This OpenSSL can offer TLS 1.1: the server saw it and refused it.
                assert host_port(server) in str(info.value)
                (error,) = await failed.wait()
                assert "TLS 1.2 or newer" in str(error)
                assert "the client 127.0.0.1:" in str(error)

    run(main())


def test_minimum_version_1_3_refuses_a_tls_1_2_client(run: Run, pki: Pki) -> None:
    async def main() -> None:
        failed = FailedHandshakes()
        tls = pki.server_tls(minimum_version="1.3")
        async with await tls_server(tls, failed=failed) as server:
            ctx = client_context(pki.client_tls())
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises(TLSHandshakeError, match=host_port(server)):
                await opensocket.connect(server.url, tls=ctx)
            (error,) = await failed.wait()
            assert "no TLS version in common" in str(error)
            async with await opensocket.connect(server.url, tls=pki.client_tls()) as conn:
                await conn.send(b"1.3")
                assert await conn.recv() == b"1.3"

    run(main())


# ---- configuration errors and the translation table ----------------------------------------


def test_server_without_certificate_is_a_config_error() -> None:
    with pytest.raises(opensocket.ConfigError, match="opensocket cert"):
        server_context(TLSOptions())


def test_mismatched_key_is_a_config_error(pki: Pki) -> None:
    opts = TLSOptions(cert_file=pki.server_cert, key_file=pki.client_key)
    with pytest.raises(opensocket.ConfigError, match="is the key the one"):
        server_context(opts)


def test_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(opensocket.ConfigError, match="CA file not found"):
        client_context(TLSOptions(ca_file=str(tmp_path / "missing.pem")))


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] made up")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("reason", "server_side", "kind", "text"),
    [
        ("WRONG_VERSION_NUMBER", False, NotTLS, "h:1 is not speaking TLS"),
        ("HTTP_REQUEST", True, NotTLS, "the client h:1 is not speaking TLS"),
        ("TLSV1_ALERT_UNKNOWN_CA", False, UnknownCA, "h:1 rejected our certificate"),
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", False, CertificateExpired, "as expired"),
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", False, TLSHandshakeError, "requires a client"),
        ("PEER_DID_NOT_RETURN_A_CERTIFICATE", True, TLSHandshakeError, "sent no certificate"),
        ("TLSV1_ALERT_PROTOCOL_VERSION", False, TLSHandshakeError, "no TLS version in common"),
        ("SOMETHING_ELSE", False, TLSHandshakeError, "TLS handshake with h:1 failed"),
    ],
)
def test_tls_error_translation(
    reason: str, server_side: bool, kind: type[TLSError], text: str
) -> None:
    error = tls_error(_ssl_error(reason), "h:1", server_side=server_side)
    assert type(error) is kind
    assert text in str(error)
    assert reason in str(error) or kind is NotTLS


def test_tls_error_for_a_closed_connection() -> None:
    client = tls_error(ConnectionResetError(), "h:1")
    assert "h:1 closed the connection during the TLS handshake" in str(client)
    server = tls_error(ssl.SSLEOFError(), "h:1", server_side=True)
    assert "the client h:1 closed the connection" in str(server)
    same = TLSHandshakeError("already translated")
    assert tls_error(same, "h:1") is same


def test_mutual_tls_without_a_client_ca_is_refused_at_start(pki: Pki) -> None:
    from opensocket.errors import ConfigError
    from opensocket.options import TLSOptions
    from opensocket.tls import server_context

    opts = TLSOptions(cert_file=pki.server_cert, key_file=pki.server_key, client_auth="required")
    with pytest.raises(ConfigError, match="needs the CA that signs the client certificates"):
        server_context(opts)
