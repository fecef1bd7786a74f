"""Handshake messages and their negotiation rules (pure functions, no state).

HELLO (client → server) and WELCOME (server → client) bodies are compact JSON objects with
sorted keys. With a shared secret both sides prove knowledge of it by HMAC-SHA256 over both
nonces and a hash of the transcript; the secret itself never crosses the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import AuthenticationFailed, HandshakeError, NegotiationFailed
from ..options import PATTERNS, ProtocolOptions
from .frame import SUPPORTED_VERSIONS

__all__ = ["PEER_PATTERN", "Agreement", "build_hello", "negotiate"]

NONCE_SIZE = 16
MAX_HANDSHAKE_BODY = 4096
MAX_FRAME_FIELD = 0xFFFFFFFF
SERVER_LABEL = b"opensocket/1 server proof"
CLIENT_LABEL = b"opensocket/1 client proof"

# The messaging pattern each pattern talks to (docs/protocol.md section 6.6).
PEER_PATTERN: dict[str, str] = {
    "request": "reply",
    "reply": "request",
    "publish": "subscribe",
    "subscribe": "publish",
    "push": "pull",
    "pull": "push",
    "pair": "pair",
}


@dataclass(frozen=True, slots=True)
class Agreement:
    """What the handshake settled on."""

    version: int
    codec: str
    heartbeat: float
    peer_max_frame_size: int
    checksum: bool
    peer_name: str
    authenticated: bool
    pattern: str | None = None  # this side's messaging pattern, when the pair was agreed
    peer_pattern: str | None = None


def dump(obj: dict[str, Any]) -> bytes:
    """Encode a handshake body."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def load(body: bytes, what: str) -> dict[str, Any]:
    """Decode a handshake body, with an error that names the frame."""
    if len(body) > MAX_HANDSHAKE_BODY:
        raise HandshakeError(f"{what} body of {len(body)} bytes is over {MAX_HANDSHAKE_BODY}")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        # RecursionError: a few thousand nested brackets fit in the size limit.
        raise HandshakeError(f"{what} body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise HandshakeError(f"{what} body must be a JSON object")
    return obj


def field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """Fetch a typed field from a handshake body."""
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise HandshakeError(f"{what} field {key!r} is missing or has the wrong type")
    return value


def number(obj: dict[str, Any], key: str, what: str) -> float:
    """Fetch a finite, non-negative number (huge integers and NaN/Infinity are refused)."""
    value = field(obj, key, (int, float), what)
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise HandshakeError(f"{what} field {key!r} must be a finite number")
    return max(result, 0.0)


def frame_limit(obj: dict[str, Any], what: str, who: str) -> int:
    """Fetch the peer's maximum frame size (at least 64, at most what the header can carry)."""
    peer_max: int = field(obj, "max_frame", int, what)
    if peer_max < 64:
        raise HandshakeError(f"the {who}'s maximum frame size {peer_max} is below 64 bytes")
    return min(peer_max, MAX_FRAME_FIELD)


def wants_checksum(opts: ProtocolOptions, tls: bool) -> bool:
    """Whether this side wants checksums on the link."""
    return opts.checksum == "on" or (opts.checksum == "auto" and not tls)


def build_hello(opts: ProtocolOptions, *, tls: bool, nonce: bytes) -> bytes:
    """The client's offer."""
    body: dict[str, Any] = {
        "versions": list(SUPPORTED_VERSIONS),
        "codecs": list(opts.codecs),
        "heartbeat": opts.heartbeat,
        "max_frame": opts.max_frame_size,
        "checksum": wants_checksum(opts, tls),
        "name": opts.name,
    }
    if opts.pattern is not None:  # absent otherwise: plain HELLOs stay byte for byte as before
        body["pattern"] = opts.pattern
    if opts.secret is not None:
        body["auth"] = "hmac-sha256"
        body["nonce"] = nonce.hex()
    return dump(body)


def _pattern_name(pattern: str | None) -> str:
    return "no pattern (a plain link)" if pattern is None else repr(pattern)


def peer_pattern(obj: dict[str, Any], what: str) -> str | None:
    """Fetch the optional ``pattern`` field (absent: a plain link, as version 1 peers send)."""
    if "pattern" not in obj:
        return None
    value: str = field(obj, "pattern", str, what)
    if value not in PATTERNS:
        raise NegotiationFailed(
            f"{what} names messaging pattern {value[:40]!r}, which this side does not know "
            f"(known: {', '.join(PATTERNS)})"
        )
    return value


def check_patterns(client: str | None, server: str | None) -> None:
    """Refuse a client/server pair of messaging patterns that cannot talk to each other."""
    if client is None and server is None:
        return
    if client is not None and PEER_PATTERN[client] == server:
        return
    want = "a plain link" if client is None else f"a {PEER_PATTERN[client]!r} socket"
    raise NegotiationFailed(
        f"incompatible messaging patterns: the client has {_pattern_name(client)}, the server "
        f"has {_pattern_name(server)}; the client needs {want} (pairs: request-reply, "
        "publish-subscribe, push-pull, pair-pair; no pattern only with no pattern)"
    )


def _heartbeat(mine: float, theirs: float) -> float:
    if mine and theirs:
        return min(mine, theirs)
    return mine or theirs


def negotiate(
    opts: ProtocolOptions, hello: dict[str, Any], *, tls: bool
) -> tuple[dict[str, Any], Agreement]:
    """Server side: choose from the client's offer; return the WELCOME body and the result."""
    versions = field(hello, "versions", list, "HELLO")
    ints = {v for v in versions if isinstance(v, int) and not isinstance(v, bool)}
    common = sorted(ints & set(SUPPORTED_VERSIONS))
    if not common:
        raise NegotiationFailed(
            f"no common protocol version: client speaks {versions}, "
            f"server speaks {list(SUPPORTED_VERSIONS)}"
        )
    offered = field(hello, "codecs", list, "HELLO")
    codec = next((c for c in offered if c in opts.codecs), None)
    if codec is None:
        raise NegotiationFailed(
            f"no common payload codec: client offered {', '.join(map(str, offered))}; "
            f"server accepts {', '.join(opts.codecs)}"
        )
    theirs_hb = number(hello, "heartbeat", "HELLO")
    peer_max = frame_limit(hello, "HELLO", "client")
    theirs_checksum: bool = field(hello, "checksum", bool, "HELLO")
    checksum = wants_checksum(opts, tls) or theirs_checksum
    name = field(hello, "name", str, "HELLO")[:255]
    theirs_pattern = peer_pattern(hello, "HELLO")
    check_patterns(theirs_pattern, opts.pattern)
    body: dict[str, Any] = {
        "version": common[-1],
        "codec": codec,
        "heartbeat": _heartbeat(opts.heartbeat, theirs_hb),
        "max_frame": opts.max_frame_size,
        "checksum": checksum,
        "name": opts.name,
    }
    if opts.pattern is not None:
        body["pattern"] = opts.pattern
    agreement = Agreement(
        version=common[-1],
        codec=codec,
        heartbeat=body["heartbeat"],
        peer_max_frame_size=peer_max,
        checksum=checksum,
        peer_name=name,
        authenticated=opts.secret is not None,
        pattern=opts.pattern,
        peer_pattern=theirs_pattern,
    )
    return body, agreement


def accept_welcome(opts: ProtocolOptions, welcome: dict[str, Any]) -> Agreement:
    """Client side: check the server's choice against what we offered."""
    version = field(welcome, "version", int, "WELCOME")
    codec = field(welcome, "codec", str, "WELCOME")
    if version not in SUPPORTED_VERSIONS or codec not in opts.codecs:
        raise NegotiationFailed(
            f"the server chose version {version} / codec {codec!r}, not offered"
        )
    peer_max = frame_limit(welcome, "WELCOME", "server")
    theirs_pattern = peer_pattern(welcome, "WELCOME")
    if opts.pattern is not None and theirs_pattern is None:
        raise NegotiationFailed(
            f"the server answered without a messaging pattern, but this side is a "
            f"{opts.pattern!r} socket: the server is a plain endpoint or does not support "
            f"patterns; connect to a {PEER_PATTERN[opts.pattern]!r} socket"
        )
    check_patterns(opts.pattern, theirs_pattern)
    return Agreement(
        version=version,
        codec=codec,
        heartbeat=number(welcome, "heartbeat", "WELCOME"),
        peer_max_frame_size=peer_max,
        checksum=bool(field(welcome, "checksum", bool, "WELCOME")),
        peer_name=field(welcome, "name", str, "WELCOME")[:255],
        authenticated=opts.secret is not None,
        pattern=opts.pattern,
        peer_pattern=theirs_pattern,
    )


def _proof(secret: bytes, label: bytes, *parts: bytes) -> bytes:
    mac = hmac.new(secret, label, hashlib.sha256)
    for part in parts:
        mac.update(hashlib.sha256(part).digest())
    return mac.digest()


def server_proof(secret: bytes, client_nonce: bytes, server_nonce: bytes, hello: bytes) -> bytes:
    """HMAC the server sends to show it knows the secret."""
    return _proof(secret, SERVER_LABEL, client_nonce, server_nonce, hello)


def client_proof(
    secret: bytes, client_nonce: bytes, server_nonce: bytes, hello: bytes, welcome: bytes
) -> bytes:
    """HMAC the client sends to show it knows the secret, bound to the whole transcript."""
    return _proof(secret, CLIENT_LABEL, client_nonce, server_nonce, hello, welcome)


def verify(expected: bytes, received_hex: object, who: str) -> None:
    """Compare a received proof in constant time; raise AuthenticationFailed on mismatch."""
    try:
        received = bytes.fromhex(received_hex) if isinstance(received_hex, str) else b""
    except ValueError:
        received = b""
    if not hmac.compare_digest(expected, received):
        raise AuthenticationFailed(
            f"the {who}'s authentication proof does not match: the shared secrets differ"
        )


def nonce_of(obj: dict[str, Any], what: str) -> bytes:
    """Read a hex nonce of the right size."""
    text = field(obj, "nonce", str, what)
    try:
        nonce = bytes.fromhex(text)
    except ValueError:
        raise HandshakeError(f"{what} nonce is not hex") from None
    if len(nonce) != NONCE_SIZE:
        raise HandshakeError(f"{what} nonce must be {NONCE_SIZE} bytes")
    return nonce
