"""Static files over HTTP, sans-IO: a request (method, target, headers) and a root folder in,
a response plan out. No sockets, no clocks (``now`` is a parameter): the runtime sends the plan.

The root is a jail. What a request target gets, in the order checked:

- methods other than GET and HEAD: 405 with ``Allow: GET, HEAD``;
- a target that is not a path (``*``, no leading ``/``), a malformed or non-UTF-8 percent
  escape, or a NUL byte (raw or ``%00``): 400;
- a ``..`` or ``.`` segment (raw or percent-encoded) or an encoded ``/`` or ``\\``
  (``%2f``, ``%5c``), or a raw backslash: 403;
- a hidden name (a segment starting with ``.``) unless ``show_hidden``, a missing file, a
  symlink resolving outside the root, anything but a regular file or a folder: 404.

Repeated slashes collapse, so ``//etc/passwd`` names ``ROOT/etc/passwd``, never ``/etc/passwd``.
"""

from __future__ import annotations

import email.utils
import functools
import html
import mimetypes
import os
import secrets
import stat
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ALLOWED_METHODS",
    "FileRange",
    "Plan",
    "StaticFiles",
    "error_plan",
    "https_redirect",
    "method_not_allowed",
    "parse_ranges",
]

ALLOWED_METHODS: Final = ("GET", "HEAD")
MAX_RANGES: Final = 16  # more ranges than this: the whole file (RFC 9110 lets us ignore Range)
_REASONS: Final = {
    200: "OK",
    206: "Partial Content",
    301: "Moved Permanently",
    308: "Permanent Redirect",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class FileRange:
    """``length`` bytes of the plan's file from ``offset``."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What to answer: status, headers, and the body as bytes and file ranges, in order.

    ``path`` is the file the ranges read from. ``length`` is the body length (Content-Length),
    also for HEAD, where ``parts`` is empty.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    parts: tuple[bytes | FileRange, ...] = ()
    path: str | None = None
    length: int = 0
    stat: os.stat_result | None = field(default=None, compare=False)

    @property
    def reason(self) -> str:
        """The reason phrase of ``status``."""
        return _REASONS.get(self.status, "")


def error_plan(status: int, message: str = "", extra: Sequence[tuple[str, str]] = ()) -> Plan:
    """A short plain-text error response."""
    body = f"{status} {_REASONS.get(status, 'Error')}\n{message}\n".encode()
    headers = (
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *extra,
    )
    return Plan(status, headers, (body,), length=len(body))


def https_redirect(host: str, target: str, port: int) -> Plan:
    """308 to the same target over HTTPS on ``port``, for the host the client asked for."""
    if host.startswith("["):
        name = host[: host.find("]") + 1] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if not name or any(c in name for c in "/?#@\\ "):
        return error_plan(400, "a redirect to HTTPS needs a valid Host header")
    if not target.startswith("/"):
        target = "/"
    authority = name if port == 443 else f"{name}:{port}"
    return error_plan(308, "use HTTPS", (("Location", f"https://{authority}{target}"),))


def method_not_allowed(method: str, extra: Sequence[tuple[str, str]]) -> Plan:
    """405 with the Allow header."""
    allow = (("Allow", ", ".join(ALLOWED_METHODS)), *extra)
    return error_plan(405, f"{method} is not allowed here: use GET or HEAD", allow)


def parse_ranges(value: str, size: int) -> list[tuple[int, int]] | None:
    """``Range: bytes=...`` as (start, end-inclusive) pairs clipped to ``size``.

    None: ignore the header (not bytes, malformed, too many ranges). An empty list:
    no range is satisfiable (416).
    """
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    items = spec.split(",")
    if len(items) > MAX_RANGES:
        return None
    ranges: list[tuple[int, int]] = []
    for raw_item in items:
        item = raw_item.strip()
        first, dash, last = item.partition("-")
        if not dash or not (first.isdigit() or last.isdigit()):
            return None
        if (first and not first.isdigit()) or (last and not last.isdigit()):
            return None
        if not first:  # suffix: the last N bytes
            count = int(last)
            if count > 0 and size > 0:
                ranges.append((max(0, size - count), size - 1))
            continue
        start = int(first)
        if last and int(last) < start:
            return None
        end = int(last) if last else size - 1
        if start < size:
            ranges.append((start, min(end, size - 1)))
    return ranges


@functools.lru_cache(maxsize=1024)
def _http_date(stamp: float) -> str:
    return email.utils.formatdate(stamp, usegmt=True)


def _parse_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match: weak comparison against a list of tags, or ``*``."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


@functools.lru_cache(maxsize=1024)
def _content_type(path: str) -> str:
    kind, encoding = mimetypes.guess_type(path, strict=False)
    if encoding is not None or kind is None:
        return "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        return f"{kind}; charset=utf-8"
    return kind


def _format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


class StaticFiles:
    """Maps requests to response plans for the files under ``root``."""

    def __init__(self, root: str | os.PathLike[str], *, show_hidden: bool = False) -> None:
        self.root = os.path.realpath(root)
        self.show_hidden = show_hidden

    def plan(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        *,
        extra: Sequence[tuple[str, str]] = (),
    ) -> Plan:
        """The response to ``method target`` with ``headers`` (names lower-case)."""
        if method not in ALLOWED_METHODS:
            return method_not_allowed(method, extra)
        found = self._resolve(target)
        if isinstance(found, Plan):
            return found
        real, st, url_path = found
        if stat.S_ISDIR(st.st_mode):
            return self._directory(real, url_path, target, headers, extra, method)
        if target.split("?", 1)[0].split("#", 1)[0].endswith("/"):
            return error_plan(404, "no such file")  # a file is not a folder (as nginx says)
        return self._file(real, st, headers, extra, head=method == "HEAD")

    # ---- the jail ----------------------------------------------------------------------------

    def _segments(self, target: str) -> list[str] | Plan:
        path = target.split("?", 1)[0].split("#", 1)[0]
        if not path.startswith("/"):
            return error_plan(400, "the request target must be a path starting with /")
        if "\\" in path:
            return error_plan(403, "backslashes are not allowed in paths")
        segments = []
        for raw in path.split("/"):
            if not raw:
                continue
            low = raw.lower()
            if "%2f" in low or "%5c" in low:
                return error_plan(403, "encoded slashes are not allowed in paths")
            try:
                name = urllib.parse.unquote_to_bytes(raw).decode("utf-8") if "%" in raw else raw
            except UnicodeDecodeError:
                return error_plan(400, "the path is not valid UTF-8")
            if "\0" in name:
                return error_plan(400, "NUL bytes are not allowed in paths")
            if name in (".", ".."):
                return error_plan(403, "'.' and '..' are not allowed in paths")
            if name.startswith(".") and not self.show_hidden:
                return error_plan(404, "no such file")
            segments.append(name)
        return segments

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def _real(self, segments: list[str]) -> tuple[str, os.stat_result]:
        """The real path under the root and its stat, following symlinks.

        The root is already real, so without a symlink below it the joined path is the real
        one: one lstat per segment instead of realpath's walk from ``/`` and a second stat.
        """
        path, st = self.root, None
        for name in segments:
            path = os.path.join(path, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(os.path.join(self.root, *segments))
                return real, os.stat(real)
        return path, os.stat(path) if st is None else st

    def _resolve(self, target: str) -> tuple[str, os.stat_result, str] | Plan:
        segments = self._segments(target)
        if isinstance(segments, Plan):
            return segments
        try:
            real, st = self._real(segments)
        except (OSError, ValueError):
            return error_plan(404, "no such file")
        if not self._inside(real):
            return error_plan(404, "no such file")  # a symlink out of the jail: say nothing
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return error_plan(404, "no such file")
        return real, st, "/" + "/".join(segments)

    # ---- files -------------------------------------------------------------------------------

    def _file(
        self,
        path: str,
        st: os.stat_result,
        headers: Mapping[str, str],
        extra: Sequence[tuple[str, str]],
        *,
        head: bool,
    ) -> Plan:
        etag, size = _etag(st), st.st_size
        meta = (
            ("ETag", etag),
            ("Last-Modified", _http_date(st.st_mtime)),
            ("Accept-Ranges", "bytes"),
            *extra,
        )
        if self._not_modified(headers, etag, st.st_mtime):
            return Plan(304, meta)
        ctype = _content_type(path)
        ranges = self._wanted_ranges(headers, etag, st)
        if ranges is not None and not ranges:
            return error_plan(
                416,
                "no requested range is in the file",
                (("Content-Range", f"bytes */{size}"), *meta),
            )
        if ranges is None:
            plan = Plan(
                200,
                (("Content-Type", ctype), ("Content-Length", str(size)), *meta),
                (FileRange(0, size),),
                path,
                size,
                st,
            )
        elif len(ranges) == 1:
            start, end = ranges[0]
            length = end - start + 1
            hdrs = (
                ("Content-Type", ctype),
                ("Content-Length", str(length)),
                ("Content-Range", f"bytes {start}-{end}/{size}"),
                *meta,
            )
            plan = Plan(206, hdrs, (FileRange(start, length),), path, length, st)
        else:
            plan = self._multipart(path, st, ctype, ranges, meta)
        return Plan(plan.status, plan.headers, (), None, plan.length, st) if head else plan

    @staticmethod
    def _not_modified(headers: Mapping[str, str], etag: str, mtime: float) -> bool:
        inm = headers.get("if-none-match")
        if inm is not None:
            return _etag_matches(inm, etag)
        ims = headers.get("if-modified-since")
        since = _parse_date(ims) if ims else None
        return since is not None and int(mtime) <= since

    @staticmethod
    def _wanted_ranges(
        headers: Mapping[str, str], etag: str, st: os.stat_result
    ) -> list[tuple[int, int]] | None:
        value = headers.get("range")
        if value is None:
            return None
        if_range = headers.get("if-range")
        if if_range is not None:
            if if_range.startswith(('"', "W/")):
                if if_range != etag:  # strong comparison
                    return None
            else:
                date = _parse_date(if_range)
                if date is None or int(st.st_mtime) != int(date):
                    return None
        return parse_ranges(value, st.st_size)

    @staticmethod
    def _multipart(
        path: str,
        st: os.stat_result,
        ctype: str,
        ranges: list[tuple[int, int]],
        meta: tuple[tuple[str, str], ...],
    ) -> Plan:
        boundary = secrets.token_hex(16)  # per response: no file can be made to contain it
        parts: list[bytes | FileRange] = []
        for start, end in ranges:
            head = (
                f"\r\n--{boundary}\r\nContent-Type: {ctype}\r\n"
                f"Content-Range: bytes {start}-{end}/{st.st_size}\r\n\r\n"
            )
            parts += [head.encode(), FileRange(start, end - start + 1)]
        parts.append(f"\r\n--{boundary}--\r\n".encode())
        length = sum(p.length if isinstance(p, FileRange) else len(p) for p in parts)
        hdrs = (
            ("Content-Type", f"multipart/byteranges; boundary={boundary}"),
            ("Content-Length", str(length)),
            *meta,
        )
        return Plan(206, hdrs, tuple(parts), path, length, st)

    # ---- folders -----------------------------------------------------------------------------

    def _directory(
        self,
        real: str,
        url_path: str,
        target: str,
        headers: Mapping[str, str],
        extra: Sequence[tuple[str, str]],
        method: str,
    ) -> Plan:
        path, sep, query = target.partition("?")
        if not path.endswith("/"):
            location = urllib.parse.quote(url_path.rstrip("/") + "/") + (sep + query)
            return error_plan(301, "moved", (("Location", location), *extra))
        index = os.path.join(real, "index.html")
        try:
            st = os.stat(index)
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            return self._file(index, st, headers, extra, head=method == "HEAD")
        body = self.listing(real, url_path).encode("utf-8", "surrogateescape")
        hdrs = (
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            *extra,
        )
        return Plan(200, hdrs, () if method == "HEAD" else (body,), length=len(body))

    def _entries(self, folder: str) -> list[tuple[bool, str, int, float]]:
        entries = []
        try:
            scan = list(os.scandir(folder))
        except OSError:
            return []
        for entry in scan:
            if entry.name.startswith(".") and not self.show_hidden:
                continue
            if entry.is_symlink() and not self._inside(os.path.realpath(entry.path)):
                continue  # a link out of the jail: not even its name and size
            try:
                st = entry.stat()
            except OSError:
                continue  # a dangling symlink
            entries.append((not entry.is_dir(), entry.name, st.st_size, st.st_mtime))
        return sorted(entries, key=lambda e: (e[0], e[1].casefold(), e[1]))

    def listing(self, folder: str, url_path: str) -> str:
        """The HTML listing of ``folder``: names escaped, folders first, sizes and dates."""
        title = html.escape(f"Index of {url_path.rstrip('/') or ''}/")
        rows = []
        if url_path.strip("/"):
            rows.append('<tr><td><a href="../">../</a></td><td></td><td></td></tr>')
        for is_file, name, size, mtime in self._entries(folder):
            shown = name if is_file else name + "/"
            href = urllib.parse.quote(name, errors="surrogateescape") + ("" if is_file else "/")
            date = time.strftime("%Y-%m-%d %H:%M", time.gmtime(mtime))
            rows.append(
                f'<tr><td><a href="{html.escape(href)}">{html.escape(shown)}</a></td>'
                f"<td>{_format_size(size) if is_file else '-'}</td><td>{date}</td></tr>"
            )
        return (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>{title}</title></head>\n<body><h1>{title}</h1>\n<table>\n"
            "<tr><th>Name</th><th>Size</th><th>Modified (UTC)</th></tr>\n"
            + "\n".join(rows)
            + "\n</table></body></html>\n"
        )
