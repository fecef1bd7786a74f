"""The wire format pinned byte for byte by tests/vectors/frames.json (the source of truth)."""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from typing import Any

import pytest
from crc32c import crc32c

from opensocket.protocol.decoder import FrameDecoder
from opensocket.protocol.frame import Flags, Frame, FrameType, frame_bytes

from .vectors import DOCS, Replay, build, describe, event_json, hexdump, load

VECTORS = load()
FRAMES = {entry["name"]: entry for entry in VECTORS["frames"]}
TRANSCRIPTS = {entry["name"]: entry for entry in VECTORS["transcripts"]}


def crc32c_reference(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): independent of the library."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_is_castagnoli() -> None:
    assert crc32c_reference(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283


@pytest.mark.parametrize("name", list(FRAMES))
def test_encoding_gives_the_vector_bytes(name: str) -> None:
    entry = FRAMES[name]
    data = frame_bytes(
        FrameType[entry["type"]],
        bytes.fromhex(entry["payload"]),
        checksum=entry["checksum"],
        meta=bytes.fromhex(entry["meta"]),
    )
    assert data.hex() == entry["hex"]


@pytest.mark.parametrize("name", list(FRAMES))
def test_vector_header_fields(name: str) -> None:
    entry = FRAMES[name]
    data = bytes.fromhex(entry["hex"])
    magic, version, reserved, crc, ftype, flags, meta_len, length = struct.unpack_from(
        ">2sBBIBBHI", data
    )
    meta, payload = bytes.fromhex(entry["meta"]), bytes.fromhex(entry["payload"])
    assert (magic, version, reserved) == (b"OS", 1, 0)
    assert ftype == FrameType[entry["type"]].value
    assert flags == (Flags.CHECKSUM if entry["checksum"] else 0)
    assert crc == (crc32c_reference(data[8:]) if entry["checksum"] else 0)
    assert (meta_len, length) == (len(meta), len(meta) + len(payload))
    assert data[16:] == meta + payload


@pytest.mark.parametrize("name", list(FRAMES))
def test_decoding_the_vector_gives_the_frame(name: str) -> None:
    entry = FRAMES[name]
    decoder = FrameDecoder()
    decoder.require_checksum = entry["checksum"]
    decoder.feed(bytes.fromhex(entry["hex"]))
    meta, payload = bytes.fromhex(entry["meta"]), bytes.fromhex(entry["payload"])
    flags = Flags.CHECKSUM if entry["checksum"] else 0
    expected = Frame(FrameType[entry["type"]], flags, meta, payload)
    if entry["type"] == "DATA" and not meta:
        assert decoder.messages == [payload]
    elif entry["type"] == "DATA":
        assert decoder.messages == [expected]
    else:
        assert decoder.frames == [(0, expected)]
    assert decoder.buffered == 0
    if "json" in entry:
        assert json.loads(payload) == entry["json"]


@pytest.mark.parametrize("name", list(TRANSCRIPTS))
def test_transcript_is_reproduced_exactly(name: str) -> None:
    spec = TRANSCRIPTS[name]
    replay = Replay(spec)
    sent = replay.run(spec["steps"])
    assert [data.hex() for data in sent] == [step["hex"] for step in spec["steps"]]
    _check_outcome(spec, replay, ("client", "server"))


@pytest.mark.parametrize("name", list(TRANSCRIPTS))
@pytest.mark.parametrize("real", ["client", "server"])
def test_transcript_replayed_against_one_side(name: str, real: str) -> None:
    """One real side fed the recorded bytes of the other must answer with the recorded bytes."""
    spec = TRANSCRIPTS[name]
    replay = Replay(spec, real=[real], recorded=spec["steps"])
    sent = replay.run(spec["steps"])
    for step, data in zip(spec["steps"], sent, strict=True):
        assert data.hex() == step["hex"], step
    _check_outcome(spec, replay, (real,))


def _check_outcome(spec: dict[str, Any], replay: Replay, sides: tuple[str, ...]) -> None:
    for side in sides:
        assert [event_json(e) for e in replay.events[side]] == spec[f"{side}_events"]
        assert [bytes(m).hex() for m in replay.messages[side]] == spec[f"{side}_messages"]  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(TRANSCRIPTS))
def test_transcript_frames_decode(name: str) -> None:
    for step in TRANSCRIPTS[name]["steps"]:
        data = bytes.fromhex(step["hex"])
        assert [f.type for f in describe(data)] == step["frames"]
        for frame in describe(data):
            assert frame.flags == Flags.CHECKSUM
            assert struct.unpack_from(">I", frame.raw, 4)[0] == crc32c_reference(frame.raw[8:])


def test_authenticated_transcript_proofs_cover_the_documented_bytes() -> None:
    """Recompute both HMAC proofs from the transcript as docs/protocol.md describes them."""
    spec = TRANSCRIPTS["authenticated"]
    steps = [bytes.fromhex(step["hex"]) for step in spec["steps"]]
    hello, welcome, auth = (describe(steps[i])[0].payload for i in range(3))
    secret = spec["secret"].encode()
    client_nonce = bytes.fromhex(spec["client_nonce"])
    server_nonce = bytes.fromhex(spec["server_nonce"])
    assert json.loads(hello)["nonce"] == client_nonce.hex()
    assert json.loads(welcome)["nonce"] == server_nonce.hex()

    def proof(label: bytes, *parts: bytes) -> str:
        msg = label + b"".join(hashlib.sha256(p).digest() for p in parts)
        return hmac.new(secret, msg, hashlib.sha256).hexdigest()

    server = proof(b"opensocket/1 server proof", client_nonce, server_nonce, hello)
    client = proof(b"opensocket/1 client proof", client_nonce, server_nonce, hello, welcome)
    assert json.loads(welcome)["proof"] == server
    assert json.loads(auth) == {"proof": client}
    assert describe(steps[3])[0].type == "AUTH_OK"
    assert describe(steps[3])[0].payload == b""


def test_secret_never_crosses_the_wire() -> None:
    spec = TRANSCRIPTS["authenticated"]
    wire = b"".join(bytes.fromhex(step["hex"]) for step in spec["steps"])
    secret = spec["secret"].encode()
    assert secret not in wire
    assert secret.hex().encode() not in wire


def test_vectors_file_matches_the_generator() -> None:
    """The file is the truth; this catches a generator (and so a docs dump) gone stale."""
    assert build() == VECTORS


def test_docs_show_every_vector() -> None:
    docs = DOCS.read_text()
    for entry in VECTORS["frames"]:
        assert hexdump(bytes.fromhex(entry["hex"])) in docs, entry["name"]
    for spec in VECTORS["transcripts"]:
        for step in spec["steps"]:
            assert hexdump(bytes.fromhex(step["hex"])) in docs, (spec["name"], step)
