"""``opensocket cert``: make a development CA, server and client certificates."""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import sys
from pathlib import Path
from typing import Any

from ..certs import CA_DAYS, DEFAULT_HOSTS, LEAF_DAYS, DevCerts, Kind, make_dev_certs
from ._common import print_json

__all__ = ["HELP", "NAME", "configure", "execute"]

NAME = "cert"
HELP = "make a development CA and TLS certificates (server, and client for mutual TLS)"

EPILOG = f"""\
what to make:
  all      the CA (reused when DIR has one) and a server certificate, plus a client
           certificate when --client is given (default)
  ca       a new CA only (ca.pem, ca-key.pem)
  server   a server certificate signed by the CA in DIR (server.pem, server-key.pem)
  client   a client certificate signed by the CA in DIR (client.pem, client-key.pem)

Keys are ECDSA P-256, written with mode 0600. Existing files are never replaced without
--force; the CA in DIR is reused by server and client so that clients keep trusting it
(`opensocket cert ca --force` replaces the CA itself). Server certificates name
{", ".join(DEFAULT_HOSTS)} unless --host is given.

examples:
  opensocket cert                          CA + server certificate in ./certs
  opensocket cert --client alice           ... and a client certificate for mutual TLS
  opensocket cert server --host myhost.test --host 10.0.0.5 --force
  opensocket cert --dir /tmp/pki --json    machine-readable summary

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
        default="all",
        help="what to make (default: all)",
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
        help="also make a client certificate with this name (mutual TLS)",
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


def _kinds(args: argparse.Namespace) -> tuple[Kind, ...]:
    if args.what == "all":
        return ("ca", "server", "client") if args.client else ("ca", "server")
    kind: Kind = args.what
    return (kind,)


def execute(args: argparse.Namespace) -> int:
    """Make the files and say how to use them."""
    if args.client and args.what in ("ca", "server"):
        print(
            f"opensocket cert: error: --client makes a client certificate: use it with "
            f"'all' or 'client', not '{args.what}'",
            file=sys.stderr,
        )
        return 2
    result = make_dev_certs(
        args.dir,
        kinds=_kinds(args),
        hosts=tuple(args.host) or DEFAULT_HOSTS,
        client_name=args.client or "opensocket client",
        days=args.days,
        ca_days=args.ca_days,
        force=args.force,
    )
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
    if result.server_cert and result.server_key:
        server = (
            f"opensocket echo serve {url} --tls-cert {q(str(result.server_cert))} "
            f"--tls-key {q(str(result.server_key))}"
        )
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
    else:
        lines += ["", f"clients trust servers signed by this CA with --tls-ca {result.ca_cert}"]
    lines.append("these are for development: do not use them in production")
    return "\n".join(lines)
