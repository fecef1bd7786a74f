"""The bench control messages, test parameters and the result schema (sans-IO).

Control messages travel as JSON objects over a framed opensocket connection::

    client -> server  {"type": "start", "version": 1, "params": {...}}
    server -> client  {"type": "accept", "cookie": "<32 hex>"}
                    | {"type": "error", "message": "..."}
    (the client opens its data streams to the server's port, each sending the cookie and
    its stream index first)
    server -> client  {"type": "ready"}                  both sides start their streams
    server -> client  {"type": "done"}                   reverse: the server's senders ended
    client -> server  {"type": "results", "report": R}   the client's side is over
    server -> client  {"type": "results", "report": R}

A report ``R`` is one side's measurements: ``role`` ("sender"/"receiver"), ``seconds``,
``streams`` (``id``, ``bytes``, ``packets``, ``seconds``, ``udp``) and ``intervals``.
``build_result`` joins both reports into the document that ``--json`` prints (schema
``opensocket.bench/1``, described in the docs).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from ..errors import ConfigError
from ._bench_udp import HEADER_SIZE, UdpReceiver

__all__ = [
    "SCHEMA",
    "VERSION",
    "BenchParams",
    "StreamReport",
    "build_result",
    "interval_record",
    "latency_summary",
    "parse_size",
]

SCHEMA: Final = "opensocket.bench/1"
VERSION: Final = 1
Protocol = Literal["tcp", "tls", "udp"]
Mode = Literal["throughput", "rate", "rtt"]
MAX_STREAMS: Final = 128
MAX_DURATION: Final = 86_400.0
MAX_TCP_LENGTH: Final = 16 * 1024 * 1024
MAX_UDP_LENGTH: Final = 65_507
MAX_MESSAGE: Final = 1024 * 1024
DEFAULT_LENGTH: Final = {"tcp": 128 * 1024, "tls": 128 * 1024, "udp": 1400}
DEFAULT_MESSAGE: Final = 64
DEFAULT_UDP_BITRATE: Final = 1_000_000.0
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_RATE_SCALE = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_size(text: str, flag: str, *, rate: bool = False) -> float:
    """``128K``, ``1M``, ``1.5G``: bytes (binary units) or, with ``rate``, bits/s (decimal)."""
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(f"{flag} {text!r} is not a number with an optional K, M or G suffix")
    scale = (_RATE_SCALE if rate else _SCALE)[match.group(2).lower()]
    return float(match.group(1)) * scale


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True, slots=True)
class BenchParams:
    """What one test does; sent to the server in the ``start`` message.

    ``length`` is the write size (throughput), datagram size (UDP) or message size
    (rate/rtt); ``bitrate`` in bits/s per stream, 0 for as fast as possible.
    """

    protocol: Protocol = "tcp"
    mode: Mode = "throughput"
    streams: int = 1
    duration: float = 10.0
    interval: float = 1.0
    length: int = 0  # 0: the default for the protocol and mode
    bitrate: float = 0.0
    reverse: bool = False
    gso: bool = True  # UDP senders batch datagrams with UDP GSO where the kernel can

    def __post_init__(self) -> None:
        _check(self.protocol in ("tcp", "tls", "udp"), f"unknown protocol {self.protocol!r}")
        _check(self.mode in ("throughput", "rate", "rtt"), f"unknown mode {self.mode!r}")
        _check(
            1 <= self.streams <= MAX_STREAMS,
            f"-P/--parallel must be 1 to {MAX_STREAMS} (got {self.streams})",
        )
        _check(
            0 < self.duration <= MAX_DURATION,
            f"-t/--time must be above 0 and at most {MAX_DURATION:g} seconds "
            f"(got {self.duration:g})",
        )
        _check(
            self.interval >= 0,
            f"-i/--interval must be 0 (no interval reports) or more (got {self.interval:g})",
        )
        _check(
            self.bitrate >= 0,
            f"-b/--bitrate must be 0 (unlimited) or positive (got {self.bitrate:g})",
        )
        _check(
            self.mode == "throughput" or self.protocol != "udp",
            f"--mode {self.mode} runs over the framed protocol: use a tcp:// or tls:// URL, "
            "not UDP",
        )
        _check(
            not (self.mode == "rtt" and self.reverse),
            "--mode rtt measures round trips from the client: -R does not apply",
        )
        if self.length == 0:
            default = DEFAULT_LENGTH[self.protocol]
            object.__setattr__(
                self, "length", default if self.mode == "throughput" else DEFAULT_MESSAGE
            )
        self._check_length()

    def _check_length(self) -> None:
        if self.mode != "throughput":
            _check(
                1 <= self.length <= MAX_MESSAGE,
                f"-l/--length (message size) must be 1 to {MAX_MESSAGE} bytes (got {self.length})",
            )
        elif self.protocol == "udp":
            _check(
                HEADER_SIZE <= self.length <= MAX_UDP_LENGTH,
                f"-l/--length (UDP datagram size) must be {HEADER_SIZE} to {MAX_UDP_LENGTH} "
                f"bytes (got {self.length})",
            )
        else:
            _check(
                1 <= self.length <= MAX_TCP_LENGTH,
                f"-l/--length (write size) must be 1 to {MAX_TCP_LENGTH} bytes (got {self.length})",
            )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the parameters."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> BenchParams:
        """Parameters from a peer's JSON; ConfigError when anything is missing or wrong."""
        if not isinstance(data, dict):
            raise ConfigError("params must be a JSON object")
        types: dict[str, tuple[type, ...]] = {
            "protocol": (str,),
            "mode": (str,),
            "streams": (int,),
            "duration": (int, float),
            "interval": (int, float),
            "length": (int,),
            "bitrate": (int, float),
            "reverse": (bool,),
            "gso": (bool,),
        }
        values: dict[str, Any] = {}
        for key, kinds in types.items():
            value = data.get(key)
            ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"params.{key} is missing or has the wrong type")
            values[key] = value
        return cls(**values)


@dataclass(slots=True)
class StreamReport:
    """One stream's counters on one side (``udp`` on a UDP receiver only)."""

    id: int
    bytes: int = 0
    packets: int = 0
    seconds: float = 0.0
    udp: UdpReceiver | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form sent in a ``results`` message."""
        udp = None
        if self.udp is not None:
            u = self.udp
            udp = {
                "highest": u.highest,
                "lost": u.lost,
                "out_of_order": u.out_of_order,
                "jitter_ms": u.jitter_ns / 1e6,
            }
        return {
            "id": self.id,
            "bytes": self.bytes,
            "packets": self.packets,
            "seconds": self.seconds,
            "udp": udp,
        }


def _bps(nbytes: float, seconds: float) -> float:
    return nbytes * 8 / seconds if seconds > 0 else 0.0


def interval_record(
    start: float, end: float, counts: Sequence[tuple[int, int, int]], packets: bool
) -> dict[str, Any]:
    """One interval: ``counts`` holds ``(stream id, bytes, packets)`` moved in it."""
    seconds = end - start
    streams = [
        {
            "id": sid,
            "bytes": nbytes,
            "bits_per_second": _bps(nbytes, seconds),
            "packets": npackets if packets else None,
        }
        for sid, nbytes, npackets in counts
    ]
    total = sum(c[1] for c in counts)
    return {
        "start": round(start, 6),
        "end": round(end, 6),
        "seconds": seconds,
        "streams": streams,
        "sum": {
            "bytes": total,
            "bits_per_second": _bps(total, seconds),
            "packets": sum(c[2] for c in counts) if packets else None,
        },
    }


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def latency_summary(samples: Sequence[float]) -> dict[str, Any] | None:
    """count, min, mean, p50/p90/p99 and max of round trips given in milliseconds."""
    if not samples:
        return None
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "min_ms": ordered[0],
        "mean_ms": sum(ordered) / len(ordered),
        "p50_ms": _percentile(ordered, 0.50),
        "p90_ms": _percentile(ordered, 0.90),
        "p99_ms": _percentile(ordered, 0.99),
        "max_ms": ordered[-1],
    }


def _side(report: dict[str, Any], packets: bool) -> dict[str, Any]:
    total = sum(s["bytes"] for s in report["streams"])
    seconds = float(report["seconds"])
    return {
        "bytes": total,
        "seconds": seconds,
        "bits_per_second": _bps(total, seconds),
        "packets": sum(s["packets"] for s in report["streams"]) if packets else None,
    }


def _udp_side(side: dict[str, Any], receiver: dict[str, Any], sender: dict[str, Any]) -> None:
    """Add loss, jitter and reordering to a receiver summary (datagrams lost at the end of a
    stream are counted from the sender's count)."""
    sent = {s["id"]: s["packets"] for s in sender["streams"]}
    expected = lost = ooo = 0
    jitters = []
    for stream in receiver["streams"]:
        udp = stream["udp"] or {"highest": 0, "lost": 0, "out_of_order": 0, "jitter_ms": 0.0}
        top = max(udp["highest"], sent.get(stream["id"], 0))
        stream_lost = udp["lost"] + top - udp["highest"]
        stream.update(expected=top, lost=stream_lost)
        expected, lost, ooo = expected + top, lost + stream_lost, ooo + udp["out_of_order"]
        jitters.append(udp["jitter_ms"])
    side.update(
        expected=expected,
        lost=lost,
        lost_percent=100.0 * lost / expected if expected else 0.0,
        out_of_order=ooo,
        jitter_ms=sum(jitters) / len(jitters) if jitters else 0.0,
    )


def build_result(
    start: dict[str, Any],
    params: BenchParams,
    local: dict[str, Any],
    remote: dict[str, Any],
    latencies_ms: Sequence[float] = (),
) -> dict[str, Any]:
    """The ``--json`` document from the client's (``local``) and server's reports."""
    sender, receiver = (local, remote) if local["role"] == "sender" else (remote, local)
    packets = params.protocol == "udp" or params.mode != "throughput"
    send_side, recv_side = _side(sender, packets), _side(receiver, packets)
    if params.protocol == "udp":
        _udp_side(recv_side, receiver, sender)
    by_id = {s["id"]: s for s in receiver["streams"]}
    streams = []
    for stream in sender["streams"]:
        peer = by_id.get(stream["id"], {"bytes": 0, "packets": 0, "seconds": 0.0})
        streams.append(
            {
                "id": stream["id"],
                "sender": _stream_side(stream, packets, receiver=False),
                "receiver": _stream_side(peer, packets, receiver=True),
            }
        )
    rate = None
    if params.mode != "throughput" and recv_side["seconds"] > 0:
        rate = recv_side["packets"] / recv_side["seconds"]
    return {
        "schema": SCHEMA,
        "start": start,
        "intervals": local["intervals"],
        "end": {
            "sender": send_side,
            "receiver": recv_side,
            "streams": streams,
            "messages_per_second": rate,
            "latency": latency_summary(latencies_ms) if params.mode == "rtt" else None,
            "server_intervals": remote["intervals"],
        },
    }


def _stream_side(stream: dict[str, Any], packets: bool, *, receiver: bool) -> dict[str, Any]:
    out = {
        "bytes": stream["bytes"],
        "seconds": stream["seconds"],
        "bits_per_second": _bps(stream["bytes"], stream["seconds"]),
        "packets": stream["packets"] if packets else None,
    }
    for key in ("expected", "lost"):
        if key in stream:
            out[key] = stream[key]
    if receiver and stream.get("udp"):  # loss and jitter are the receiver's to measure
        out["jitter_ms"] = stream["udp"]["jitter_ms"]
        out["out_of_order"] = stream["udp"]["out_of_order"]
    return out
