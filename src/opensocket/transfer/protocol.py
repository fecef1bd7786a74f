"""The file-transfer protocol, sans-IO: records, messages, the jail for names, the hash scheme,
and the state machine that checks the order of records on both sides.

A connection carries records. Each has a 16-byte header (``!BBHIQ``: type, flags, reserved
zero, payload length, argument) and a payload. Control payloads are UTF-8 JSON objects;
DATA payloads are one block of file bytes (``arg`` = the file offset); END payloads are the
32-byte file digest. Once a code phrase has been confirmed every payload is sealed with an
AEAD (see ``crypto``) and the header is its associated data.

Nothing here touches sockets, files or clocks: the runtime reads a header, asks
``parse_header`` how long the payload is, reads it into its own buffer, and hands header and
payload to ``Machine.check`` (order) and the helpers (content).
"""

from __future__ import annotations

import enum
import json
import struct
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from ..errors import PathRefused, TransferProtocolError

__all__ = [
    "BLOCK",
    "HEADER",
    "MAX_CONTROL",
    "MAX_EARLY",
    "VERSION",
    "BlockHasher",
    "Entry",
    "Header",
    "Machine",
    "Rec",
    "State",
    "check_name",
    "decode_json",
    "encode_json",
    "pack_header",
    "parse_header",
]

VERSION: Final = 1
BLOCK: Final = 1 << 20  # bytes per DATA record; every block but a file's last is this long
HEADER: Final = struct.Struct("!BBHIQ")
MAX_CONTROL: Final = 64 << 20  # an OFFER for ~300k files
# records a peer may send before it has proved the code phrase: a stranger gets this much at most
MAX_EARLY: Final = 64 << 10
_EARLY: Final = frozenset({1, 2, 3, 11})  # HELLO, PAKE, CONFIRM, ERROR
MAX_DATA: Final = BLOCK + 4096  # a block, or its compressed form, plus an AEAD tag
FLAG_ZSTD: Final = 1
MAX_NAME: Final = 255
MAX_PATH: Final = 4096
DIGEST_SIZE: Final = 32


class Rec(enum.IntEnum):
    """Record types."""

    HELLO = 1
    PAKE = 2
    CONFIRM = 3
    OFFER = 4
    PLAN = 5
    FILE = 6
    DATA = 7
    END = 8
    DONE = 9
    REPORT = 10
    ERROR = 11


class Header(NamedTuple):
    """A decoded record header."""

    type: Rec
    flags: int
    length: int
    arg: int


def pack_header(rtype: Rec, length: int, arg: int = 0, flags: int = 0) -> bytes:
    """The 16 header bytes of a record."""
    return HEADER.pack(rtype, flags, 0, length, arg)


def parse_header(data: bytes | bytearray | memoryview) -> Header:
    """Decode and check a header: known type, reserved zero, payload within the type's limit."""
    code, flags, reserved, length, arg = HEADER.unpack(data)
    try:
        rtype = Rec(code)
    except ValueError:
        raise TransferProtocolError(
            f"unknown record type {code}: is the peer opensocket?"
        ) from None
    if reserved:
        raise TransferProtocolError(f"record {rtype.name}: reserved bytes are not zero")
    if rtype in (Rec.DATA, Rec.END):
        limit = MAX_DATA
    else:
        limit = MAX_EARLY if code in _EARLY else MAX_CONTROL
    if length > limit:
        raise TransferProtocolError(f"record {rtype.name} of {length} bytes (limit {limit})")
    if flags & ~FLAG_ZSTD or (flags and rtype is not Rec.DATA):
        raise TransferProtocolError(f"record {rtype.name}: unknown flags {flags:#x}")
    return Header(rtype, flags, length, arg)


def encode_json(obj: dict[str, Any]) -> bytes:
    """A control payload: compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def decode_json(rtype: Rec, payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Parse a control payload; TransferProtocolError unless it is a JSON object."""
    try:
        obj = json.loads(bytes(payload).decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise TransferProtocolError(f"record {rtype.name} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise TransferProtocolError(f"record {rtype.name} is not a JSON object")
    return obj


def field(obj: dict[str, Any], name: str, kind: type, what: str) -> Any:
    """``obj[name]``, checked to be of ``kind`` (bool is not an int here)."""
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TransferProtocolError(f"{what}: field {name!r} missing or not {kind.__name__}")
    if isinstance(value, int) and not 0 <= value < 1 << 63:
        raise TransferProtocolError(f"{what}: field {name!r} out of range ({value})")
    return value


# ---- names: the receiver's jail, first line ---------------------------------------------------


def check_name(path: object) -> str:
    """Return ``path`` if it is a safe relative path; PathRefused saying why otherwise.

    Safe: a non-empty str of '/'-separated components, none empty, ``.`` or ``..``, no NUL,
    backslash or control character, no component over 255 UTF-8 bytes. The file system
    operations (``O_NOFOLLOW`` at every step) are the second line, against symlinks.
    """
    if not isinstance(path, str) or not path:
        raise PathRefused(f"refused an empty or non-text path from the sender: {path!r}")
    if path.startswith("/"):
        raise PathRefused(f"refused an absolute path from the sender: {path!r}")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise PathRefused(f"refused a path longer than {MAX_PATH} bytes from the sender")
    for part in path.split("/"):
        _check_component(path, part)
    return path


def _check_component(path: str, part: str) -> None:
    if part in ("", ".", ".."):
        raise PathRefused(f"refused the path {path!r} from the sender: it has a {part!r} step")
    if "\\" in part or any(unicodedata.category(c) in ("Cc", "Cs") for c in part):
        raise PathRefused(
            f"refused the path {path!r} from the sender: NUL, control characters, "
            "backslashes and invalid UTF-8 are not allowed in names"
        )
    if len(part.encode()) > MAX_NAME:
        raise PathRefused(f"refused the path {path!r}: a name is longer than {MAX_NAME} bytes")


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of an OFFER: a file or a folder, relative to what is sent."""

    path: str
    kind: str  # "file" or "dir"
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0o644
    alloc: int = 0  # bytes allocated on the sender's disk (sparse files: less than size)

    def to_json(self) -> dict[str, Any]:
        """The entry as it goes into an OFFER."""
        return {
            "path": self.path,
            "kind": self.kind,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "mode": self.mode,
            "alloc": self.alloc,
        }

    @classmethod
    def from_json(cls, obj: object) -> Entry:
        """Check one OFFER item: the jail for its path, types and ranges for the rest."""
        if not isinstance(obj, dict):
            raise TransferProtocolError("an OFFER item is not a JSON object")
        path = check_name(obj.get("path"))
        kind = obj.get("kind")
        if kind not in ("file", "dir"):
            raise PathRefused(
                f"refused {path!r}: the sender offers a {kind!r}; only regular files and "
                "folders are accepted (no devices, fifos, sockets or symlinks)"
            )
        what = f"OFFER item {path!r}"
        return cls(
            path,
            kind,
            field(obj, "size", int, what),
            field(obj, "mtime_ns", int, what),
            field(obj, "mode", int, what) & 0o777,  # never setuid/setgid/sticky from a peer
            field(obj, "alloc", int, what),
        )


def parse_offer(obj: dict[str, Any]) -> list[Entry]:
    """The entries of an OFFER, each checked; duplicates and files under files refused."""
    items = obj.get("entries")
    if not isinstance(items, list):
        raise TransferProtocolError("OFFER: 'entries' missing or not a list")
    entries = [Entry.from_json(item) for item in items]
    kinds: dict[str, str] = {}
    for entry in entries:
        if entry.path in kinds:
            raise PathRefused(f"refused the OFFER: {entry.path!r} appears twice")
        kinds[entry.path] = entry.kind
    for entry in entries:
        parent = entry.path.rpartition("/")[0]
        while parent:
            if kinds.get(parent) == "file":
                raise PathRefused(
                    f"refused the OFFER: {entry.path!r} is inside the file {parent!r}"
                )
            parent = parent.rpartition("/")[0]
    return entries


# ---- the hash scheme --------------------------------------------------------------------------


class BlockHasher:
    """The file digest: H(block digests in order || b"size" || size as u64).

    A block is ``BLOCK`` bytes (the last may be shorter); its digest is H(block). An all-zero
    block has a constant digest, so holes of sparse files are hashed without reading them, and
    a prefix digest (for resume) is the same formula with the prefix length.
    ``new`` makes a hash object (blake3.blake3 or hashlib.sha256).
    """

    def __init__(self, new: Callable[[], Any]) -> None:
        self._new = new
        self._outer = new()
        self._zero: bytes = _zero_digest(new)
        self.offset = 0

    def update(self, block: bytes | bytearray | memoryview) -> None:
        """Add the next block (full length unless it is the file's last)."""
        inner = self._new()
        inner.update(block)
        self._outer.update(inner.digest())
        self.offset += len(block)

    def skip_zero_blocks(self, count: int) -> None:
        """Add ``count`` full all-zero blocks (a hole) without hashing their bytes."""
        self._outer.update(self._zero * count)
        self.offset += count * BLOCK

    def zeros_until(self, end: int) -> None:
        """Add zeros from ``offset`` to ``end`` (holes, and a file's zero tail)."""
        self.skip_zero_blocks((end - self.offset) // BLOCK)
        if end > self.offset:
            self.update(bytes(end - self.offset))

    def digest(self) -> bytes:
        """The digest of everything added so far, as a file of ``offset`` bytes."""
        outer = self._outer.copy()
        outer.update(b"size" + self.offset.to_bytes(8, "big"))
        return bytes(outer.digest())

    def copy(self) -> BlockHasher:
        """An independent copy (the state at a resume point)."""
        other = BlockHasher.__new__(BlockHasher)
        other._new, other._outer, other._zero = self._new, self._outer.copy(), self._zero
        other.offset = self.offset
        return other


_ZERO_CACHE: dict[Callable[[], Any], bytes] = {}


def _zero_digest(new: Callable[[], Any]) -> bytes:
    if new not in _ZERO_CACHE:
        inner = new()
        inner.update(bytes(BLOCK))
        _ZERO_CACHE[new] = bytes(inner.digest())
    return _ZERO_CACHE[new]


# ---- the state machine ------------------------------------------------------------------------


class State(enum.Enum):
    """Where a connection is, the same names on both sides."""

    HELLO = "hello"  # HELLO expected
    PAKE = "pake"  # PAKE expected (code phrase)
    CONFIRM = "confirm"  # CONFIRM expected
    OFFER = "offer"  # receiver: OFFER expected
    PLAN = "plan"  # sender: PLAN expected
    FILES = "files"  # receiver: FILE or DONE expected
    DATA = "data"  # receiver: DATA or END expected
    REPORT = "report"  # sender: REPORT expected
    CLOSED = "closed"
    ERROR = "error"


# (role, state, record) -> next state; ERROR records are accepted in every state.
_RECEIVER: Final = {
    (State.HELLO, Rec.HELLO): State.OFFER,
    (State.PAKE, Rec.PAKE): State.CONFIRM,
    (State.CONFIRM, Rec.CONFIRM): State.OFFER,
    (State.OFFER, Rec.OFFER): State.FILES,
    (State.FILES, Rec.FILE): State.DATA,
    (State.FILES, Rec.DONE): State.CLOSED,
    (State.DATA, Rec.DATA): State.DATA,
    (State.DATA, Rec.END): State.FILES,
}
_SENDER: Final = {
    (State.HELLO, Rec.HELLO): State.PLAN,
    (State.PAKE, Rec.PAKE): State.CONFIRM,
    (State.CONFIRM, Rec.CONFIRM): State.PLAN,
    (State.PLAN, Rec.PLAN): State.REPORT,
    (State.REPORT, Rec.REPORT): State.CLOSED,
}


class Machine:
    """Checks that records arrive in an allowed order; any violation is terminal."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.state = State.HELLO
        self._table = _RECEIVER if role == "receive" else _SENDER

    def use_code(self) -> None:
        """After HELLO, a code phrase means PAKE and CONFIRM come first."""
        if self.state in (State.OFFER, State.PLAN):
            self.state = State.PAKE

    def check(self, rtype: Rec) -> State:
        """Move on for ``rtype``; TransferProtocolError if it is not allowed now."""
        if rtype is Rec.ERROR:
            self.state = State.ERROR
            return self.state
        nxt = self._table.get((self.state, rtype))
        if nxt is None:
            old, self.state = self.state, State.ERROR
            raise TransferProtocolError(
                f"the peer sent {rtype.name} while {old.value} was expected"
            )
        self.state = nxt
        return nxt


class DataCheck:
    """The receiver's checks on a file's DATA records: aligned, increasing, within the size."""

    def __init__(self, path: str, size: int, start: int) -> None:
        self.path, self.size, self.next = path, size, start

    def block(self, offset: int, length: int) -> int:
        """Check one DATA block; return how many whole zero blocks (a hole) it skipped."""
        if offset % BLOCK or offset < self.next:
            raise TransferProtocolError(
                f"{self.path}: DATA at offset {offset} is not the next block (>= {self.next})"
            )
        want = min(BLOCK, self.size - offset)
        if offset >= self.size or length != want:
            raise TransferProtocolError(
                f"{self.path}: DATA of {length} bytes at offset {offset} does not fit the "
                f"announced size {self.size}: the sender sent more than it announced"
            )
        holes = (offset - self.next) // BLOCK
        self.next = offset + length
        return holes

    def end(self) -> int:
        """At END: how many zero blocks (and a zero tail) remain; the size is now reached."""
        rest = self.size - self.next
        self.next = self.size
        return rest


def iter_blocks(start: int, size: int) -> Iterable[tuple[int, int]]:
    """(offset, length) of every block from ``start`` (a block boundary) to ``size``."""
    for offset in range(start, size, BLOCK):
        yield offset, min(BLOCK, size - offset)
