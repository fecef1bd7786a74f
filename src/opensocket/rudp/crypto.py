"""Datagram protection (CRC-32C or AEAD), handshake MACs, keys and stateless cookies.

Plain mode appends a CRC-32C of header and payload: it catches corruption, not attackers.
With a shared secret, handshake packets carry an HMAC keyed from the secret, and every DATA
packet is sealed with AES-256-GCM under per-direction keys derived by HKDF from the secret and
both sides' random nonces; the header is the associated data and the nonce is the IV XOR the
packet number, which is never reused in one direction.
"""

from __future__ import annotations

import hmac
import os
import struct
from typing import Final

from crc32c import crc32c
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .wire import CRC, CRC_SIZE, HEADER_SIZE, MAC_SIZE, TAG_SIZE, Malformed

__all__ = ["AeadProtection", "CookieJar", "PlainProtection", "Protection", "derive_keys"]

_IV_TAIL: Final = struct.Struct(">8sI")
_STAMP: Final = struct.Struct(">d")
COOKIE_SIZE: Final = _STAMP.size + MAC_SIZE


def seal_crc(packet: bytearray) -> bytes:
    """Append the CRC-32C of everything so far (used for handshake packets in every mode)."""
    packet += CRC.pack(crc32c(packet))
    return bytes(packet)


def open_crc(data: bytes | memoryview) -> memoryview:
    """Check the trailing CRC-32C; return header and payload without it."""
    view = memoryview(data)
    body = view[:-CRC_SIZE]
    if CRC.unpack_from(view, len(view) - CRC_SIZE)[0] != crc32c(body):
        raise Malformed("checksum")
    return body


class Protection:
    """Seals outgoing DATA packets and opens incoming ones (plain: a CRC-32C)."""

    overhead = CRC_SIZE

    def seal(self, packet: bytearray, pn: int) -> bytes:
        """Finish ``packet`` (header + payload) into the bytes to send."""
        return seal_crc(packet)

    def open(self, data: bytes | memoryview, pn: int) -> memoryview:
        """Return header + plaintext payload, or raise Malformed."""
        return open_crc(data)


PlainProtection = Protection


class AeadProtection(Protection):
    """AES-256-GCM with per-direction keys; the 12-byte header is associated data."""

    overhead = TAG_SIZE

    def __init__(self, send_key: bytes, send_iv: bytes, recv_key: bytes, recv_iv: bytes) -> None:
        self._send = AESGCM(send_key)
        self._recv = AESGCM(recv_key)
        self._send_iv = (send_iv[:8], int.from_bytes(send_iv[8:]))
        self._recv_iv = (recv_iv[:8], int.from_bytes(recv_iv[8:]))

    def seal(self, packet: bytearray, pn: int) -> bytes:
        """Encrypt the payload in place of itself and append the tag."""
        head, tail = self._send_iv
        view = memoryview(packet)
        sealed = self._send.encrypt(
            _IV_TAIL.pack(head, tail ^ pn), view[HEADER_SIZE:], view[:HEADER_SIZE]
        )
        view.release()
        return bytes(packet[:HEADER_SIZE]) + sealed

    def open(self, data: bytes | memoryview, pn: int) -> memoryview:
        """Decrypt and authenticate; a wrong key or a changed byte raises Malformed."""
        head, tail = self._recv_iv
        view = memoryview(data)
        if len(view) < HEADER_SIZE + TAG_SIZE:
            raise Malformed("short")
        try:
            plain = self._recv.decrypt(
                _IV_TAIL.pack(head, tail ^ pn), view[HEADER_SIZE:], view[:HEADER_SIZE]
            )
        except InvalidTag:
            raise Malformed("authentication") from None
        return memoryview(bytes(view[:HEADER_SIZE]) + plain)


def handshake_key(secret: bytes) -> bytes:
    """The key of the handshake MACs, derived from the shared secret."""
    return _hkdf(secret, b"", b"opensocket rudp v1 handshake", 32)


def mac(key: bytes, *parts: bytes | bytearray | memoryview) -> bytes:
    """A truncated HMAC-SHA256 over the concatenated parts."""
    return hmac.digest(key, b"".join(parts), "sha256")[:MAC_SIZE]


def derive_keys(
    secret: bytes, client_nonce: bytes, server_nonce: bytes, ccid: int, scid: int, *, client: bool
) -> AeadProtection:
    """Per-direction AEAD keys from the secret, both nonces and both connection ids."""
    info = b"opensocket rudp v1 keys" + ccid.to_bytes(4) + scid.to_bytes(4)
    material = _hkdf(secret, client_nonce + server_nonce, info, 2 * (32 + 12))
    c_key, c_iv = material[:32], material[32:44]
    s_key, s_iv = material[44:76], material[76:88]
    if client:
        return AeadProtection(c_key, c_iv, s_key, s_iv)
    return AeadProtection(s_key, s_iv, c_key, c_iv)


def _hkdf(secret: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    kdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info)
    return kdf.derive(secret)


def address_bytes(addr: object) -> bytes:
    """A stable byte string for a socket address (host and port)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}|{addr[1]}".encode()
    return repr(addr).encode()


class CookieJar:
    """Stateless address-validation cookies: a timestamp and an HMAC over the client's address,
    connection id and nonce, under a server secret that rotates every ``lifetime`` seconds (the
    previous secret is still accepted, so a cookie lives between one and two lifetimes)."""

    def __init__(self, lifetime: float, now: float) -> None:
        self.lifetime = lifetime
        self._keys = [os.urandom(32), os.urandom(32)]
        self._rotated = now

    def _rotate(self, now: float) -> None:
        if now - self._rotated >= self.lifetime:
            self._keys = [os.urandom(32), self._keys[0]]
            self._rotated = now

    def make(self, addr: object, cid: int, nonce: bytes, now: float) -> bytes:
        """A cookie for this client attempt."""
        self._rotate(now)
        stamp = _STAMP.pack(now)
        return stamp + mac(self._keys[0], stamp, address_bytes(addr), cid.to_bytes(4), nonce)

    def check(self, cookie: bytes, addr: object, cid: int, nonce: bytes, now: float) -> bool:
        """True when the cookie was made by us for this attempt and is fresh."""
        self._rotate(now)
        if len(cookie) != COOKIE_SIZE:
            return False
        stamp = cookie[: _STAMP.size]
        (made,) = _STAMP.unpack(stamp)
        if not now - 2 * self.lifetime <= made <= now:
            return False
        body = (stamp, address_bytes(addr), cid.to_bytes(4), nonce)
        given = cookie[_STAMP.size :]
        return any(hmac.compare_digest(mac(key, *body), given) for key in self._keys)
