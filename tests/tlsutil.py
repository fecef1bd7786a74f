"""Build a throwaway PKI for TLS tests: ``make_pki(tmp_path)`` returns paths and TLSOptions.

Any test can import it::

    from tests.tlsutil import make_pki
    pki = make_pki(tmp_path)
    server = await opensocket.serve("tls://127.0.0.1:0", handler, tls=pki.server_tls())
    conn = await opensocket.connect(server.url, tls=pki.client_tls())
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from opensocket.certs import Issued, create_ca, issue_client_cert, issue_server_cert, write_issued
from opensocket.options import TLSOptions

__all__ = ["Pki", "make_pki"]

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Pki:
    """Files of a test PKI. ``other_*`` come from a second CA that nobody trusts."""

    directory: Path
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca_cert: str
    other_server_cert: str
    other_server_key: str
    other_client_cert: str
    other_client_key: str

    def server_tls(self, **changes: Any) -> TLSOptions:
        """TLSOptions for a server with this PKI's server certificate."""
        opts = TLSOptions(cert_file=self.server_cert, key_file=self.server_key)
        if changes.get("client_auth", "none") != "none":
            opts = replace(opts, ca_file=self.ca_cert)
        return replace(opts, **changes)

    def client_tls(self, *, with_cert: bool = False, **changes: Any) -> TLSOptions:
        """TLSOptions for a client trusting this PKI's CA (with a client certificate)."""
        opts = TLSOptions(ca_file=self.ca_cert)
        if with_cert:
            opts = replace(opts, cert_file=self.client_cert, key_file=self.client_key)
        return replace(opts, **changes)


def _write(directory: Path, stem: str, issued: Issued) -> tuple[str, str]:
    cert, key = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    write_issued(issued, cert, key)
    return str(cert), str(key)


def make_pki(
    tmp_path: Path,
    hosts: Sequence[str] = LOCAL_HOSTS,
    expired: bool = False,
    client_name: str = "test client",
) -> Pki:
    """A CA, a server certificate for ``hosts`` (expired if asked), a client certificate,
    and a second, unrelated CA with its own server and client certificates."""
    directory = tmp_path / "pki"
    directory.mkdir(exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(days=30) if expired else None
    not_after = now - dt.timedelta(days=1) if expired else None
    ca, other = create_ca(), create_ca("unrelated test CA")
    ca_cert, ca_key = _write(directory, "ca", ca)
    leaf = issue_server_cert(ca, hosts, not_before=not_before, not_after=not_after)
    server = _write(directory, "server", leaf)
    client = _write(directory, "client", issue_client_cert(ca, client_name))
    other_ca_cert, _ = _write(directory, "other-ca", other)
    other_server = _write(directory, "other-server", issue_server_cert(other, hosts))
    other_client = _write(directory, "other-client", issue_client_cert(other, client_name))
    return Pki(
        directory,
        ca_cert,
        ca_key,
        *server,
        *client,
        other_ca_cert,
        *other_server,
        *other_client,
    )
