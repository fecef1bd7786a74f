"""Port scanning: a TCP connect scan (what ``nmap -sT`` does) and a UDP scan, on asyncio.

    report = await scan("127.0.0.1", "22,80,8000-8100")
    for host in report.hosts:
        print(host.address, host.open_ports)

Each port ends in one state: ``open`` (the connect succeeded), ``closed`` (refused: an RST,
or for UDP an ICMP port unreachable), ``filtered`` (no answer after every retry, or an ICMP
unreachable other than port-unreachable) and, for UDP only, ``open|filtered`` (silence: an
open UDP service may simply not answer). See ``_scan_engine`` for how the engine stays fast
and correct (self-connects, SYN drops, ephemeral-port exhaustion).
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import ipaddress
import logging
import resource
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import AddressError, ConfigError, NameResolutionError
from ._scan_engine import STATES, HostJob, ScanSettings, TcpEngine, UdpEngine
from ._targets import Target, format_ports, parse_ports, parse_targets
from .services import UDP_PAYLOADS, default_ports, service_name

__all__ = [
    "HostReport",
    "PortResult",
    "PortState",
    "ScanReport",
    "parse_ports",
    "parse_targets",
    "scan",
    "scan_blocking",
]

log = logging.getLogger("opensocket.scan")

DEFAULT_TIMEOUT: Final = 1.0
DEFAULT_CONCURRENCY: Final = 500
DEFAULT_RETRIES: Final = 2
DEFAULT_BANNER_TIMEOUT: Final = 1.0
_FD_HEADROOM: Final = 64  # descriptors left for everything else in the process
LIST_CLOSED_UP_TO: Final = 25  # like nmap: closed ports are listed only for small scans
_FAMILY_NAMES: Final = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


class PortState(enum.StrEnum):
    """What a scan learned about a port."""

    OPEN = "open"
    CLOSED = "closed"
    FILTERED = "filtered"
    OPEN_FILTERED = "open|filtered"


_STATE_OF: Final = {i: PortState(name) for i, name in enumerate(STATES) if i}
_DEFAULT_REASON: Final = {
    ("tcp", PortState.OPEN): "syn-ack",
    ("tcp", PortState.CLOSED): "conn-refused",
    ("udp", PortState.OPEN): "udp-response",
    ("udp", PortState.CLOSED): "port-unreach",
}


@dataclass(frozen=True, slots=True)
class PortResult:
    """One port of one host: its state, why, the usual service and any banner read."""

    port: int
    state: PortState
    protocol: str = "tcp"
    service: str | None = None
    reason: str = ""
    banner: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the banner decoded, undecodable bytes escaped)."""
        out: dict[str, Any] = {
            "port": self.port,
            "protocol": self.protocol,
            "state": str(self.state),
            "service": self.service,
            "reason": self.reason,
        }
        if self.banner is not None:
            out["banner"] = self.banner.decode("utf-8", "backslashreplace")
        return out


@dataclass(frozen=True, slots=True)
class HostReport:
    """Every scanned port of one host. Closed ports are counted, not listed (``results()``)."""

    target: str
    address: str
    hostname: str | None
    protocol: str
    scanned: tuple[int, ...]
    ports: tuple[PortResult, ...]  # every port that is not closed, in port order
    closed: int
    self_connects: int = 0  # loopback self-connections seen and counted as closed

    @property
    def open_ports(self) -> tuple[int, ...]:
        """The open ports, in order."""
        return tuple(r.port for r in self.ports if r.state is PortState.OPEN)

    def state(self, port: int) -> PortState | None:
        """The state of ``port``, or None when it was not scanned."""
        for result in self.ports:
            if result.port == port:
                return result.state
        i = bisect.bisect_left(self.scanned, port)
        found = i < len(self.scanned) and self.scanned[i] == port
        return PortState.CLOSED if found else None

    def results(self, *, include_closed: bool = True) -> Iterator[PortResult]:
        """Every scanned port's result in port order (closed ones made on the fly)."""
        if not include_closed:
            yield from self.ports
            return
        listed = {r.port: r for r in self.ports}
        reason = _DEFAULT_REASON[(self.protocol, PortState.CLOSED)]
        for port in self.scanned:
            found = listed.get(port)
            if found is None:
                service = service_name(port, self.protocol)
                found = PortResult(port, PortState.CLOSED, self.protocol, service, reason)
            yield found

    @property
    def closed_ports(self) -> tuple[int, ...]:
        """The closed ports, in order."""
        listed = {r.port for r in self.ports}
        return tuple(p for p in self.scanned if p not in listed)

    def to_dict(
        self, *, open_only: bool = False, show_closed: bool | None = None
    ) -> dict[str, Any]:
        """A JSON-ready dict; closed ports appear as a count, and also as ``closed_ports``
        when ``show_closed`` (None: when at most LIST_CLOSED_UP_TO ports were scanned)."""
        ports = [r for r in self.ports if not open_only or r.state is PortState.OPEN]
        out: dict[str, Any] = {
            "target": self.target,
            "address": self.address,
            "hostname": self.hostname,
            "ports": [r.to_dict() for r in ports],
            "closed": self.closed,
            "self_connects": self.self_connects,
        }
        if show_closed is None:
            show_closed = len(self.scanned) <= LIST_CLOSED_UP_TO
        if show_closed:
            out["closed_ports"] = list(self.closed_ports)
        return out


@dataclass(frozen=True, slots=True)
class ScanReport:
    """The result of a scan: one HostReport per resolved target, in the order given."""

    protocol: str
    ports: tuple[int, ...]
    hosts: tuple[HostReport, ...]
    unresolved: tuple[tuple[str, str], ...]  # (target, why)
    started: float  # time.time() at the start
    seconds: float

    @property
    def open_count(self) -> int:
        """Open ports over every host."""
        return sum(len(h.open_ports) for h in self.hosts)

    def to_dict(
        self, *, open_only: bool = False, show_closed: bool | None = None
    ) -> dict[str, Any]:
        """A JSON-ready dict of the whole report (``scanned``: the ports as a compact spec)."""
        return {
            "protocol": self.protocol,
            "scanned": format_ports(self.ports),
            "ports_scanned": len(self.ports),
            "seconds": round(self.seconds, 3),
            "hosts": [h.to_dict(open_only=open_only, show_closed=show_closed) for h in self.hosts],
            "unresolved": [{"target": t, "error": e} for t, e in self.unresolved],
        }


Progress = Callable[[int, int], None]


def _check(timeout: float, concurrency: int, rate: float | None, retries: int) -> None:
    if not timeout > 0:
        raise ConfigError(f"timeout must be a positive number of seconds (got {timeout:g})")
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1 (got {concurrency})")
    if rate is not None and not rate > 0:
        raise ConfigError(f"rate must be a positive number of probes per second (got {rate:g})")
    if retries < 0:
        raise ConfigError(f"retries must be at least 0 (got {retries})")


def _fd_cap(concurrency: int) -> int:
    """Concurrency that fits the open-files limit (each probe in flight holds a socket)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return concurrency
    cap = max(soft - _FD_HEADROOM, 16)
    if concurrency > cap:
        log.info("concurrency %d lowered to %d (open-files limit %d)", concurrency, cap, soft)
    return min(concurrency, cap)


def _ports(ports: str | Iterable[int] | None, protocol: str) -> tuple[int, ...]:
    if ports is None:
        return default_ports(protocol)
    if isinstance(ports, str):
        return parse_ports(ports, protocol)
    chosen = tuple(sorted(set(ports)))
    bad = [p for p in chosen if not 1 <= p <= 65535]
    if bad or not chosen:
        raise ConfigError(f"ports must be 1-65535 and at least one (got {bad or 'none'})")
    return chosen


def _literal_sockaddr(address: str) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    if "%" in address:  # scoped IPv6: let the resolver turn the scope into an index
        try:
            info = socket.getaddrinfo(
                address, 0, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )
        except socket.gaierror as exc:
            raise AddressError(f"bad scoped IPv6 address {address!r}: {exc.strerror}")
        return info[0][0], info[0][4]
    if ipaddress.ip_address(address).version == 6:
        return socket.AF_INET6, (address, 0, 0, 0)
    return socket.AF_INET, (address, 0)


async def _resolve(target: Target, family: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """The first address of a host name of ``family`` (0: IPv4 first, as nmap does)."""
    loop = asyncio.get_running_loop()
    assert target.hostname is not None
    try:
        infos = await loop.getaddrinfo(target.hostname, 0, family=family, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if family and await _resolves(target.hostname):
            want = _FAMILY_NAMES[socket.AddressFamily(family)]
            raise NameResolutionError(f"{target.hostname!r} has no {want} address") from exc
        raise NameResolutionError(f"cannot resolve {target.hostname!r}: {exc.strerror}") from exc
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return infos[0][0], infos[0][4]


async def _resolves(hostname: str) -> bool:
    """Whether ``hostname`` has an address of any family (to tell "no IPv6" from "no name")."""
    try:
        await asyncio.get_running_loop().getaddrinfo(hostname, 0, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return True


def _pairs(target: Target, family: int) -> list[tuple[socket.AddressFamily, tuple[Any, ...]]]:
    """The socket addresses of a literal target; NameResolutionError when -4/-6 rule them out."""
    pairs = [_literal_sockaddr(a) for a in target.addresses]
    kept = [pair for pair in pairs if not family or pair[0] == family]
    if not kept:
        have = _FAMILY_NAMES[pairs[0][0]]
        want = _FAMILY_NAMES[socket.AddressFamily(family)]
        raise NameResolutionError(f"{target.text} is an {have} address and {want} was asked for")
    return kept


@dataclass(slots=True)
class _Planned:
    target: Target
    job: HostJob


async def _plan(
    targets: list[Target], ports: tuple[int, ...], family: int = 0
) -> tuple[list[_Planned], list[tuple[str, str]]]:
    """One HostJob per distinct address, and the targets that did not resolve."""
    planned: list[_Planned] = []
    unresolved: list[tuple[str, str]] = []
    seen: set[str] = set()
    for target in targets:
        try:
            if target.hostname is not None:
                pairs = [await _resolve(target, family)]
            else:
                pairs = _pairs(target, family)
        except NameResolutionError as exc:
            unresolved.append((target.text, str(exc)))
            continue
        for found_family, sockaddr in pairs:
            address = str(sockaddr[0])
            if address not in seen:
                seen.add(address)
                job = HostJob(found_family, address, sockaddr, ports)
                planned.append(_Planned(target, job))
    return planned, unresolved


def _host_report(planned: _Planned, protocol: str) -> HostReport:
    job = planned.job
    results = []
    closed = 0
    for index, code in enumerate(job.states):
        if code == 2:  # closed: counted, not listed
            closed += 1
            continue
        port = job.ports[index]
        state = _STATE_OF.get(code, PortState.FILTERED)
        banner = job.banners.get(index)
        reason = job.reasons.get(index) or _DEFAULT_REASON.get((protocol, state), "")
        results.append(
            PortResult(port, state, protocol, service_name(port, protocol, banner), reason, banner)
        )
    self_connects = sum(1 for r in job.reasons.values() if r == "self-connect")
    return HostReport(
        target=planned.target.text,
        address=job.address,
        hostname=planned.target.hostname,
        protocol=protocol,
        scanned=tuple(job.ports),
        ports=tuple(results),
        closed=closed,
        self_connects=self_connects,
    )


async def scan(
    targets: str | Sequence[str],
    ports: str | Iterable[int] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate: float | None = None,
    retries: int = DEFAULT_RETRIES,
    banner: bool = False,
    banner_timeout: float = DEFAULT_BANNER_TIMEOUT,
    udp: bool = False,
    family: int = 0,
    progress: Progress | None = None,
) -> ScanReport:
    """Scan ``ports`` (a spec like ``"22,80,8000-8100"``, or numbers) of every target.

    Args:
        targets: host names, IP addresses, ranges and CIDR blocks (a string may list several,
            separated by commas or spaces).
        ports: the ports to scan; None scans ``services.default_ports()``.
        timeout: seconds to wait for an answer before a probe counts as unanswered.
        concurrency: probes waiting for an answer at once (capped by the open-files limit).
        rate: at most this many probes per second (None: no limit).
        retries: how often an unanswered port is probed again before it is filtered.
        banner: read what an open TCP port sends first (up to ``banner_timeout`` seconds).
        udp: a UDP scan instead of TCP connect.
        family: 0 (names resolve IPv4 first, as with nmap), ``socket.AF_INET`` or
            ``socket.AF_INET6`` (names resolve to that family; other literals are skipped).
        progress: called with (ports done, ports in total) as the scan goes.

    Returns:
        A ScanReport with the hosts in the order given and their ports in port order.

    Raises:
        AddressError: a malformed target. ConfigError: a bad port spec or option value.
        NameResolutionError: no target could be resolved.
    """
    _check(timeout, concurrency, rate, retries)
    if banner and not banner_timeout > 0:
        raise ConfigError(
            f"banner_timeout must be a positive number of seconds (got {banner_timeout:g})"
        )
    if family not in _FAMILY_NAMES and family != 0:
        raise ConfigError(f"family must be 0, AF_INET or AF_INET6 (got {family})")
    protocol = "udp" if udp else "tcp"
    port_list = _ports(ports, protocol)
    parsed = parse_targets([targets] if isinstance(targets, str) else targets)
    started, clock = time.time(), time.monotonic()
    planned, unresolved = await _plan(parsed, port_list, family)
    if not planned:
        reasons = "; ".join(why for _, why in unresolved)
        raise NameResolutionError(f"no target could be resolved: {reasons}")
    settings = ScanSettings(
        timeout=timeout,
        concurrency=_fd_cap(concurrency),
        rate=rate,
        retries=retries,
        banner=banner and not udp,
        banner_timeout=banner_timeout,
        udp_payloads=UDP_PAYLOADS,
    )
    engine_cls = UdpEngine if udp else TcpEngine
    await engine_cls([p.job for p in planned], settings, progress).run()
    return ScanReport(
        protocol=protocol,
        ports=port_list,
        hosts=tuple(_host_report(p, protocol) for p in planned),
        unresolved=tuple(unresolved),
        started=started,
        seconds=time.monotonic() - clock,
    )


def scan_blocking(
    targets: str | Sequence[str], ports: str | Iterable[int] | None = None, **options: Any
) -> ScanReport:
    """``scan`` for code without an event loop: runs it on a fresh one and returns the report."""
    return asyncio.run(scan(targets, ports, **options))
