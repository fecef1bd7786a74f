"""The sans-IO core: records, names, offers, the hash scheme, the state machine, the crypto."""

from __future__ import annotations

import hashlib

import pytest

from opensocket.errors import ProtocolError
from opensocket.transfer import CodeMismatch, PathRefused, TransferProtocolError
from opensocket.transfer._link import hash_factory, local_hashes
from opensocket.transfer.crypto import Pake, RecordCipher, generate_code
from opensocket.transfer.protocol import (
    BLOCK,
    FLAG_ZSTD,
    BlockHasher,
    DataCheck,
    Entry,
    Machine,
    Rec,
    State,
    check_name,
    decode_json,
    encode_json,
    pack_header,
    parse_header,
    parse_offer,
)


def test_header_vector() -> None:
    # The test vector of the docs: DATA, zstd flag, 1 MiB payload, offset 4 GiB.
    raw = pack_header(Rec.DATA, BLOCK, 1 << 32, FLAG_ZSTD)
    assert raw.hex() == "07010000001000000000000100000000"
    head = parse_header(raw)
    assert (head.type, head.flags, head.length, head.arg) == (Rec.DATA, 1, BLOCK, 1 << 32)


def test_file_record_vector() -> None:
    payload = encode_json({"start": 0})
    assert pack_header(Rec.FILE, len(payload), 3).hex() == "060000000000000b0000000000000003"
    assert payload == b'{"start":0}'


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (bytes.fromhex("63000000000000000000000000000000"), "unknown record type 99"),
        (bytes.fromhex("07000001000000000000000000000000"), "reserved"),
        (bytes.fromhex("07000000002000000000000000000000"), "limit"),
        (pack_header(Rec.HELLO, (64 << 10) + 1), "HELLO of 65537 bytes"),
        (pack_header(Rec.PAKE, 1 << 20), "limit 65536"),
        (bytes.fromhex("06010000000000000000000000000000"), "flags"),
        (bytes.fromhex("07020000000000000000000000000000"), "flags"),
    ],
)
def test_bad_headers(raw: bytes, words: str) -> None:
    with pytest.raises(TransferProtocolError, match=words) as info:
        parse_header(raw)
    assert isinstance(info.value, ProtocolError)


def test_records_before_authentication_are_small_and_later_ones_may_be_big() -> None:
    """A stranger (no code proved yet) cannot make the listener buffer 64 MiB."""
    assert parse_header(pack_header(Rec.HELLO, 64 << 10)).length == 64 << 10
    assert parse_header(pack_header(Rec.OFFER, 32 << 20)).length == 32 << 20


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a/./b",
        "a//b",
        "a/",
        "..",
        "a\0b",
        "a\\..\\b",
        "a\nb",
        "bad\udcffname",
        "x" * 256,
        "a/" * 2100 + "b",
        None,
        42,
    ],
)
def test_names_refused(path: object) -> None:
    with pytest.raises(PathRefused):
        check_name(path)


@pytest.mark.parametrize("path", ["a", "a/b/c.txt", "ünï cødé/文件.txt", ".hidden", "x" * 255])
def test_names_accepted(path: str) -> None:
    assert check_name(path) == path


def _item(path: str, kind: str = "file", **extra: object) -> dict[str, object]:
    item = {"path": path, "kind": kind, "size": 1, "mtime_ns": 0, "mode": 0o644, "alloc": 1}
    return item | extra


@pytest.mark.parametrize("kind", ["symlink", "device", "fifo", "socket", None])
def test_offer_refuses_special_kinds(kind: str | None) -> None:
    with pytest.raises(PathRefused, match="only regular files and folders"):
        parse_offer({"entries": [_item("x", kind)]})  # type: ignore[arg-type]


def test_offer_checks() -> None:
    with pytest.raises(PathRefused, match="twice"):
        parse_offer({"entries": [_item("a"), _item("a")]})
    with pytest.raises(PathRefused, match="inside the file"):
        parse_offer({"entries": [_item("a"), _item("a/b")]})
    with pytest.raises(TransferProtocolError, match="size"):
        parse_offer({"entries": [_item("a", size=-1)]})
    with pytest.raises(TransferProtocolError, match="size"):
        parse_offer({"entries": [_item("a", size=True)]})
    with pytest.raises(TransferProtocolError, match="list"):
        parse_offer({"entries": "a"})
    entries = parse_offer({"entries": [_item("d", "dir"), _item("d/f", mode=0o4755)]})
    assert entries[1] == Entry("d/f", "file", 1, 0, 0o755, 1)  # setuid dropped


def test_json_payloads() -> None:
    assert decode_json(Rec.PLAN, encode_json({"é": 1})) == {"é": 1}
    for bad in (b"[1]", b"{", b"\xff"):
        with pytest.raises(TransferProtocolError):
            decode_json(Rec.PLAN, bad)


@pytest.mark.parametrize("new", [hash_factory(name) for name in local_hashes()])
def test_hasher_holes_equal_zeros(new: object) -> None:
    size = 3 * BLOCK + 10
    data = bytearray(size)
    data[BLOCK + 5] = 7
    read = BlockHasher(new)  # type: ignore[arg-type]
    for off in range(0, size, BLOCK):
        read.update(data[off : off + BLOCK])
    skipped = BlockHasher(new)  # type: ignore[arg-type]
    skipped.zeros_until(BLOCK)
    skipped.update(data[BLOCK : 2 * BLOCK])
    skipped.zeros_until(size)
    assert read.digest() == skipped.digest()
    assert len(read.digest()) == 32
    other = BlockHasher(new)  # type: ignore[arg-type]
    other.zeros_until(size)
    assert other.digest() != read.digest()


def test_hasher_prefix_and_copy() -> None:
    hasher = BlockHasher(hashlib.sha256)
    hasher.update(b"a" * BLOCK)
    prefix = hasher.copy()
    hasher.update(b"b")
    assert prefix.offset == BLOCK and prefix.digest() != hasher.digest()
    again = BlockHasher(hashlib.sha256)
    again.update(b"a" * BLOCK)
    assert again.digest() == prefix.digest()


def test_machine_orders() -> None:
    receiver = Machine("receive")
    for rtype in (Rec.HELLO, Rec.OFFER, Rec.FILE, Rec.DATA, Rec.END, Rec.DONE):
        receiver.check(rtype)
    assert receiver.state is State.CLOSED
    receiver = Machine("receive")
    receiver.check(Rec.HELLO)
    with pytest.raises(TransferProtocolError, match="DATA while offer"):
        receiver.check(Rec.DATA)
    assert receiver.state is State.ERROR
    coded = Machine("receive")
    coded.check(Rec.HELLO)
    coded.use_code()
    with pytest.raises(TransferProtocolError):
        coded.check(Rec.OFFER)  # no offer before the code is confirmed
    sender = Machine("send")
    for rtype in (Rec.HELLO, Rec.PLAN, Rec.REPORT):
        sender.check(rtype)
    assert sender.check(Rec.ERROR) is State.ERROR


def test_data_check_lying_sizes() -> None:
    check = DataCheck("f", 2 * BLOCK + 5, 0)
    assert check.block(0, BLOCK) == 0
    with pytest.raises(TransferProtocolError, match="not the next block"):
        check.block(0, BLOCK)  # replayed
    with pytest.raises(TransferProtocolError, match="not the next block"):
        DataCheck("f", 10 * BLOCK, 0).block(5, 10)  # unaligned
    with pytest.raises(TransferProtocolError, match="more than it announced"):
        DataCheck("f", 10, 0).block(0, 11)
    with pytest.raises(TransferProtocolError, match="more than it announced"):
        DataCheck("f", BLOCK, 0).block(BLOCK, 1)
    assert DataCheck("f", 3 * BLOCK, 0).block(2 * BLOCK, BLOCK) == 2  # two holes skipped


def _pair(code_a: str, code_b: str) -> tuple[Pake, Pake, bytes, bytes]:
    sender, receiver = Pake(code_a, "send"), Pake(code_b, "receive")
    msg_s, msg_r = sender.start(), receiver.start()
    hellos = b"hello-s" + b"hello-r"
    conf_s = sender.finish(msg_r, hellos)
    conf_r = receiver.finish(msg_s, hellos)
    return sender, receiver, conf_s, conf_r


def test_pake_same_code_gives_working_ciphers() -> None:
    sender, receiver, conf_s, conf_r = _pair("7-a-b-c", " 7-a-b-c ")
    s_out, s_in = sender.verify(conf_r)
    r_out, r_in = receiver.verify(conf_s)
    header = pack_header(Rec.DATA, 5 + 16)
    sealed = s_out.seal(header, b"hello")
    assert sealed[:5] != b"hello"
    assert r_in.open(header, sealed) == b"hello"
    assert s_in.open(header, r_out.seal(header, b"back")) == b"back"


def test_pake_wrong_code_fails_both_sides() -> None:
    sender, receiver, conf_s, conf_r = _pair("7-a-b-c", "7-a-b-d")
    with pytest.raises(CodeMismatch, match="code phrase does not match"):
        sender.verify(conf_r)
    with pytest.raises(CodeMismatch):
        receiver.verify(conf_s)


def test_cipher_detects_tampering_and_replay() -> None:
    key = bytes(32)
    out, into = RecordCipher(key), RecordCipher(key)
    header = pack_header(Rec.DATA, 3 + 16)
    sealed = bytearray(out.seal(header, b"abc"))
    sealed[0] ^= 1
    with pytest.raises(TransferProtocolError, match="altered"):
        into.open(header, bytes(sealed))
    out2, into2 = RecordCipher(key), RecordCipher(key)
    first = out2.seal(header, b"abc")
    assert into2.open(header, first) == b"abc"
    with pytest.raises(TransferProtocolError):
        into2.open(header, first)  # replayed: the counter moved on


def test_generated_codes() -> None:
    codes = {generate_code() for _ in range(20)}
    assert len(codes) == 20
    number, *words = next(iter(codes)).split("-")
    assert number.isdigit() and len(words) == 3


def test_public_api() -> None:
    import opensocket.transfer as transfer

    assert sorted(transfer.__all__) == sorted(
        [
            "CodeMismatch", "DiskFull", "FileResult", "NoProgress", "Options", "PathRefused",
            "PeerFailed", "Progress", "TransferError", "TransferProtocolError",
            "TransferSummary", "generate_code", "receive", "scan", "send",
        ]
    )  # fmt: skip
    for name in transfer.__all__:
        assert getattr(transfer, name) is not None
    assert issubclass(transfer.CodeMismatch, ProtocolError)
    assert issubclass(transfer.DiskFull, OSError)


def test_docs_vector_matches() -> None:
    # The same bytes are written out in the protocol docs (docs-transfer.md, "Test vector").
    assert pack_header(Rec.DATA, BLOCK, 1 << 32, FLAG_ZSTD) == bytes.fromhex(
        "07010000001000000000000100000000"
    )
