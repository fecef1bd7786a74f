"""Development certificates: files, permissions, contents, CA reuse, --force, `opensocket cert`."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shlex
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import opensocket
from opensocket.certs import (
    CertFileExists,
    create_ca,
    issue_client_cert,
    issue_server_cert,
    load_issued,
    make_dev_certs,
    parse_hosts,
    write_issued,
)
from opensocket.cli import main, parse_args
from opensocket.cli.echo import tls_client_files
from opensocket.errors import ConfigError, OpenSocketError

CLI = [sys.executable, "-c", "from opensocket.cli import run; run()"]
ALL_FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    ]


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# ---- the library ---------------------------------------------------------------------------


def test_default_set_files_and_modes(tmp_path: Path) -> None:
    result = make_dev_certs(tmp_path / "certs")
    folder = tmp_path / "certs"
    assert [p.name for p in result.written] == list(ALL_FILES)
    assert sorted(p.name for p in folder.iterdir()) == sorted(ALL_FILES)  # no temp files left
    assert mode(folder / "ca-key.pem") == 0o600
    assert mode(folder / "server-key.pem") == 0o600
    assert mode(folder / "ca.pem") == 0o644
    assert mode(folder / "server.pem") == 0o644
    assert result.reused_ca is False
    assert result.client_cert is None


def test_server_certificate_contents(tmp_path: Path) -> None:
    make_dev_certs(tmp_path)
    ca, server = load(tmp_path / "ca.pem"), load(tmp_path / "server.pem")
    assert sans(server) == (["localhost"], ["127.0.0.1", "::1"])
    assert eku(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    server.verify_directly_issued_by(ca)
    lifetime = server.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=824) < lifetime <= dt.timedelta(days=825)
    assert server.not_valid_before_utc < dt.datetime.now(dt.UTC)


def test_ca_certificate_contents(tmp_path: Path) -> None:
    make_dev_certs(tmp_path, kinds=["ca"])
    ca = load(tmp_path / "ca.pem")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    ca.verify_directly_issued_by(ca)
    assert ca.subject == ca.issuer
    assert not (tmp_path / "server.pem").exists()


def test_client_certificate_contents(tmp_path: Path) -> None:
    result = make_dev_certs(tmp_path, kinds=["ca", "server", "client"], client_name="alice")
    assert result.client_key is not None
    assert mode(result.client_key) == 0o600
    client = load(tmp_path / "client.pem")
    assert eku(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    client.verify_directly_issued_by(load(tmp_path / "ca.pem"))


def test_python_ssl_loads_the_files(tmp_path: Path) -> None:
    make_dev_certs(tmp_path, kinds=["ca", "server", "client"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "server.pem", tmp_path / "server-key.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(tmp_path / "ca.pem")
    client.load_cert_chain(tmp_path / "client.pem", tmp_path / "client-key.pem")


def test_openssl_verifies_the_chain_strictly(tmp_path: Path) -> None:
    make_dev_certs(tmp_path, kinds=["ca", "server", "client"])
    for leaf, purpose in (("server.pem", "sslserver"), ("client.pem", "sslclient")):
        out = subprocess.run(
            ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", "ca.pem", leaf],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert f"{leaf}: OK" in out.stdout


def test_custom_hosts(tmp_path: Path) -> None:
    hosts = ["example.test", "*.dev.example.test", "10.0.0.5", "[fe80::1]", "Bücher.example"]
    make_dev_certs(tmp_path, hosts=hosts)
    dns, ips = sans(load(tmp_path / "server.pem"))
    assert dns == ["example.test", "*.dev.example.test", "xn--bcher-kva.example"]
    assert ips == ["10.0.0.5", "fe80::1"]


@pytest.mark.parametrize("bad", ["", "under_score.test", "-lead.test", "a..b", "*.test", "x" * 64])
def test_bad_host_names_are_config_errors(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="host name"):
        make_dev_certs(tmp_path, hosts=[bad])
    assert list(tmp_path.iterdir()) == []  # checked before anything is written


def test_duplicate_hosts_are_dropped() -> None:
    entries = parse_hosts(["localhost", "LOCALHOST", "127.0.0.1", "127.0.0.1"])
    assert entries == [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]


def test_validity_days_and_explicit_window(tmp_path: Path) -> None:
    ca = create_ca()
    short = issue_server_cert(ca, days=30)
    lifetime = short.cert.not_valid_after_utc - short.cert.not_valid_before_utc
    assert dt.timedelta(days=30) < lifetime <= dt.timedelta(days=30, hours=1)
    now = dt.datetime.now(dt.UTC)
    expired = issue_client_cert(
        ca, not_before=now - dt.timedelta(days=3), not_after=now - dt.timedelta(days=1)
    )
    assert expired.cert.not_valid_after_utc < now
    with pytest.raises(ConfigError, match="at least 1 day"):
        issue_server_cert(ca, days=0)
    with pytest.raises(ConfigError, match="must be after"):
        issue_server_cert(ca, not_before=now, not_after=now - dt.timedelta(days=1))


def test_a_leaf_does_not_outlive_its_ca() -> None:
    ca = create_ca(days=10)
    leaf = issue_server_cert(ca, days=825)
    assert leaf.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_existing_files_are_not_replaced_without_force(tmp_path: Path) -> None:
    make_dev_certs(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ALL_FILES}
    with pytest.raises(CertFileExists, match=r"server\.pem already exists.*force=True") as info:
        make_dev_certs(tmp_path)
    assert info.value.path == tmp_path / "server.pem"
    assert isinstance(info.value, FileExistsError)
    assert {name: (tmp_path / name).read_bytes() for name in ALL_FILES} == before


def test_nothing_is_written_if_any_target_exists(tmp_path: Path) -> None:
    (tmp_path / "client.pem").write_text("mine")
    with pytest.raises(OpenSocketError, match=r"client\.pem already exists"):
        make_dev_certs(tmp_path, kinds=["ca", "server", "client"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client.pem"]
    assert (tmp_path / "client.pem").read_text() == "mine"


def test_force_replaces_leaves_and_keeps_the_ca(tmp_path: Path) -> None:
    make_dev_certs(tmp_path)
    ca_before = (tmp_path / "ca.pem").read_bytes()
    server_before = (tmp_path / "server.pem").read_bytes()
    result = make_dev_certs(tmp_path, force=True)
    assert result.reused_ca is True
    assert [p.name for p in result.written] == ["server.pem", "server-key.pem"]
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (tmp_path / "server.pem").read_bytes() != server_before
    assert mode(tmp_path / "server-key.pem") == 0o600
    load(tmp_path / "server.pem").verify_directly_issued_by(load(tmp_path / "ca.pem"))


def test_server_after_ca_signs_with_that_ca(tmp_path: Path) -> None:
    first = make_dev_certs(tmp_path, kinds=["ca"])
    assert [p.name for p in first.written] == ["ca.pem", "ca-key.pem"]
    second = make_dev_certs(tmp_path, kinds=["server"])
    assert second.reused_ca is True
    assert [p.name for p in second.written] == ["server.pem", "server-key.pem"]
    third = make_dev_certs(tmp_path, kinds=["client"])
    ca = load(tmp_path / "ca.pem")
    for name in ("server.pem", "client.pem"):
        load(tmp_path / name).verify_directly_issued_by(ca)
    assert [p.name for p in third.written] == ["client.pem", "client-key.pem"]


def test_a_new_ca_needs_force(tmp_path: Path) -> None:
    make_dev_certs(tmp_path, kinds=["ca"])
    old = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(OpenSocketError, match=r"ca\.pem already exists"):
        make_dev_certs(tmp_path, kinds=["ca"])
    make_dev_certs(tmp_path, kinds=["ca"], force=True)
    assert (tmp_path / "ca.pem").read_bytes() != old
    assert mode(tmp_path / "ca-key.pem") == 0o600


def test_half_a_ca_is_an_error(tmp_path: Path) -> None:
    make_dev_certs(tmp_path, kinds=["ca"])
    (tmp_path / "ca-key.pem").unlink()
    with pytest.raises(OpenSocketError, match=r"ca\.pem exists but .*ca-key\.pem does not"):
        make_dev_certs(tmp_path, kinds=["server"])
    assert not (tmp_path / "server.pem").exists()


def test_a_ca_with_the_wrong_key_is_an_error(tmp_path: Path) -> None:
    make_dev_certs(tmp_path, kinds=["ca"])
    other = create_ca()
    (tmp_path / "ca-key.pem").write_bytes(other.key_pem())
    with pytest.raises(OpenSocketError, match="is not the private key of"):
        make_dev_certs(tmp_path, kinds=["server"])


def test_an_expired_ca_is_not_reused(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    old = create_ca(not_before=now - dt.timedelta(days=9), not_after=now - dt.timedelta(days=1))
    write_issued(old, tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    with pytest.raises(OpenSocketError, match=r"expired.*cert ca --force"):
        make_dev_certs(tmp_path, kinds=["server"])


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    ca = create_ca()
    written = write_issued(ca, tmp_path / "c.pem", tmp_path / "k.pem")
    assert written == [tmp_path / "c.pem", tmp_path / "k.pem"]
    loaded = load_issued(tmp_path / "c.pem", tmp_path / "k.pem")
    assert loaded.cert == ca.cert
    assert loaded.key_pem() == ca.key_pem()


async def test_generated_files_serve_tls(tmp_path: Path) -> None:
    result = make_dev_certs(tmp_path, kinds=["ca", "server", "client"])
    server_tls = opensocket.TLSOptions(
        cert_file=str(result.server_cert),
        key_file=str(result.server_key),
        ca_file=str(result.ca_cert),
        client_auth="required",
    )
    client_tls = opensocket.TLSOptions(
        ca_file=str(result.ca_cert),
        cert_file=str(result.client_cert),
        key_file=str(result.client_key),
    )

    async def echo(conn: opensocket.Connection) -> None:
        async for message in conn:
            await conn.send(message)

    async with (
        await opensocket.serve("tls://127.0.0.1:0", echo, tls=server_tls) as server,
        await opensocket.connect(server.url, tls=client_tls) as conn,
    ):
        await conn.send(b"dev certs")
        assert await conn.recv() == b"dev certs"


# ---- the command line ----------------------------------------------------------------------


def test_cli_writes_and_explains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "certs"
    assert main(["cert", "--dir", str(folder)]) == 0
    out = capsys.readouterr().out
    for name in ALL_FILES:
        assert str(folder / name) in out
    assert (
        f"opensocket echo serve tls://127.0.0.1:9443 --tls-cert {folder / 'server.pem'} "
        f"--tls-key {folder / 'server-key.pem'}" in out
    )
    assert f"opensocket echo tls://127.0.0.1:9443 --tls-ca {folder / 'ca.pem'}" in out
    assert "--tls-client-auth required" in out
    assert mode(folder / "server-key.pem") == 0o600


def test_cli_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cert", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["cert", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'server.pem'} already exists" in err
    assert "--force" in err
    assert main(["cert", "--dir", str(tmp_path), "--force"]) == 0
    assert "signed with the existing CA" in capsys.readouterr().out


def test_cli_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["cert", "--dir", str(tmp_path), "--client", "bob", "--host", "example.test", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ca"] == {
        "cert": str(tmp_path / "ca.pem"),
        "key": str(tmp_path / "ca-key.pem"),
        "reused": False,
    }
    assert summary["server"]["hosts"] == ["example.test"]
    assert summary["client"]["name"] == "bob"
    assert len(summary["written"]) == 6
    assert summary["commands"]["client"].startswith("opensocket echo tls://example.test:9443")
    assert "--tls-cert" in summary["commands"]["client_mutual"]


def test_cli_subcommands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cert", "ca", "--dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["server"] is None
    assert main(["cert", "client", "--dir", str(tmp_path), "--client", "carol", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ca"]["reused"] is True
    assert summary["written"] == [str(tmp_path / "carol.pem"), str(tmp_path / "carol-key.pem")]
    assert summary["client"]["name"] == "carol"
    assert main(["cert", "client", "--dir", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == [str(tmp_path / "client.pem"), str(tmp_path / "client-key.pem")]
    assert not (tmp_path / "server.pem").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "0"], "must be at least 1"),
        (["--days", "soon"], "not a whole number"),
        (["--host", "bad_name"], "not a valid host name"),
        (["server", "--client", "x"], "--client makes a client certificate"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_cli_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["cert", "--dir", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cert", "--help"]) == 0
    out = capsys.readouterr().out
    for text in ("--dir", "--host", "--client", "--days", "--force", "--json", "what to make"):
        assert text in out


def test_cli_as_a_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CLI, "cert", "--dir", str(tmp_path), "--client", "dave", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert {Path(p).name for p in summary["written"]} == {*ALL_FILES, "dave.pem", "dave-key.pem"}
    assert oct(mode(tmp_path / "dave-key.pem")) == oct(0o600)
    again = subprocess.run(
        [*CLI, "cert", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert again.returncode == 1
    assert "already exists" in again.stderr


@pytest.mark.parametrize("first_run", [True, False], ids=["first-run", "after-cert"])
def test_printed_commands_work(tmp_path: Path, free_port: int, first_run: bool) -> None:
    """Run the mutual-TLS server and client lines `opensocket cert --client` prints, as printed:
    on a first run (CA, server and client made at once) and after a plain `opensocket cert`."""
    if not first_run:
        assert main(["cert", "--dir", str(tmp_path)]) == 0
    made = subprocess.run(
        [*CLI, "cert", "--dir", str(tmp_path), "--client", "erin", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    commands = json.loads(made.stdout)["commands"]
    assert set(commands) >= {"server_mutual", "client_mutual"}

    def argv(line: str) -> list[str]:
        words = shlex.split(line.replace(":9443", f":{free_port}"))
        assert words[0] == "opensocket"
        return [*CLI, *words[1:]]

    server = subprocess.Popen(
        [*argv(commands["server_mutual"]), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert json.loads(server.stdout.readline())["event"] == "listening"
        client = subprocess.run(
            [*argv(commands["client_mutual"]), "--count", "1", "--message", "printed"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert client.returncode == 0, client.stderr
        assert "printed" in client.stdout
        without_cert = commands["client_mutual"].split(" --tls-cert ")[0]
        refused = subprocess.run(
            [*argv(without_cert), "--count", "1"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert refused.returncode == 1
        assert "client certificate" in refused.stderr
    finally:
        server.terminate()
        server.communicate(timeout=10)
    assert os.path.exists(tmp_path / "ca.pem")


@pytest.mark.parametrize(
    "kwargs",
    [{"days": 0}, {"ca_days": -1}, {"kinds": ["server", "key"]}, {"client_name": " "}],
)
def test_bad_input_writes_nothing(tmp_path: Path, kwargs: dict[str, object]) -> None:
    kwargs = {"kinds": ["ca", "server", "client"], **kwargs}
    with pytest.raises(ConfigError):
        make_dev_certs(tmp_path / "out", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


# ---- `opensocket cert --client NAME` after `opensocket cert` ---------------------------------


def test_cli_client_after_a_default_run_makes_only_the_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cert", "--dir", str(tmp_path)]) == 0
    before = {name: (tmp_path / name).read_bytes() for name in ALL_FILES}
    capsys.readouterr()
    assert main(["cert", "--dir", str(tmp_path), "--client", "alice"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*ALL_FILES, "alice.pem", "alice-key.pem"]
    )
    assert {name: (tmp_path / name).read_bytes() for name in ALL_FILES} == before
    alice = load(tmp_path / "alice.pem")
    assert alice.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert eku(alice) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    alice.verify_directly_issued_by(load(tmp_path / "ca.pem"))
    assert mode(tmp_path / "alice-key.pem") == 0o600
    assert f"signed with the existing CA {tmp_path / 'ca.pem'}" in out
    assert f"--tls-cert {tmp_path / 'server.pem'}" in out  # how to serve with mutual TLS
    assert f"--tls-cert {tmp_path / 'alice.pem'} --tls-key {tmp_path / 'alice-key.pem'}" in out


def test_cli_client_twice_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cert", "--dir", str(tmp_path), "--client", "alice"]) == 0
    first = (tmp_path / "alice.pem").read_bytes()
    capsys.readouterr()
    assert main(["cert", "--dir", str(tmp_path), "--client", "alice", "--json"]) == 1
    captured = capsys.readouterr()
    assert f"{tmp_path / 'alice.pem'} already exists: pass --force to replace it" in captured.err
    assert json.loads(captured.out) == {
        "error": f"{tmp_path / 'alice.pem'} already exists: pass --force to replace it",
        "exit": 1,
    }
    assert main(["cert", "--dir", str(tmp_path), "--client", "alice", "--force"]) == 0
    assert (tmp_path / "alice.pem").read_bytes() != first


def test_cli_messages_never_say_force_true(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cert", "--dir", str(tmp_path)]) == 0
    for argv in (["cert"], ["cert", "ca"], ["cert", "server"], ["cert", "all", "--client", "x"]):
        assert main([*argv, "--dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert "already exists: pass --force to replace it" in err
        assert "force=True" not in err


@pytest.mark.parametrize(
    ("name", "stem"),
    [("Bob Smith", "Bob-Smith"), ("ca", "client-ca"), ("server", "client-server"),
     ("eve-key", "client-eve-key"), ("../../etc/passwd", "etc-passwd")],
)  # fmt: skip
def test_cli_client_file_names_are_safe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, stem: str
) -> None:
    assert main(["cert", "client", "--dir", str(tmp_path), "--client", name, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["client"] == {
        "cert": str(tmp_path / f"{stem}.pem"),
        "key": str(tmp_path / f"{stem}-key.pem"),
        "name": name,
    }
    assert summary["ca"]["reused"] is False  # the first run in the folder made the CA
    load(tmp_path / f"{stem}.pem").verify_directly_issued_by(load(tmp_path / "ca.pem"))


@pytest.mark.parametrize("name", ["", " ", "x" * 65])
def test_cli_bad_client_names_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert main(["cert", "--dir", str(tmp_path), "--client", name]) == 2
    assert "--client" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_client_without_a_usable_ca_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cert", "ca", "--dir", str(tmp_path)]) == 0
    (tmp_path / "ca-key.pem").unlink()
    capsys.readouterr()
    assert main(["cert", "--dir", str(tmp_path), "--client", "alice"]) == 1
    assert "ca-key.pem does not" in capsys.readouterr().err
    assert not (tmp_path / "alice.pem").exists()


def test_echo_serve_hint_finds_a_named_client_certificate(tmp_path: Path) -> None:
    """'echo serve ... --tls-client-auth required' prints the files 'cert --client' made."""
    assert main(["cert", "--dir", str(tmp_path), "--client", "alice"]) == 0
    args = parse_args(
        ["echo", "serve", "tls://127.0.0.1:0", "--tls-cert", str(tmp_path / "server.pem"),
         "--tls-key", str(tmp_path / "server-key.pem"), "--tls-client-auth", "required"]
    )  # fmt: skip
    assert tls_client_files(args) == (
        str(tmp_path / "ca.pem"),
        str(tmp_path / "alice.pem"),
        str(tmp_path / "alice-key.pem"),
    )
