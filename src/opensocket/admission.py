"""Server admission control, sans I/O: access lists, connection caps, per-IP rate limits.

Both runtimes ask ``admit(ip, now)`` for each accepted socket and call ``release(ip)`` when it
closes. Rate limiting is a token bucket per IP; idle buckets are pruned so the table stays
bounded by the number of recently seen addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .errors import CloseCode
from .options import ServerLimits

__all__ = ["Admission", "Refusal"]

MAX_BUCKETS = 65_536


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection was refused: a close code and a reason for the peer and the log."""

    code: int
    reason: str


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class Admission:
    """Decide whether a new connection from an IP may proceed."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, ip: str | None, now: float) -> Refusal | None:
        """Return None to accept (and count) the connection, or the Refusal."""
        limits = self.limits
        if ip is not None:
            refusal = self._check_ip(ip, now)
            if refusal is not None:
                return refusal
        if self.total >= limits.max_connections:
            return Refusal(
                CloseCode.CONNECTION_LIMIT,
                f"server connection limit reached ({limits.max_connections}): try again later",
            )
        key = ip or ""
        if ip is not None and self.per_ip.get(key, 0) >= limits.max_connections_per_ip:
            return Refusal(
                CloseCode.CONNECTION_LIMIT,
                f"too many connections from {ip} (limit {limits.max_connections_per_ip})",
            )
        self.total += 1
        self.per_ip[key] = self.per_ip.get(key, 0) + 1
        return None

    def release(self, ip: str | None) -> None:
        """A connection admitted earlier has closed."""
        key = ip or ""
        self.total -= 1
        left = self.per_ip.get(key, 1) - 1
        if left > 0:
            self.per_ip[key] = left
        else:
            self.per_ip.pop(key, None)

    def _check_ip(self, ip: str, now: float) -> Refusal | None:
        limits = self.limits
        if limits.allow or limits.deny:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                addr = None
            if addr is not None and getattr(addr, "ipv4_mapped", None):
                addr = addr.ipv4_mapped  # type: ignore[union-attr]
            if addr is not None:
                if any(addr in net for net in limits.deny):
                    return Refusal(CloseCode.ACCESS_DENIED, f"{ip} is denied by the access list")
                if limits.allow and not any(addr in net for net in limits.allow):
                    return Refusal(CloseCode.ACCESS_DENIED, f"{ip} is not in the allow list")
        if limits.rate is not None and not self._take_token(ip, now, limits.rate, limits.burst):
            return Refusal(
                CloseCode.RATE_LIMITED,
                f"too many new connections from {ip} (limit {limits.rate:g}/s): slow down",
            )
        return None

    def _take_token(self, ip: str, now: float, rate: float, burst: int) -> bool:
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune(now, rate, burst)
            bucket = self._buckets[ip] = _Bucket(float(burst), now)
        else:
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _prune(self, now: float, rate: float, burst: int) -> None:
        full = burst / rate
        stale = [ip for ip, b in self._buckets.items() if now - b.stamp >= full]
        for ip in stale:
            del self._buckets[ip]
        if len(self._buckets) >= MAX_BUCKETS:
            self._buckets.clear()
