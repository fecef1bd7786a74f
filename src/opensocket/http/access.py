"""Access-log lines: common and combined log format (as Apache and nginx write them), or JSON,
and a handler that writes them without a flush per line."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import select
import time
from dataclasses import dataclass
from typing import Final, TextIO

__all__ = ["LOG_FORMATS", "AccessRecord", "BufferedLineHandler", "SharedLines", "format_access"]

LOG_FORMATS: Final = ("common", "combined", "json")
FLUSH_DELAY: Final = 0.5  # seconds a line may wait in the buffer before it is written out
# what a quoted log field must not carry raw: controls, DEL, the quote and the escape
_UNSAFE: Final = re.compile(r'[\x00-\x1f\x7f"\\]')


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One answered request. ``method`` is empty when no request could be parsed."""

    client: str
    method: str
    target: str
    version: str
    status: int
    size: int
    referer: str = ""
    agent: str = ""


def _escape(found: re.Match[str]) -> str:
    char = found[0]
    return "\\" + char if char in '"\\' else f"\\x{ord(char):02x}"


def _quoted(text: str) -> str:
    # a log line must stay one line that a log parser can split: escape quotes and controls
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


@functools.lru_cache(maxsize=4)
def _stamp(second: int, fmt: str) -> str:
    return time.strftime(fmt, time.gmtime(second))


def format_access(record: AccessRecord, fmt: str, now: float) -> str:
    """The log line of ``record`` in ``fmt`` (one of LOG_FORMATS) at time ``now``."""
    if fmt == "json":
        stamp = _stamp(int(now), "%Y-%m-%dT%H:%M:%SZ")
        fields = {"time": stamp, **{k: getattr(record, k) for k in record.__slots__}}
        return json.dumps(fields, ensure_ascii=False)
    stamp = _stamp(int(now), "%d/%b/%Y:%H:%M:%S +0000")
    line = f"{record.method} {record.target} HTTP/{record.version}" if record.method else "-"
    text = f'{record.client} - - [{stamp}] "{_quoted(line)}" {record.status} {record.size or "-"}'
    if fmt == "combined":
        text += f' "{_quoted(record.referer or "-")}" "{_quoted(record.agent or "-")}"'
    return text


class BufferedLineHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that does not flush after every line: inside an event loop it flushes
    FLUSH_DELAY seconds after the first line it buffered (one write for many requests);
    outside one, and on ``close``, at once."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._pending = True
        loop.call_later(FLUSH_DELAY, self._flush_now)

    def _flush_now(self) -> None:
        self._pending = False
        self.flush()

    def close(self) -> None:
        self.flush()
        super().close()


class SharedLines:
    """A text stream for lines that several processes write to one file or pipe (the
    workers' access logs): whole lines, in writes of at most PIPE_BUF bytes, which the
    kernel never interleaves, so no line is torn by another process's."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        """Buffer ``text`` until ``flush``."""
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        """Write the buffered lines out."""
        if not self._parts:
            return
        data = "".join(self._parts).encode("utf-8", "replace")
        self._parts.clear()
        start = 0
        while start < len(data):
            end = min(start + select.PIPE_BUF, len(data))
            if end < len(data):
                cut = data.rfind(b"\n", start, end)
                end = cut + 1 if cut >= start else end  # a line longer than PIPE_BUF: cut it
            view = memoryview(data)[start:end]
            while view:
                view = view[os.write(self.fd, view) :]
            start = end
