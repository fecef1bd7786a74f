"""The sending side (blocking runtime): list the files, offer them, stream what the plan asks."""

from __future__ import annotations

import logging
import os
import queue
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..address import Address
from ..errors import OpenSocketError, PeerFailed, TransferError, TransferProtocolError
from ..options import TLSOptions
from ._common import (
    FileResult,
    NoProgress,
    Options,
    Progress,
    TransferSummary,
    Worker,
    data_extent,
    hash_prefix,
)
from ._link import Link, hash_factory, local_hashes, open_link, opening
from .protocol import BLOCK, FLAG_ZSTD, BlockHasher, Entry, Machine, Rec, decode_json, field

__all__ = ["Source", "scan", "send"]

log = logging.getLogger("opensocket.transfer")
_BUFFERS = 4  # blocks read ahead of the socket


@dataclass(frozen=True)
class Source:
    """An entry to offer and where it is on this machine."""

    entry: Entry
    local: str


def _entry(path: str, rel: str, st: os.stat_result) -> Entry:
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
    size = st.st_size if kind == "file" else 0
    alloc = min(size, st.st_blocks * 512)
    return Entry(rel, kind, size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), alloc)


Skip = Callable[[str, str, str], None]  # (local path, name offered, why)


def _usable(local: str, rel: str, st: os.stat_result, skip: Skip) -> bool:
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        skip(local, rel, "not a regular file or folder")
        return False
    try:
        rel.encode()
    except UnicodeEncodeError:
        skip(local, rel, "its name is not valid UTF-8")
        return False
    return True


def scan(
    paths: Sequence[str],
    warn: Callable[[str], None] = log.warning,
    skipped: list[FileResult] | None = None,
) -> list[Source]:
    """Files and folders under ``paths`` (recursively), named relative to each path's parent.

    Symlinks inside folders, devices, fifos and sockets are skipped with a warning (and a
    "skipped" result appended to ``skipped``); a path given on the command line is followed
    if it is a symlink.
    """

    def skip(local: str, rel: str, why: str) -> None:
        warn(f"skipped {local}: {why}")
        if skipped is not None:
            skipped.append(FileResult(rel, "skipped", error=why))

    sources: list[Source] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise TransferError(f"cannot read {path}: {exc.strerror or exc}") from exc
        base = os.path.basename(os.path.normpath(os.path.abspath(path)))
        if _usable(path, base, st, skip):
            sources.append(Source(_entry(path, base, st), path))
        if stat.S_ISDIR(st.st_mode):
            sources.extend(_walk(path, base, skip))
    return sources


def _walk(top: str, base: str, skip: Skip) -> list[Source]:
    found: list[Source] = []

    def named(local: str) -> str:
        # relpath, not slicing: "photos/" or "photos//" as top must not glue names together
        sub = os.path.relpath(local, top)
        return base if sub == os.curdir else "/".join([base, *sub.split(os.sep)])

    def unreadable(exc: OSError) -> None:
        local = str(exc.filename)
        skip(local, named(local), exc.strerror or str(exc))

    for root, dirs, files in os.walk(top, onerror=unreadable):
        dirs.sort()
        rel_root = named(root)
        for name in [*dirs, *sorted(files)]:
            local = os.path.join(root, name)
            st = os.lstat(local)
            rel = f"{rel_root}/{name}"
            if stat.S_ISLNK(st.st_mode):
                skip(local, rel, "symlinks are not sent")
            elif _usable(local, rel, st, skip):
                found.append(Source(_entry(local, rel, st), local))
    return found


class _Sender:
    def __init__(self, link: Link, sources: list[Source], opts: Options, progress: Progress):
        self.link, self.sources, self.opts, self.progress = link, sources, opts, progress
        self.machine = Machine("send")
        self.summary = TransferSummary("send", peer=link.peer, compress=opts.compress)
        self.buf = bytearray(BLOCK)
        self.free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(_BUFFERS):
            self.free.put(bytearray(BLOCK))
        self.out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.worker = Worker("opensocket-send")
        self.cancelled = False
        self.new_hash: Any = None
        self.zstd: Any = None
        self._paced = time.monotonic()

    def run(self) -> TransferSummary:
        extra = {"hashes": local_hashes(), "compress": self.opts.compress}
        hello = opening(self.link, self.machine, "send", self.opts.code, extra)
        self._choose(hello)
        entries = [s.entry.to_json() for s in self.sources]
        self.link.send_json(Rec.OFFER, {"entries": entries, "hash": self.summary.hash})
        _, payload = self.link.recv(self.machine)
        plan = decode_json(Rec.PLAN, payload)
        self._send_files(plan)
        self.link.send_json(Rec.DONE, {})
        _, payload = self.link.recv(self.machine)
        self._report(decode_json(Rec.REPORT, payload))
        return self.summary

    def _choose(self, hello: dict[str, Any]) -> None:
        theirs = hello.get("hashes")
        common = [h for h in local_hashes() if isinstance(theirs, list) and h in theirs]
        if not common:
            raise TransferError(f"no hash algorithm in common with the receiver ({theirs!r})")
        self.summary.hash = common[0]
        self.new_hash = hash_factory(common[0])
        self.summary.encryption = self.link.encryption
        if self.opts.compress:
            import zstandard

            self.zstd = zstandard.ZstdCompressor(level=1)

    def _send_files(self, plan: dict[str, Any]) -> None:
        items = plan.get("files")
        if not isinstance(items, list):
            raise TransferProtocolError("PLAN: 'files' missing or not a list")
        todo = []
        for item in items:
            if not isinstance(item, dict):
                raise TransferProtocolError("PLAN: an item is not an object")
            index = field(item, "i", int, "PLAN item")
            if index >= len(self.sources) or self.sources[index].entry.kind != "file":
                raise TransferProtocolError(f"PLAN names no offered file: {index}")
            if item.get("action") == "send":
                todo.append((index, item))
        self.summary.folders = sum(1 for s in self.sources if s.entry.kind == "dir")
        total = sum(self.sources[i].entry.size for i, _ in todo)
        self.progress.start(len(todo), total)
        for index, item in todo:
            self._send_file(index, item)

    def _open(self, source: Source) -> int:
        try:
            return os.open(source.local, os.O_RDONLY)
        except OSError as exc:
            raise TransferError(f"cannot read {source.local}: {exc.strerror or exc}") from exc

    def _start(self, fd: int, entry: Entry, item: dict[str, Any]) -> BlockHasher:
        """The verified resume point: the receiver's prefix if our prefix hashes the same."""
        hasher = BlockHasher(self.new_hash)
        for key in ("offset", "synced"):
            offset = item.get(key)
            if not isinstance(offset, int) or not 0 < offset <= entry.size:
                continue
            if offset < hasher.offset:
                hasher = BlockHasher(self.new_hash)
            hash_prefix(fd, hasher, offset, self.buf)
            if hasher.digest().hex() == item.get(key + "_hash"):
                return hasher
        return BlockHasher(self.new_hash)

    def _send_file(self, index: int, item: dict[str, Any]) -> None:
        source = self.sources[index]
        entry = source.entry
        fd = self._open(source)
        try:
            hasher = self._start(fd, entry, item)
            start = hasher.offset
            self.summary.resumed_bytes += start
            self.summary.total_bytes += entry.size
            self.progress.file(entry.path, entry.size, start)
            self.link.send_json(Rec.FILE, {"start": start}, arg=index)
            self._stream(fd, entry, hasher)
            self.link.send(Rec.END, hasher.digest(), arg=index)
        except OpenSocketError:
            raise  # the link's own errors (some are OSErrors): not a local read failure
        except OSError as exc:
            raise TransferError(f"cannot read {source.local}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        self.summary.files.append(FileResult(entry.path, "ok", entry.size, start))
        self.progress.file_done(entry.path, True)

    def _stream(self, fd: int, entry: Entry, hasher: BlockHasher) -> None:
        """Send the file's data blocks; a worker thread reads, hashes and compresses ahead."""
        self.worker.submit(lambda: self._produce(fd, entry, hasher))
        while True:
            item = self.out.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            offset, payload, flags, length, buf = item
            if payload is None:  # a hole: nothing to send
                self.progress.advance(length)
                continue
            try:
                self.link.send(Rec.DATA, payload, arg=offset, flags=flags)
            finally:
                self.free.put(buf)
            self.summary.data_bytes += length
            # advanced once sent, not when read: the reader runs up to _BUFFERS blocks ahead
            self.progress.advance(length)
            if self.opts.rate_limit:
                self._pace(length)

    def _produce(self, fd: int, entry: Entry, hasher: BlockHasher) -> None:
        """Read, hash and compress the blocks of a file into ``out`` (in the worker thread)."""
        try:
            self._blocks(fd, entry, hasher)
        except BaseException as exc:
            self.out.put(exc)
        else:
            self.out.put(None)

    def _blocks(self, fd: int, entry: Entry, hasher: BlockHasher) -> None:
        size = entry.size
        while hasher.offset < size and not self.cancelled:
            offset = hasher.offset
            data_at = data_extent(fd, offset, size)
            if data_at >= size or data_at - offset >= BLOCK:  # a hole: not read, not sent
                hasher.zeros_until(size if data_at >= size else data_at - data_at % BLOCK)
                self.out.put((offset, None, 0, hasher.offset - offset, None))
                continue
            length = min(BLOCK, size - offset)
            buf = self.free.get()
            block = memoryview(buf)[:length]
            if os.preadv(fd, [block], offset) != length:
                self.free.put(buf)
                raise TransferError(f"{entry.path} became shorter while being sent: send again")
            hasher.update(block)
            flags, payload = self._pack(block)
            self.out.put((offset, payload, flags, length, buf))

    def _pack(self, block: memoryview) -> tuple[int, bytes | memoryview]:
        if self.zstd is not None:
            packed = self.zstd.compress(block)
            if len(packed) < len(block) * 0.9:  # else not worth the receiver's time
                return FLAG_ZSTD, packed
        return 0, block

    def stop(self) -> None:
        """Stop the reader thread (after an error it may wait for a buffer)."""
        self.cancelled = True
        for _ in range(_BUFFERS):
            self.free.put(bytearray(BLOCK))
        self.worker.stop()

    def _pace(self, count: int) -> None:
        assert self.opts.rate_limit
        self._paced = max(self._paced, time.monotonic() - 0.1) + count / self.opts.rate_limit
        delay = self._paced - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _report(self, report: dict[str, Any]) -> None:
        results = report.get("files")
        if not isinstance(results, list):
            raise TransferProtocolError("REPORT: 'files' missing or not a list")
        by_path = {r.get("path"): r for r in results if isinstance(r, dict)}
        mine = {f.path: f for f in self.summary.files}
        for path, result in by_path.items():
            status = result.get("status")
            if path in mine and status in ("failed", "skipped"):
                mine[path].status, mine[path].error = status, str(result.get("error", ""))
            elif path not in mine and status in ("failed", "skipped"):
                size = int(result.get("size", 0))
                self.summary.files.append(
                    FileResult(str(path), str(status), size, 0, str(result.get("error", "")))
                )
            elif path not in mine and status == "ok" and result.get("already_present") is True:
                size = int(result.get("size", 0))
                self.summary.files.append(FileResult(str(path), "ok", size, already_present=True))


def send(
    paths: Sequence[str],
    url: str | Address,
    *,
    listen: bool = False,
    tls: TLSOptions | None = None,
    options: Options | None = None,
    progress: Progress | None = None,
    announce: Callable[[Address], None] = lambda addr: None,
) -> TransferSummary:
    """Send files and folders to a receiver at ``url`` (or to one that connects, ``listen``)."""
    opts = options or Options()
    skipped: list[FileResult] = []
    sources = scan(paths, skipped=skipped)
    if not sources:
        raise TransferError("nothing to send: the paths given hold no regular file or folder")
    link = open_link(url, listen=listen, tls=tls, timeout=opts.timeout, announce=announce)
    sender = _Sender(link, sources, opts, progress or NoProgress())
    sender.summary.files.extend(skipped)
    try:
        return sender.run()
    except OpenSocketError as exc:
        if not isinstance(exc, PeerFailed):
            link.send_error(str(exc))
        raise
    finally:
        sender.stop()
        sender.summary.seconds = time.monotonic() - sender.summary.started
        sender.summary.wire_bytes = link.sent + link.received
        link.close()
