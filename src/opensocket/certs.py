"""Development certificates: a local CA, server and client certificates, written safely.

Keys are ECDSA on P-256 signed with SHA-256: generating one takes about a millisecond (an
RSA 2048 key takes tens to hundreds), every TLS 1.2+ peer supports it, and it is as strong as
RSA 3072. This is for development and tests, not for a production PKI: nothing here revokes or
protects the CA key beyond file permissions.

The usual flow is :func:`make_dev_certs`, which reuses the CA already in the folder (so later
server or client certificates chain to the CA that clients already trust), refuses to replace
existing files unless ``force=True``, writes private keys with mode 0600, and writes every
file atomically (a temporary file in the same folder, then a rename).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError, OpenSocketError

__all__ = [
    "CA_DAYS",
    "DEFAULT_HOSTS",
    "FILE_NAMES",
    "LEAF_DAYS",
    "CertFileExists",
    "DevCerts",
    "Issued",
    "Kind",
    "create_ca",
    "issue_client_cert",
    "issue_server_cert",
    "load_ca",
    "load_issued",
    "make_dev_certs",
    "parse_hosts",
    "write_issued",
]

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
# 825 days is the longest validity Apple platforms accept for a TLS server certificate.
LEAF_DAYS = 825
# Backdating absorbs clock skew between the machine that makes a certificate and its peers.
_BACKDATE = dt.timedelta(hours=1)

Kind = Literal["ca", "server", "client"]
FILE_NAMES: dict[Kind, tuple[str, str]] = {
    "ca": ("ca.pem", "ca-key.pem"),
    "server": ("server.pem", "server-key.pem"),
    "client": ("client.pem", "client-key.pem"),
}

HostName = x509.DNSName | x509.IPAddress
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        """The certificate in PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The private key in unencrypted PKCS#8 PEM (what ``ssl.load_cert_chain`` reads)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(slots=True)
class DevCerts:
    """What :func:`make_dev_certs` did: the paths it used and the files it wrote."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path | None = None
    server_key: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    reused_ca: bool = False
    hosts: tuple[str, ...] = ()
    client_name: str | None = None
    written: list[Path] = field(default_factory=list)


# ---- names and validity ------------------------------------------------------------------


def _dns_name(name: str) -> str:
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ConfigError(f"{name!r} is not a valid host name") from None
    labels = ascii_name.rstrip(".").split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if not ascii_name or len(ascii_name) > 253 or not all(_LABEL.match(x) for x in labels):
        raise ConfigError(
            f"{name!r} is not a valid host name or IP address "
            "(letters, digits and hyphens in dot-separated labels; '*.' allowed first)"
        )
    return ascii_name.rstrip(".")


def parse_hosts(hosts: Iterable[str]) -> list[HostName]:
    """SubjectAltName entries for host names and IP addresses (duplicates dropped)."""
    out: list[HostName] = []
    for raw in hosts:
        host = raw.strip().strip("[]")
        if not host:
            raise ConfigError("an empty host name was given")
        try:
            entry: HostName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(_dns_name(host))
        if entry not in out:
            out.append(entry)
    if not out:
        raise ConfigError("a server certificate needs at least one host name or IP address")
    return out


def _window(
    days: int, not_before: dt.datetime | None, not_after: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise ConfigError(f"validity must be at least 1 day (got {days})")
    now = dt.datetime.now(dt.UTC)
    start = not_before or now - _BACKDATE
    end = not_after or now + dt.timedelta(days=days)
    if end <= start:
        raise ConfigError(
            f"not_after ({end:%Y-%m-%d %H:%M}) must be after not_before ({start:%Y-%m-%d %H:%M})"
        )
    return start, end


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "opensocket development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


# ---- issuing -----------------------------------------------------------------------------


def create_ca(
    common_name: str = "opensocket development CA",
    *,
    days: int = CA_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A new self-signed CA that may sign leaf certificates only (path length 0)."""
    key = _new_key()
    start, end = _window(days, not_before, not_after)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    ca: Issued,
    common_name: str,
    usage: x509.ObjectIdentifier,
    sans: Sequence[HostName],
    window: tuple[dt.datetime, dt.datetime],
) -> Issued:
    key = _new_key()
    # A leaf outliving its CA would fail verification anyway; end it with the CA.
    end = min(window[1], ca.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(window[0])
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def issue_server_cert(
    ca: Issued,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    *,
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A server certificate (serverAuth) naming ``hosts`` (DNS names and IPs) in its SAN."""
    sans = parse_hosts(hosts)
    first = sans[0].value
    return _issue(
        ca,
        str(first),
        ExtendedKeyUsageOID.SERVER_AUTH,
        sans,
        _window(days, not_before, not_after),
    )


def _check_client_name(name: str) -> None:
    if not name.strip():
        raise ConfigError("a client certificate needs a non-empty name")
    if len(name.strip()) > 64:
        raise ConfigError(f"a client name is at most 64 characters (got {len(name.strip())})")


def issue_client_cert(
    ca: Issued,
    name: str = "opensocket client",
    *,
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A client certificate (clientAuth) for mutual TLS; ``name`` is its common name."""
    _check_client_name(name)
    window = _window(days, not_before, not_after)
    return _issue(ca, name.strip(), ExtendedKeyUsageOID.CLIENT_AUTH, (), window)


# ---- files -------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, *, private: bool, force: bool) -> None:
    """Write ``data`` to a temporary file next to ``path``, then move it into place.

    Without ``force`` the final step is a hard link, which fails if the name was taken in
    the meantime; readers never see a half-written file either way.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600 if private else 0o644)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise _exists_error(path) from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


class CertFileExists(OpenSocketError, FileExistsError):
    """A file to be written exists and replacing was not asked for; ``path`` names it."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists: pass force=True to replace it")
        self.path = path


def _exists_error(path: Path) -> CertFileExists:
    return CertFileExists(path)


def write_issued(
    issued: Issued, cert_path: Path, key_path: Path, *, force: bool = False
) -> list[Path]:
    """Write a certificate (mode 0644) and its key (mode 0600); return the paths written."""
    if not force:
        for path in (cert_path, key_path):
            if path.exists():
                raise _exists_error(path)
    # Key first: a certificate on disk without its key is useless.
    _write_atomic(key_path, issued.key_pem(), private=True, force=force)
    _write_atomic(cert_path, issued.cert_pem(), private=False, force=force)
    return [cert_path, key_path]


def load_issued(cert_path: Path, key_path: Path) -> Issued:
    """Read a certificate and its EC private key, checking that they belong together."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise OpenSocketError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise OpenSocketError(f"cannot load {cert_path} / {key_path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise OpenSocketError(f"{key_path} is not an EC private key (opensocket makes P-256 keys)")
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise OpenSocketError(f"{key_path} is not the private key of {cert_path}")
    return Issued(cert, key)


def load_ca(cert_path: Path, key_path: Path) -> Issued:
    """Load a CA certificate and key, checking it is self-signed and not expired."""
    ca = load_issued(cert_path, key_path)
    try:
        ca.cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        raise OpenSocketError(f"{cert_path} is not a self-signed CA certificate") from None
    if ca.cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise OpenSocketError(
            f"the CA in {cert_path} expired on {ca.cert.not_valid_after_utc:%Y-%m-%d}: "
            "make a new one with `opensocket cert ca --force` (then reissue its certificates)"
        )
    return ca


def _paths(directory: Path, kind: Kind, stem: str | None = None) -> tuple[Path, Path]:
    if stem is not None:
        return directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_name, key_name = FILE_NAMES[kind]
    return directory / cert_name, directory / key_name


def _ca(result: DevCerts, *, new: bool, force: bool, days: int) -> Issued:
    """The CA: the one in the folder when present (unless a new one is asked for)."""
    cert, key = result.ca_cert, result.ca_key
    if not new and cert.exists() and key.exists():
        result.reused_ca = True
        return load_ca(cert, key)
    if not new and (cert.exists() or key.exists()):
        present, missing = (cert, key) if cert.exists() else (key, cert)
        raise OpenSocketError(
            f"{present} exists but {missing} does not: restore it, or make a new CA "
            "with `opensocket cert ca --force`"
        )
    ca = create_ca(days=days)
    result.written += write_issued(ca, cert, key, force=force)
    return ca


def _check_free(paths: Iterable[Path | None]) -> None:
    for path in paths:
        if path is not None and path.exists():
            raise _exists_error(path)


def _validate(
    wanted: Collection[str], hosts: Sequence[str], client_name: str, days: int, ca_days: int
) -> None:
    """Check every input before anything is written."""
    if not wanted or not set(wanted) <= set(FILE_NAMES):
        raise ConfigError(f"kinds must be among ca, server, client (got {sorted(wanted)})")
    for value in (days, ca_days):
        _window(value, None, None)
    if "server" in wanted:
        parse_hosts(hosts)
    if "client" in wanted:
        _check_client_name(client_name)


def make_dev_certs(
    directory: str | os.PathLike[str],
    *,
    kinds: Iterable[Kind] = ("ca", "server"),
    hosts: Sequence[str] = DEFAULT_HOSTS,
    client_name: str = "opensocket client",
    client_file: str | None = None,
    days: int = LEAF_DAYS,
    ca_days: int = CA_DAYS,
    force: bool = False,
) -> DevCerts:
    """Make a development CA, server and/or client certificates in ``directory``.

    ``kinds`` says what to make. A CA already in the folder (``ca.pem`` and ``ca-key.pem``) is
    reused to sign new certificates (and made when missing); asking for "ca" alone makes a new
    one. ``client_file`` names the client files (``NAME.pem``, ``NAME-key.pem``). Existing files
    are never replaced unless ``force``; nothing is written if any target file exists.
    Returns the paths, with ``written`` listing the files actually written.

    Raises ConfigError for a bad host name, validity or kind, CertFileExists when a file
    exists (without ``force``), and OpenSocketError when the CA in the folder is unusable or
    writing fails.
    """
    wanted = set(kinds)
    _validate(wanted, hosts, client_name, days, ca_days)
    folder = Path(directory)
    result = DevCerts(folder, *_paths(folder, "ca"), hosts=tuple(hosts))
    if "server" in wanted:
        result.server_cert, result.server_key = _paths(folder, "server")
    if "client" in wanted:
        result.client_cert, result.client_key = _paths(folder, "client", client_file)
        result.client_name = client_name
    new_ca = wanted == {"ca"}
    if not force:
        leaves = [result.server_cert, result.server_key, result.client_cert, result.client_key]
        _check_free([result.ca_cert, result.ca_key] if new_ca else leaves)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ca = _ca(result, new=new_ca, force=force, days=ca_days)
        if result.server_cert and result.server_key:
            server = issue_server_cert(ca, hosts, days=days)
            result.written += write_issued(
                server, result.server_cert, result.server_key, force=force
            )
        if result.client_cert and result.client_key:
            client = issue_client_cert(ca, client_name, days=days)
            result.written += write_issued(
                client, result.client_cert, result.client_key, force=force
            )
    except OpenSocketError:
        raise
    except OSError as exc:
        raise OpenSocketError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    return result
