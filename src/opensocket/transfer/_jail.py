"""The receiver's destination folder as a jail: every step is an ``openat`` relative to a
folder descriptor with ``O_NOFOLLOW``, so no symlink (made before or during the transfer) can
lead a write outside it, and no path is resolved twice (no time-of-check/time-of-use gap).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from typing import Any, Final

from ..errors import PathRefused, TransferError

__all__ = ["Jail", "part_names"]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PART: Final = ".opensocket-part"
_STATE: Final = ".opensocket-state"


def part_names(name: str) -> tuple[str, str]:
    """The partial file's and its state file's names for a destination name (same folder)."""
    stem = name if len(name.encode()) + len(_STATE) + 1 <= 255 else _short(name)
    return f".{stem}{_PART}", f".{stem}{_STATE}"


def _short(name: str) -> str:
    return "long-" + hashlib.sha256(name.encode()).hexdigest()[:32]


class Jail:
    """Folder descriptors under one root, opened component by component without following."""

    def __init__(self, root: str) -> None:
        try:
            os.makedirs(root, exist_ok=True)
            self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise TransferError(
                f"cannot use {root} as the destination folder: {exc.strerror or exc}"
            ) from exc
        self.root = root
        self._fds: dict[str, int] = {"": self.root_fd}

    def close(self) -> None:
        """Close every folder descriptor."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def folder(self, rel: str, *, create: bool) -> int | None:
        """The descriptor of folder ``rel`` ('' = root); None if missing and not ``create``."""
        if rel in self._fds:
            return self._fds[rel]
        parent_rel, _, name = rel.rpartition("/")
        parent = self.folder(parent_rel, create=create)
        if parent is None:
            return None
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
            self._mkdir(rel, name, parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise self._refused(rel, exc) from exc
        self._fds[rel] = fd
        return fd

    def _mkdir(self, rel: str, name: str, parent: int) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass  # made meanwhile; the open that follows checks what it is
        except OSError as exc:
            raise TransferError(
                f"cannot create the folder {rel} in {self.root}: {exc.strerror or exc}"
            ) from exc

    def _refused(self, rel: str, exc: OSError) -> TransferError:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return PathRefused(
                f"refused {rel!r}: in the destination it is a symlink or not a folder, and "
                "nothing is written through symlinks"
            )
        return TransferError(f"cannot open the folder {rel} in {self.root}: {exc.strerror or exc}")

    def lstat(self, dir_fd: int, name: str) -> os.stat_result | None:
        """``lstat`` of a name in a folder, None if it does not exist."""
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def open_part(self, dir_fd: int, name: str) -> int:
        """Open (create) a partial file for writing, never through a symlink."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PathRefused(f"refused to write into {name}: it is not a regular file")
        return fd

    def read_state(self, dir_fd: int, name: str) -> dict[str, Any] | None:
        """The partial file's state, or None if it is missing or unreadable."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as handle:
                state = json.loads(handle.read(65536))
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def write_state(self, dir_fd: int, name: str, state: dict[str, Any]) -> None:
        """Replace the state file (a temporary name renamed over it: never half written)."""
        tmp = name + ".tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(json.dumps(state).encode())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def remove(self, dir_fd: int, *names: str) -> None:
        """Unlink names that may not exist."""
        for name in names:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass

    def publish(self, dir_fd: int, part: str, name: str, *, overwrite: bool) -> None:
        """Give the verified partial file its final name; never replace one unless ``overwrite``.

        Without ``overwrite`` a hard link (which fails if the name exists, atomically) then an
        unlink of the partial name: a file made meanwhile by someone else is not replaced.
        """
        if overwrite:
            os.replace(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        os.link(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        os.unlink(part, dir_fd=dir_fd)
