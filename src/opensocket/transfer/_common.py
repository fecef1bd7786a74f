"""What both runtime sides share: options, progress callbacks, the summary."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from .protocol import BLOCK, BlockHasher

__all__ = ["FileResult", "Options", "Progress", "TransferSummary", "hash_prefix"]

Job = Callable[[], None]
SEEK_DATA: Final = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE: Final = getattr(os, "SEEK_HOLE", 4)


class Progress(Protocol):
    """What a side reports while it works (the CLI draws bars; the default does nothing)."""

    def start(self, files: int, total: int) -> None:
        """The transfer begins: ``total`` bytes in ``files`` files."""

    def file(self, name: str, size: int, done: int) -> None:
        """A file begins (``done`` bytes of it are already there: resume)."""

    def advance(self, count: int) -> None:
        """``count`` more bytes of the current file are done."""

    def file_done(self, name: str, ok: bool) -> None:
        """The current file is finished."""


class NoProgress:
    """Reports nothing."""

    def start(self, files: int, total: int) -> None:
        """Nothing."""

    def file(self, name: str, size: int, done: int) -> None:
        """Nothing."""

    def advance(self, count: int) -> None:
        """Nothing."""

    def file_done(self, name: str, ok: bool) -> None:
        """Nothing."""


@dataclass(frozen=True)
class Options:
    """Settings of one transfer (both sides; each uses what applies to it)."""

    code: str | None = None
    compress: bool = False
    overwrite: bool = False
    skip_existing: bool = False
    rate_limit: float | None = None  # bytes per second, sender only (testing, shared links)
    timeout: float | None = 60.0
    sync_every: int = 256 << 20  # receiver: fdatasync and record the verified offset this often


@dataclass
class FileResult:
    """What happened to one file."""

    path: str
    status: str  # "ok", "skipped", "failed"
    size: int = 0
    resumed_from: int = 0
    error: str = ""
    already_present: bool = False  # "ok" without a transfer: an earlier run completed it

    def to_json(self) -> dict[str, Any]:
        """As it appears in REPORT and in the --json summary."""
        out: dict[str, Any] = {"path": self.path, "status": self.status, "size": self.size}
        if self.resumed_from:
            out["resumed_from"] = self.resumed_from
        if self.already_present:
            out["already_present"] = True
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class TransferSummary:
    """The outcome of a transfer, on either side."""

    role: str
    peer: str = ""
    encryption: str = "plain"
    hash: str = ""
    compress: bool = False
    files: list[FileResult] = field(default_factory=list)
    folders: int = 0
    total_bytes: int = 0  # sizes of the files transferred or resumed
    data_bytes: int = 0  # file bytes moved this time (holes and resumed prefixes excluded)
    wire_bytes: int = 0  # bytes on the wire this time, both directions
    resumed_bytes: int = 0  # bytes already at the receiver from an earlier run, not sent again
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return all(f.status != "failed" for f in self.files)

    @property
    def rate(self) -> float:
        """Data bytes per second."""
        return self.data_bytes / self.seconds if self.seconds > 0 else 0.0

    def count(self, status: str) -> int:
        """Files with this status."""
        return sum(1 for f in self.files if f.status == status)

    @property
    def present(self) -> int:
        """Files that were already complete at the receiver (counted as ok, not sent)."""
        return sum(1 for f in self.files if f.already_present)

    def to_json(self) -> dict[str, Any]:
        """The --json summary."""
        return {
            "role": self.role,
            "ok": self.ok,
            "peer": self.peer,
            "encryption": self.encryption,
            "hash": self.hash,
            "compress": self.compress,
            "files_ok": self.count("ok"),
            "files_skipped": self.count("skipped"),
            "files_failed": self.count("failed"),
            "folders": self.folders,
            "total_bytes": self.total_bytes,
            "data_bytes": self.data_bytes,
            "wire_bytes": self.wire_bytes,
            "resumed_bytes": self.resumed_bytes,
            "seconds": round(self.seconds, 6),
            "rate": round(self.rate, 1),
            "files": [f.to_json() for f in self.files],
        }


def data_extent(fd: int, offset: int, size: int) -> int:
    """Where the next data at or after ``offset`` starts (``size`` if only a hole is left)."""
    try:
        return min(os.lseek(fd, offset, SEEK_DATA), size)
    except OSError:  # ENXIO: no data after offset; EINVAL: no SEEK_DATA support
        return size if _has_seek_data(fd) else offset


def _has_seek_data(fd: int) -> bool:
    try:
        os.lseek(fd, 0, SEEK_HOLE)
    except OSError:
        return False
    return True


def hash_prefix(fd: int, hasher: BlockHasher, end: int, buf: bytearray) -> None:
    """Hash a file's first ``end`` bytes (a block boundary or its size), holes not read."""
    view = memoryview(buf)
    while hasher.offset < end:
        data_at = data_extent(fd, hasher.offset, end)
        skip = (min(data_at, end) - hasher.offset) // BLOCK
        if skip:
            hasher.skip_zero_blocks(skip)
            continue
        length = min(BLOCK, end - hasher.offset)
        got = os.preadv(fd, [view[:length]], hasher.offset)
        if got != length:
            raise OSError(0, "the file became shorter while being read")
        hasher.update(view[:length])


class Worker:
    """One background thread running jobs in order (the receiver's hashing, its writing), so
    that the socket is read while earlier blocks are hashed and written; hashing and
    ``pwrite`` release the GIL. The first error stops later jobs and is raised by the next
    ``submit`` or ``drain``. A job's ``cleanup`` runs even when the job is skipped, so the
    buffers it holds always come back (a reader waiting for one must not hang)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[tuple[Job, Job | None] | None] = queue.Queue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                self._jobs.task_done()
                return
            job, cleanup = item
            try:
                if self.error is None:
                    job()
            except BaseException as exc:  # handed to the main thread
                self.error = exc
            finally:
                if cleanup is not None:
                    cleanup()
                self._jobs.task_done()

    def submit(self, job: Job, cleanup: Job | None = None) -> None:
        """Queue a job (and what to do after it, run or skipped); raise an earlier error."""
        self._jobs.put((job, cleanup))
        self.check()

    def drain(self) -> None:
        """Wait until every queued job ran; raise the first error."""
        self._jobs.join()
        self.check()

    def check(self) -> None:
        """Raise the error of an earlier job."""
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Finish queued jobs and end the thread."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()


class Release:
    """Gives a buffer back to its pool once ``users`` jobs are done with it."""

    def __init__(self, pool: queue.SimpleQueue[bytearray], buf: bytearray, users: int) -> None:
        self._pool, self._buf, self._users = pool, buf, users
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self._pool.put(self._buf)
