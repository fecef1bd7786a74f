"""``opensocket cert``: make a development CA, server and client certificates."""

from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
from pathlib import Path
from typing import Any

from ..certs import (
    CA_DAYS,
    DEFAULT_HOSTS,
    LEAF_DAYS,
    CertFileExists,
    DevCerts,
    Kind,
    make_dev_certs,
)
from ..errors import ConfigError, OpenSocketError
from ._common import print_json

__all__ = ["HELP", "NAME", "client_stem", "configure", "execute"]

NAME = "cert"
HELP = "make a development CA and TLS certificates (server, and client for mutual TLS)"

EPILOG = f"""\
what to make:
  all      the CA (reused when DIR has one) and a server certificate, plus a client
           certificate when --client is given (the default without --client)
  ca       a new CA only (ca.pem, ca-key.pem)
  server   a server certificate signed by the CA in DIR (server.pem, server-key.pem)
  client   a client certificate signed by the CA in DIR: NAME.pem and NAME-key.pem for
           --client NAME, client.pem and client-key.pem without a name

--client NAME without WHAT makes only the client certificate, signed by the CA in DIR (on a
first run, with no CA in DIR yet, the CA and a server certificate are made too).

Keys are ECDSA P-256, written with mode 0600. Existing files are never replaced without
--force; the CA in DIR is reused by server and client so that clients keep trusting it
(`opensocket cert ca --force` replaces the CA itself). Server certificates name
{", ".join(DEFAULT_HOSTS)} unless --host is given.

examples:
  opensocket cert                          # CA + server certificate in ./certs
  opensocket cert --client alice           # then a client certificate: certs/alice.pem
  opensocket cert server --host myhost.test --host 10.0.0.5 --force
  opensocket cert --dir /tmp/pki --json    # machine-readable summary

exit status: 0 files written; 1 failure (a file exists, the CA in DIR is unusable, a write
failed); 2 usage error (bad option, host name or validity)
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``opensocket cert``."""
    parser.epilog = EPILOG
    parser.add_argument(
        "what",
        nargs="?",
        choices=("all", "ca", "server", "client"),
        default=None,
        help="what to make (default: all; with --client: the client certificate)",
    )
    parser.add_argument(
        "--dir", default="certs", metavar="DIR", help="folder for the files (default: ./certs)"
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="DNS name or IP address for the server certificate; repeatable "
        f"(default: {' '.join(DEFAULT_HOSTS)})",
    )
    parser.add_argument(
        "--client",
        metavar="NAME",
        help="make a client certificate with this name, in NAME.pem (mutual TLS)",
    )
    parser.add_argument(
        "--days",
        type=_positive_int,
        default=LEAF_DAYS,
        metavar="N",
        help=f"validity of server and client certificates (default: {LEAF_DAYS})",
    )
    parser.add_argument(
        "--ca-days",
        type=_positive_int,
        default=CA_DAYS,
        metavar="N",
        help=f"validity of a new CA (default: {CA_DAYS})",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace existing files (the CA only with 'ca')"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


_RESERVED_STEMS = ("ca", "server")


def client_stem(name: str | None) -> str:
    """The file name (without .pem) of the client certificate for ``name``."""
    if name is None:
        return "client"
    if not name.strip():
        raise ConfigError("--client needs a non-empty name")
    if len(name.strip()) > 64:
        raise ConfigError(f"--client: a client name is at most 64 characters (got {len(name)})")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip(".-") or "client"
    if stem.lower() in _RESERVED_STEMS or stem.lower().endswith("-key"):
        stem = f"client-{stem}"  # never the name of the CA's, the server's or a key's file
    return stem


def _kinds(args: argparse.Namespace, folder: Path) -> tuple[Kind, ...]:
    """What to make. ``--client NAME`` alone makes just the client certificate once a CA is
    in the folder (a first run also makes the CA and a server certificate)."""
    first_run = not (folder / "ca.pem").exists() and not (folder / "ca-key.pem").exists()
    if args.what is None and args.client is not None:
        return ("ca", "server", "client") if first_run else ("client",)
    if args.what in (None, "all"):
        return ("ca", "server", "client") if args.client is not None else ("ca", "server")
    kind: Kind = args.what
    return (kind,)


def _make(args: argparse.Namespace) -> DevCerts:
    folder = Path(args.dir)
    stem = client_stem(args.client)  # checked before anything is written
    try:
        return make_dev_certs(
            folder,
            kinds=_kinds(args, folder),
            hosts=tuple(args.host) or DEFAULT_HOSTS,
            client_name=args.client or "opensocket client",
            client_file=stem,
            days=args.days,
            ca_days=args.ca_days,
            force=args.force,
        )
    except CertFileExists as exc:
        raise OpenSocketError(f"{exc.path} already exists: pass --force to replace it") from exc


def execute(args: argparse.Namespace) -> int:
    """Make the files and say how to use them."""
    if args.client is not None and args.what in ("ca", "server"):
        raise ConfigError(
            f"--client makes a client certificate: use it with 'all' or 'client', or alone, "
            f"not with '{args.what}'"
        )
    result = _make(args)
    if args.json:
        print_json(summary(result))
    else:
        print(report(result))
    return 0


def _example_host(hosts: tuple[str, ...]) -> str:
    """The host to show in example commands: an IP if the certificate has one."""
    usable = [h.strip("[]") for h in hosts if not h.startswith("*")] or ["localhost"]
    for host in usable:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        return f"[{ip}]" if ip.version == 6 else str(ip)
    return usable[0]


def commands(result: DevCerts, port: int = 9443) -> dict[str, str]:
    """Example command lines using the files in ``result``."""
    q = shlex.quote
    url = f"tls://{_example_host(result.hosts)}:{port}"
    out: dict[str, str] = {}
    client = f"opensocket echo {url} --tls-ca {q(str(result.ca_cert))}"
    server_cert, server_key = result.server_cert, result.server_key
    made_now = server_cert is not None
    if not made_now and result.client_cert:  # a server certificate made before, beside it
        beside = result.directory / "server.pem", result.directory / "server-key.pem"
        if all(path.is_file() for path in beside):
            server_cert, server_key = beside
    if server_cert and server_key:
        server = (
            f"opensocket echo serve {url} --tls-cert {q(str(server_cert))} "
            f"--tls-key {q(str(server_key))}"
        )
        if made_now:
            out["server"] = server
            out["client"] = client
        out["server_mutual"] = (
            f"{server} --tls-ca {q(str(result.ca_cert))} --tls-client-auth required"
        )
    if result.client_cert and result.client_key:
        out["client_mutual"] = (
            f"{client} --tls-cert {q(str(result.client_cert))} "
            f"--tls-key {q(str(result.client_key))}"
        )
    return out


def _pair(cert: Path | None, key: Path | None) -> dict[str, Any] | None:
    return None if cert is None or key is None else {"cert": str(cert), "key": str(key)}


def summary(result: DevCerts) -> dict[str, Any]:
    """The JSON summary printed by ``--json``."""
    server = _pair(result.server_cert, result.server_key)
    if server is not None:
        server["hosts"] = list(result.hosts)
    client = _pair(result.client_cert, result.client_key)
    if client is not None and result.client_name:
        client["name"] = result.client_name
    return {
        "directory": str(result.directory),
        "ca": {"cert": str(result.ca_cert), "key": str(result.ca_key), "reused": result.reused_ca},
        "server": server,
        "client": client,
        "written": [str(p) for p in result.written],
        "commands": commands(result),
    }


def report(result: DevCerts) -> str:
    """The human-readable report: files written, then how to use them."""
    lines = ["wrote:"]
    lines += [f"  {path}" for path in result.written]
    if result.reused_ca:
        lines.append(f"signed with the existing CA {result.ca_cert}")
    if result.server_cert:
        lines.append(f"server certificate names: {', '.join(result.hosts)}")
    examples = commands(result)
    if examples:
        lines += ["", "use them:"]
        labels = {
            "server": "serve TLS:",
            "client": "connect (trusting the CA):",
            "server_mutual": "serve with mutual TLS (clients need a certificate):",
            "client_mutual": "connect with the client certificate:",
        }
        for key, line in examples.items():
            lines += [f"  # {labels[key]}", f"  {line}"]
    if result.client_cert and "server_mutual" not in examples:
        lines.append(
            f"servers accept it with --tls-ca {shlex.quote(str(result.ca_cert))} "
            "--tls-client-auth required"
        )
    if not examples:
        lines += ["", f"clients trust servers signed by this CA with --tls-ca {result.ca_cert}"]
    lines.append("these are for development: do not use them in production")
    return "\n".join(lines)
