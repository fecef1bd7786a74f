"""A small table of well-known services: port -> name, and names guessed from a banner.

The names follow IANA / nmap-services spelling. The table doubles as the default port set of
``opensocket scan`` (ports 1-1024 plus every port listed here).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "TCP_SERVICES",
    "UDP_PAYLOADS",
    "UDP_SERVICES",
    "default_ports",
    "port_by_name",
    "service_name",
]

TCP_SERVICES: Final[dict[int, str]] = {
    7: "echo", 9: "discard", 13: "daytime", 21: "ftp", 22: "ssh", 23: "telnet", 25: "smtp",
    37: "time", 43: "whois", 53: "domain", 79: "finger", 80: "http", 88: "kerberos-sec",
    110: "pop3", 111: "rpcbind", 113: "ident", 119: "nntp", 135: "msrpc", 139: "netbios-ssn",
    143: "imap", 179: "bgp", 389: "ldap", 443: "https", 445: "microsoft-ds", 465: "smtps",
    513: "login", 514: "shell", 515: "printer", 543: "klogin", 544: "kshell", 548: "afp",
    554: "rtsp", 587: "submission", 631: "ipp", 636: "ldaps", 873: "rsync", 990: "ftps",
    993: "imaps", 995: "pop3s", 1080: "socks", 1194: "openvpn", 1433: "ms-sql-s",
    1521: "oracle", 1723: "pptp", 1883: "mqtt", 2049: "nfs", 2181: "zookeeper",
    2375: "docker", 2376: "docker-s", 3000: "ppp", 3128: "squid-http", 3306: "mysql",
    3389: "ms-wbt-server", 4369: "epmd", 5000: "upnp", 5060: "sip", 5222: "xmpp-client",
    5432: "postgresql", 5671: "amqps", 5672: "amqp", 5900: "vnc", 5984: "couchdb",
    6379: "redis", 6443: "kubernetes", 6667: "irc", 8000: "http-alt", 8008: "http",
    8080: "http-proxy", 8443: "https-alt", 8888: "sun-answerbook", 9000: "cslistener",
    9042: "cassandra", 9090: "zeus-admin", 9092: "kafka", 9100: "jetdirect",
    9200: "elasticsearch", 9418: "git", 11211: "memcache", 15672: "rabbitmq-mgmt",
    27017: "mongod",
}  # fmt: skip

UDP_SERVICES: Final[dict[int, str]] = {
    7: "echo", 53: "domain", 67: "dhcps", 68: "dhcpc", 69: "tftp", 123: "ntp",
    137: "netbios-ns", 138: "netbios-dgm", 161: "snmp", 162: "snmptrap", 500: "isakmp",
    514: "syslog", 520: "route", 1194: "openvpn", 1900: "upnp", 4500: "nat-t-ike",
    5060: "sip", 5353: "mdns", 11211: "memcache", 51820: "wireguard",
}  # fmt: skip

# A banner says more than a port number: these override the table when they match.
_BANNERS: Final = (
    (re.compile(rb"^SSH-\d"), "ssh"),
    (re.compile(rb"^HTTP/\d"), "http"),
    (re.compile(rb"^220[ -].*\bE?SMTP\b", re.IGNORECASE), "smtp"),
    (re.compile(rb"^220[ -].*\bFTP\b", re.IGNORECASE), "ftp"),
    (re.compile(rb"^\+OK"), "pop3"),
    (re.compile(rb"^\* OK.*IMAP", re.IGNORECASE), "imap"),
    (re.compile(rb"^RFB \d{3}\.\d{3}"), "vnc"),
    (re.compile(rb"^-(ERR|NOAUTH)"), "redis"),
    (re.compile(rb"^.\x00\x00\x00\x0a\d"), "mysql"),
)


def service_name(port: int, protocol: str = "tcp", banner: bytes | None = None) -> str | None:
    """The service a port usually runs, refined by its banner when one was read."""
    if banner:
        for pattern, name in _BANNERS:
            if pattern.match(banner):
                return name
    table = UDP_SERVICES if protocol == "udp" else TCP_SERVICES
    return table.get(port)


def port_by_name(name: str, protocol: str = "tcp") -> int | None:
    """The port of a service name (``http`` -> 80), or None when the table lacks it."""
    table = UDP_SERVICES if protocol == "udp" else TCP_SERVICES
    wanted = name.lower()
    return next((port for port, known in table.items() if known == wanted), None)


def default_ports(protocol: str = "tcp") -> tuple[int, ...]:
    """The ports scanned when none are given: 1-1024 and the table's ports (UDP: the table)."""
    if protocol == "udp":
        return tuple(sorted(UDP_SERVICES))
    return tuple(sorted(set(range(1, 1025)) | set(TCP_SERVICES)))


# What a UDP probe sends: most services stay silent on an empty datagram, these answer a
# well-formed request (a silent port can only be called open|filtered).
UDP_PAYLOADS: Final[dict[int, bytes]] = {
    # DNS: a standard query for the root's NS records
    53: b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01",
    # NTP: a version 3 client request
    123: b"\x1b" + bytes(47),
}
