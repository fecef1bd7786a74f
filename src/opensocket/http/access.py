"""Access-log lines: common and combined log format (as Apache and nginx write them), or JSON."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Final

__all__ = ["LOG_FORMATS", "AccessRecord", "format_access"]

LOG_FORMATS: Final = ("common", "combined", "json")


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


def _quoted(text: str) -> str:
    # a log line must stay one line that a log parser can split: escape quotes and controls
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(c if " " <= c != "\x7f" else f"\\x{ord(c):02x}" for c in out)


def format_access(record: AccessRecord, fmt: str, now: float) -> str:
    """The log line of ``record`` in ``fmt`` (one of LOG_FORMATS) at time ``now``."""
    if fmt == "json":
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        fields = {"time": stamp, **{k: getattr(record, k) for k in record.__slots__}}
        return json.dumps(fields, ensure_ascii=False)
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))
    line = f"{record.method} {record.target} HTTP/{record.version}" if record.method else "-"
    text = f'{record.client} - - [{stamp}] "{_quoted(line)}" {record.status} {record.size or "-"}'
    if fmt == "combined":
        text += f' "{_quoted(record.referer or "-")}" "{_quoted(record.agent or "-")}"'
    return text
