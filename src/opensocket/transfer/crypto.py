"""Code phrases, sans-IO: SPAKE2 key exchange, key confirmation, and the record AEAD.

1. Both sides exchange HELLOs (plain JSON), then SPAKE2 messages (the sender is side A, the
   receiver side B, identities ``opensocket-send``/``opensocket-receive``; the password is the
   code phrase, NFC-normalised and stripped).
2. HKDF-SHA256 over the SPAKE2 key, salted with SHA-256 of the transcript (both HELLOs and both
   SPAKE2 messages, sender's first), gives four 32-byte keys: sender->receiver AEAD,
   receiver->sender AEAD, sender confirmation, receiver confirmation.
3. Each side sends CONFIRM = HMAC-SHA256(its confirmation key, b"confirm"). A side that gets a
   wrong CONFIRM stops with CodeMismatch before any OFFER (no name, no byte) is exchanged.
4. Every later record payload is AES-256-GCM sealed (header as associated data) with a
   per-direction key and a 96-bit nonce = 4 zero bytes + a 64-bit record counter.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
from typing import Final

from ..errors import CodeMismatch, TransferProtocolError

__all__ = ["TAG", "Pake", "RecordCipher", "generate_code"]

TAG: Final = 16
_ID_SEND: Final = b"opensocket-send"
_ID_RECEIVE: Final = b"opensocket-receive"
_INFO: Final = b"opensocket transfer v1 keys"
# fmt: off
_WORDS: Final = (
    "acid", "amber", "anchor", "apple", "arrow", "atlas", "autumn", "badge", "bamboo", "banjo",
    "beacon", "berry", "bison", "blade", "bloom", "bonus", "brick", "bridge", "bronze", "cabin",
    "cactus", "camel", "canal", "candle", "canyon", "carbon", "cargo", "cedar", "cello", "chalk",
    "cherry", "cider", "cobalt", "comet", "coral", "cotton", "crane", "crystal", "cobra",
    "dagger", "delta", "denim", "desert", "dingo", "dolphin", "dragon", "drum", "eagle", "echo",
    "ember", "engine", "falcon", "fern", "fiddle", "flint", "forest", "fossil", "galaxy",
    "garden", "garlic", "geyser", "ginger", "glacier", "globe", "granite", "gravel", "harbor",
    "hazel", "helmet", "heron", "hollow", "honey", "horizon", "husky", "igloo", "indigo", "iris",
    "island", "ivory", "jackal", "jade", "jasmine", "jelly", "jungle", "kayak", "kernel",
    "kettle", "kiwi", "koala", "ladder", "lagoon", "lantern", "lemon", "lily", "lizard", "lotus",
    "magnet", "mango", "maple", "marble", "meadow", "melon", "meteor", "mint", "mirror",
    "monsoon", "mosaic", "nectar", "needle", "nickel", "noodle", "nutmeg", "oasis", "ocean",
    "olive", "onyx", "opal", "orbit", "orchid", "otter", "oxygen", "paddle", "panda", "papaya",
    "parrot", "pebble", "pepper", "piano", "pilot", "pixel", "planet", "plum", "polar", "poppy",
    "prism", "pumpkin", "quartz", "quill", "rabbit", "radar", "raven", "reef", "ribbon", "river",
    "rocket", "ruby", "saddle", "saffron", "salmon", "sapphire", "saturn", "scarlet", "shadow",
    "silver", "sketch", "spruce", "stream", "sugar", "summit", "tango", "temple", "thistle",
    "thunder", "tiger", "timber", "topaz", "torch", "tulip", "tundra", "turtle", "umber",
    "velvet", "violet", "walnut", "willow", "window", "winter", "wizard", "yarrow", "zebra",
    "zenith", "zephyr",
)
# fmt: on


def generate_code() -> str:
    """A fresh code phrase like ``482-ember-walnut-tiger`` (~32 bits; one guess per run)."""
    words = "-".join(secrets.choice(_WORDS) for _ in range(3))
    return f"{secrets.randbelow(1000)}-{words}"


def _password(code: str) -> bytes:
    return unicodedata.normalize("NFC", code.strip()).encode()


class Pake:
    """One side of the SPAKE2 exchange and key confirmation."""

    def __init__(self, code: str, role: str) -> None:
        from spake2 import SPAKE2_A, SPAKE2_B  # imported when used: ~0.1 s of group set-up

        self.role = role
        cls = SPAKE2_A if role == "send" else SPAKE2_B
        self._spake = cls(_password(code), idA=_ID_SEND, idB=_ID_RECEIVE)
        self._mine = b""
        self._keys: tuple[bytes, bytes, bytes, bytes] | None = None

    def start(self) -> bytes:
        """Our SPAKE2 message."""
        self._mine = bytes(self._spake.start())
        return self._mine

    def finish(self, theirs: bytes, hellos: bytes) -> bytes:
        """Derive the keys from the peer's message; return our CONFIRM payload."""
        try:
            key = bytes(self._spake.finish(theirs))
        except Exception as exc:  # spake2 raises several kinds for malformed elements
            raise TransferProtocolError(f"the peer's SPAKE2 message is invalid: {exc}") from exc
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        pake_msgs = self._mine + theirs if self.role == "send" else theirs + self._mine
        salt = hashlib.sha256(hellos + pake_msgs).digest()
        okm = HKDF(algorithm=hashes.SHA256(), length=128, salt=salt, info=_INFO).derive(key)
        s2r, r2s, conf_s, conf_r = okm[:32], okm[32:64], okm[64:96], okm[96:]
        self._keys = (s2r, r2s, conf_s, conf_r)
        mine = conf_s if self.role == "send" else conf_r
        return hmac.new(mine, b"confirm", "sha256").digest()

    def verify(self, confirm: bytes) -> tuple[RecordCipher, RecordCipher]:
        """Check the peer's CONFIRM; return (cipher for what we send, for what we receive)."""
        assert self._keys is not None, "finish() first"
        s2r, r2s, conf_s, conf_r = self._keys
        theirs = conf_r if self.role == "send" else conf_s
        expected = hmac.new(theirs, b"confirm", "sha256").digest()
        if not hmac.compare_digest(expected, confirm):
            raise CodeMismatch(
                "the code phrase does not match the other side's: nothing was transferred; "
                "check the code and run both commands again"
            )
        out, into = (s2r, r2s) if self.role == "send" else (r2s, s2r)
        return RecordCipher(out), RecordCipher(into)


class RecordCipher:
    """AES-256-GCM for one direction, with a record counter as the nonce."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        # encrypt_into/decrypt_into are recent (cryptography 48 has them); older: allocate
        self._in_place = hasattr(self._aead, "encrypt_into") and hasattr(self._aead, "decrypt_into")
        self._counter = 0

    def _nonce(self) -> bytes:
        nonce = self._counter.to_bytes(12, "big")
        self._counter += 1
        return nonce

    def seal(
        self,
        header: bytes,
        payload: bytes | bytearray | memoryview,
        into: bytearray | None = None,
    ) -> bytes | memoryview:
        """Encrypt and authenticate ``payload`` bound to ``header`` (length includes the tag),
        into the start of ``into`` when given (no new 1 MiB buffer per record)."""
        if into is None or not self._in_place or len(into) < len(payload) + TAG:
            return self._aead.encrypt(self._nonce(), payload, header)
        out = memoryview(into)[: len(payload) + TAG]
        self._aead.encrypt_into(self._nonce(), payload, header, out)
        return out

    def open(
        self,
        header: bytes | bytearray | memoryview,
        sealed: bytes | memoryview,
        into: bytearray | None = None,
    ) -> bytes | memoryview:
        """Decrypt a payload (into the start of ``into`` when given, which must not overlap
        ``sealed``); TransferProtocolError if it was altered, reordered or replayed."""
        from cryptography.exceptions import InvalidTag

        try:
            if into is None or not self._in_place or len(into) < len(sealed) - TAG:
                return self._aead.decrypt(self._nonce(), sealed, bytes(header))
            out = memoryview(into)[: len(sealed) - TAG]
            self._aead.decrypt_into(self._nonce(), sealed, bytes(header), out)
            return out
        except InvalidTag:
            raise TransferProtocolError(
                "a record failed authentication: the data was altered in transit"
            ) from None
