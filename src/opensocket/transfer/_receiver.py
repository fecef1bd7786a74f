"""The receiving side (blocking runtime): check the offer, plan (conflicts, resume, free space),
write verified files atomically inside the destination jail."""

from __future__ import annotations

import contextlib
import errno
import hmac
import os
import queue
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..address import Address
from ..errors import (
    ConnectionClosedError,
    DiskFull,
    OpenSocketError,
    PeerFailed,
    TransferError,
    TransferProtocolError,
)
from ..options import TLSOptions
from ._common import (
    FileResult,
    NoProgress,
    Options,
    Progress,
    Release,
    TransferSummary,
    Worker,
    hash_prefix,
)
from ._jail import Jail, part_names
from ._link import Link, hash_factory, local_hashes, open_link, opening
from .protocol import (
    BLOCK,
    FLAG_ZSTD,
    MAX_DATA,
    BlockHasher,
    DataCheck,
    Entry,
    Machine,
    Rec,
    decode_json,
    parse_offer,
)
from .protocol import field as get_field

__all__ = ["receive"]

_BUFFERS = 6  # blocks in flight between the socket reader and the hash and write threads


@dataclass
class _Plan:
    """What the receiver decided for one offered file."""

    index: int
    entry: Entry
    action: str  # "send", "present", "skip", "refuse" ("missing": planned, never sent)
    error: str = ""
    offset: int = 0
    resume: dict[int, BlockHasher] = field(default_factory=dict)  # offset -> prefix hasher

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"i": self.index, "action": self.action}
        if self.error:
            out["error"] = self.error
        for key, offset in zip(
            ("offset", "synced"), sorted(self.resume, reverse=True), strict=False
        ):
            out[key] = offset
            out[key + "_hash"] = self.resume[offset].digest().hex()
        return out


def _same(st: os.stat_result, entry: Entry) -> bool:
    """A regular file with the offered size and modification time (to the nanosecond)."""
    return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (
        entry.size,
        entry.mtime_ns,
    )


class _Current:
    """The file being received."""

    def __init__(self, plan: _Plan, fd: int, dir_fd: int, hasher: BlockHasher, root: str) -> None:
        self.plan, self.fd, self.dir_fd, self.hasher = plan, fd, dir_fd, hasher
        folder, _, name = plan.entry.path.rpartition("/")
        self.part, self.state = part_names(name)
        # for messages: the hidden partial file with its folder, where a person can find it
        self.shown = (
            os.path.join(root, *folder.split("/"), self.part)
            if folder
            else (os.path.join(root, self.part))
        )
        self.check = DataCheck(plan.entry.path, plan.entry.size, hasher.offset)
        self.synced = self.start = hasher.offset


class _Receiver:
    def __init__(self, link: Link, jail: Jail, opts: Options, progress: Progress) -> None:
        self.link, self.jail, self.opts, self.progress = link, jail, opts, progress
        self.machine = Machine("receive")
        self.summary = TransferSummary("receive", peer=link.peer)
        self.buf = bytearray(MAX_DATA)
        self.free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(_BUFFERS):
            self.free.put(bytearray(MAX_DATA))
        # hashing and writing each take about half of a block's time and both release the
        # GIL: two threads run them side by side (one thread doing both was the bottleneck)
        self.hashing = Worker("opensocket-hash")
        self.writing = Worker("opensocket-write")
        self.new_hash: Any = None
        self.zstd: Any = None
        self.plans: dict[int, _Plan] = {}
        self.dirs: list[Entry] = []
        self.current: _Current | None = None
        self.last_index = -1
        self.started: set[int] = set()

    # -- opening and plan ----------------------------------------------------------------------

    def run(self) -> TransferSummary:
        hello = opening(
            self.link, self.machine, "receive", self.opts.code, {"hashes": local_hashes()}
        )
        self.summary.encryption = self.link.encryption
        self.summary.compress = hello.get("compress") is True
        head, payload = self.link.recv(self.machine)
        offer = decode_json(head.type, payload)
        entries = parse_offer(offer)
        self._algorithm(offer)
        self._plan(entries)
        self._check_space()
        self._make_folders()
        files = [p.to_json() for p in self.plans.values()]
        self.link.send_json(Rec.PLAN, {"files": files})
        self.progress.start(
            sum(1 for p in self.plans.values() if p.action == "send"),
            sum(p.entry.size for p in self.plans.values() if p.action == "send"),
        )
        self._records()
        return self.summary

    def _algorithm(self, offer: dict[str, Any]) -> None:
        name = offer.get("hash")
        if name not in local_hashes():
            raise TransferProtocolError(f"the sender chose a hash this side lacks: {name!r}")
        self.summary.hash = str(name)
        self.new_hash = hash_factory(str(name))

    def _plan(self, entries: list[Entry]) -> None:
        for index, entry in enumerate(entries):
            if entry.kind == "dir":
                self.dirs.append(entry)
            else:
                self.plans[index] = self._plan_file(index, entry)
        self.summary.folders = len(self.dirs)

    def _plan_file(self, index: int, entry: Entry) -> _Plan:
        parent, _, name = entry.path.rpartition("/")
        dir_fd = self.jail.folder(parent, create=False)
        if dir_fd is None:
            return _Plan(index, entry, "send")
        existing = self.jail.lstat(dir_fd, name)
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                return _Plan(index, entry, "refuse", f"{entry.path} exists and is a folder")
            if _same(existing, entry) and not self.opts.overwrite:
                # a completed transfer keeps the sender's size and mtime: an earlier run of
                # the same command already delivered it (resume of a multi-file transfer)
                return _Plan(index, entry, "present")
            if self.opts.skip_existing:
                return _Plan(index, entry, "skip", "exists (--skip-existing)")
            if not self.opts.overwrite:
                return _Plan(
                    index,
                    entry,
                    "refuse",
                    f"{entry.path} already exists at the receiver and differs: run the "
                    "receiver with --overwrite to replace it (or --skip-existing to keep it)",
                )
        plan = _Plan(index, entry, "send")
        self._resume_points(plan, dir_fd, name)
        return plan

    def _resume_points(self, plan: _Plan, dir_fd: int, name: str) -> None:
        """Hash a kept partial file's prefix (and its last synced one) for the sender to check."""
        part, state_name = part_names(name)
        state = self.jail.read_state(dir_fd, state_name)
        entry = plan.entry
        if state is None or (state.get("size"), state.get("mtime_ns"), state.get("hash")) != (
            entry.size,
            entry.mtime_ns,
            self.summary.hash,
        ):
            return  # no partial, or from another version of the file: start over
        try:
            fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return
        try:
            have = os.fstat(fd).st_size
            offset = entry.size if have >= entry.size else have - have % BLOCK
            synced = state.get("synced")
            hasher = BlockHasher(self.new_hash)
            if isinstance(synced, int) and 0 < synced < offset and synced % BLOCK == 0:
                hash_prefix(fd, hasher, synced, self.buf)
                plan.resume[synced] = hasher.copy()
            if offset > 0:
                hash_prefix(fd, hasher, offset, self.buf)
                plan.resume[offset] = hasher
                plan.offset = offset
        finally:
            os.close(fd)

    def _check_space(self) -> None:
        need = sum(
            max(0, min(p.entry.size, p.entry.alloc) - p.offset)
            for p in self.plans.values()
            if p.action == "send"
        )
        free = shutil.disk_usage(self.jail.root).free
        if need > free:
            raise DiskFull(
                errno.ENOSPC,
                f"not enough free space in {self.jail.root}: the files need {need} bytes, "
                f"{free} are free; free some space (or choose another --dir) and run again",
            )

    def _make_folders(self) -> None:
        for entry in self.dirs:
            self.jail.folder(entry.path, create=True)
        for plan in self.plans.values():
            if plan.action == "send":
                self.jail.folder(plan.entry.path.rpartition("/")[0], create=True)

    # -- records -------------------------------------------------------------------------------

    def _records(self) -> None:
        while True:
            buf = self.free.get()
            head, payload = self.link.recv(self.machine, buf)
            if head.type is Rec.DATA:
                self._queue(buf, head.arg, head.flags, payload)
                continue
            self.free.put(buf)
            if head.type is Rec.FILE:
                self._file(head.arg, decode_json(head.type, payload))
            elif head.type is Rec.END:
                self._end(bytes(payload))
            else:  # DONE: the machine allows nothing else here
                self._finish()
                return

    def _file(self, index: int, obj: dict[str, Any]) -> None:
        plan = self.plans.get(index)
        if plan is None or plan.action != "send" or index <= self.last_index:
            raise TransferProtocolError(f"FILE {index} was not planned to be sent now")
        self.last_index = index
        self.started.add(index)
        start = get_field(obj, "start", int, "FILE")
        hasher = plan.resume.get(start) if start else BlockHasher(self.new_hash)
        if hasher is None:
            raise TransferProtocolError(f"FILE {index} starts at {start}, not a resume point")
        parent, _, name = plan.entry.path.rpartition("/")
        dir_fd = self.jail.folder(parent, create=True)
        assert dir_fd is not None
        part, state = part_names(name)
        fd = self.jail.open_part(dir_fd, part)
        os.ftruncate(fd, start)
        entry = plan.entry
        self.jail.write_state(
            dir_fd,
            state,
            {"v": 1, "size": entry.size, "mtime_ns": entry.mtime_ns, "hash": self.summary.hash}
            | {"synced": start},
        )
        self.current = _Current(plan, fd, dir_fd, hasher, self.jail.root)
        self.summary.resumed_bytes += start
        self.summary.total_bytes += entry.size
        self.progress.file(entry.path, entry.size, start)

    def _queue(self, buf: bytearray, offset: int, flags: int, payload: memoryview) -> None:
        """Check a DATA block here, then hash it and write it in the two worker threads."""
        cur = self.current
        assert cur is not None  # the machine allows DATA only after FILE
        try:
            block = self._unpack(flags, payload)
            before = cur.check.next
            cur.check.block(offset, len(block))
        except BaseException:
            self.free.put(buf)
            raise
        advance = cur.check.next - before
        release = Release(self.free, buf, 2)
        try:
            self.hashing.submit(lambda: self._hash(cur, offset, block), release)
        finally:  # queued even then: its cleanup is the buffer's second release
            self.writing.submit(lambda: self._store(cur, offset, block, advance), release)

    @staticmethod
    def _hash(cur: _Current, offset: int, block: memoryview) -> None:
        """Hash one block (in the hash thread), the holes before it as zero blocks."""
        cur.hasher.zeros_until(offset)
        cur.hasher.update(block)

    def _store(self, cur: _Current, offset: int, block: memoryview, advance: int) -> None:
        """Write one block (in the write thread); sync and record the offset now and then."""
        self._write(cur, block, offset)
        self.summary.data_bytes += len(block)
        self.progress.advance(advance)
        end = offset + len(block)
        if end - cur.synced >= self.opts.sync_every:
            self._sync(cur, end)

    def _unpack(self, flags: int, payload: memoryview) -> memoryview:
        if not flags & FLAG_ZSTD:
            return payload
        if self.zstd is None:
            import zstandard

            self.zstd = zstandard.ZstdDecompressor()
        try:
            return memoryview(self.zstd.decompress(payload, max_output_size=BLOCK))
        except Exception as exc:  # zstandard.ZstdError and friends
            raise TransferProtocolError(f"a compressed block does not decompress: {exc}") from exc

    def _write(self, cur: _Current, block: memoryview, offset: int) -> None:
        try:
            done = 0
            while done < len(block):
                done += os.pwrite(cur.fd, block[done:], offset + done)
        except OSError as exc:
            os.ftruncate(cur.fd, offset)  # keep whole blocks only: the resume point
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(
                    exc.errno,
                    f"no space left in {self.jail.root} while writing {cur.plan.entry.path}: "
                    f"the first {offset} bytes are kept in {cur.shown}; free some space and run "
                    "the same command again to resume",
                ) from exc
            raise TransferError(
                f"cannot write {cur.plan.entry.path}: {exc.strerror or exc}"
            ) from exc

    def _sync(self, cur: _Current, end: int) -> None:
        os.fdatasync(cur.fd)
        cur.synced = end
        entry = cur.plan.entry
        state = {"v": 1, "size": entry.size, "mtime_ns": entry.mtime_ns, "hash": self.summary.hash}
        self.jail.write_state(cur.dir_fd, cur.state, state | {"synced": cur.synced})

    def _drain(self) -> None:
        self.writing.drain()
        self.hashing.drain()

    def _end(self, digest: bytes) -> None:
        self._drain()
        cur = self.current
        assert cur is not None
        self.current = None
        entry = cur.plan.entry
        before = cur.check.next
        cur.check.end()
        self.progress.advance(entry.size - before)
        cur.hasher.zeros_until(entry.size)
        if not hmac.compare_digest(cur.hasher.digest(), digest):
            os.close(cur.fd)
            self.jail.remove(cur.dir_fd, cur.part, cur.state)
            error = (
                f"{entry.path}: the received data does not match the sender's hash (corrupted "
                "in transit?); the file was not kept: send it again"
            )
            self.summary.files.append(FileResult(entry.path, "failed", entry.size, error=error))
            self.progress.file_done(entry.path, False)
            return
        self._complete(cur)

    def _complete(self, cur: _Current) -> None:
        entry, name = cur.plan.entry, cur.plan.entry.path.rpartition("/")[2]
        try:
            os.ftruncate(cur.fd, entry.size)  # a hole at the end stays a hole
            os.fchmod(cur.fd, entry.mode)
            os.utime(cur.fd, ns=(entry.mtime_ns, entry.mtime_ns))
            os.fsync(cur.fd)
        finally:
            os.close(cur.fd)
        try:
            self.jail.publish(cur.dir_fd, cur.part, name, overwrite=self.opts.overwrite)
        except FileExistsError:
            error = f"{entry.path} appeared at the receiver meanwhile; kept in {cur.shown}"
            self.summary.files.append(FileResult(entry.path, "failed", entry.size, error=error))
            return
        self.jail.remove(cur.dir_fd, cur.state)
        self.summary.files.append(FileResult(entry.path, "ok", entry.size, cur.start))
        self.progress.file_done(entry.path, True)

    def _finish(self) -> None:
        self._drain()
        for index, plan in self.plans.items():
            if plan.action == "send" and index not in self.started:
                plan.action = "missing"
                plan.error = f"{plan.entry.path}: the sender did not send it"
            if plan.action == "present":
                self.summary.files.append(
                    FileResult(plan.entry.path, "ok", plan.entry.size, already_present=True)
                )
            elif plan.action != "send":
                status = "skipped" if plan.action == "skip" else "failed"
                self.summary.files.append(
                    FileResult(plan.entry.path, status, plan.entry.size, error=plan.error)
                )
        for entry in sorted(self.dirs, key=lambda e: e.path.count("/"), reverse=True):
            fd = self.jail.folder(entry.path, create=False)
            if fd is not None:
                os.fchmod(fd, entry.mode)
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        report = {"files": [f.to_json() for f in self.summary.files]}
        self.link.send_json(Rec.REPORT, report)

    def abandon(self) -> str:
        """Close the current partial file (kept for a resume); say where it is."""
        with contextlib.suppress(BaseException):
            self.writing.drain()  # what arrived is written before the partial file is closed
        self.writing.stop()
        self.hashing.stop()
        cur, self.current = self.current, None
        if cur is None:
            return ""
        os.close(cur.fd)
        return f"; the partial file {cur.shown} is kept: run the same command again to resume"


def receive(
    url: str | Address,
    dest: str = ".",
    *,
    listen: bool = False,
    tls: TLSOptions | None = None,
    options: Options | None = None,
    progress: Progress | None = None,
    announce: Callable[[Address], None] = lambda addr: None,
) -> TransferSummary:
    """Receive files into ``dest`` from a sender at ``url`` (or from one that connects)."""
    opts = options or Options()
    jail = Jail(dest)
    try:
        link = open_link(url, listen=listen, tls=tls, timeout=opts.timeout, announce=announce)
    except BaseException:
        jail.close()
        raise
    receiver = _Receiver(link, jail, opts, progress or NoProgress())
    try:
        return receiver.run()
    except OpenSocketError as exc:
        lost = isinstance(exc, PeerFailed | ConnectionClosedError)
        if not lost:
            link.send_error(str(exc))
        kept = receiver.abandon()
        if kept and lost:
            raise TransferError(f"{exc}{kept}") from exc
        raise
    except OSError as exc:
        link.send_error(f"the receiver failed: {exc.strerror or exc}")
        raise TransferError(
            f"cannot write into {dest}: {exc.strerror or exc}{receiver.abandon()}"
        ) from exc
    finally:
        receiver.abandon()
        receiver.summary.seconds = time.monotonic() - receiver.summary.started
        receiver.summary.wire_bytes = link.sent + link.received
        jail.close()
        link.close()
