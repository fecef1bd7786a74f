"""The request planner without sockets: jail, conditionals, ranges, listings, methods."""

from __future__ import annotations

import email.utils
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opensocket.http import FileRange, Plan, StaticFiles, parse_ranges

BODY = b"0123456789abcdefghij"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "data.txt").write_bytes(BODY)
    (root / "page.html").write_text("<p>hi</p>")
    (root / ".secret").write_text("hidden")
    (root / "sub" / "index.html").write_text("index")
    (root / "list").mkdir()
    (root / "list" / "b.bin").write_bytes(b"x" * 2048)
    (root / "list" / "<script>&\"'.txt").write_text("x")
    (root / "list" / "a dir").mkdir()
    (root / "list" / ".hidden").write_text("x")
    (tmp_path / "outside.txt").write_text("outside")
    (root / "escape").symlink_to(tmp_path / "outside.txt")
    (root / "escape-dir").symlink_to(tmp_path)
    (root / "inside-link").symlink_to(root / "data.txt")
    return root


def body(plan: Plan) -> bytes:
    """The body a plan describes, read the way the runtime does."""
    out = b""
    for part in plan.parts:
        if isinstance(part, bytes):
            out += part
        else:
            assert plan.path is not None
            with open(plan.path, "rb") as handle:
                handle.seek(part.offset)
                out += handle.read(part.length)
    return out


def get(files: StaticFiles, target: str, **headers: str) -> Plan:
    return files.plan("GET", target, {k.replace("_", "-"): v for k, v in headers.items()})


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/../outside.txt", 403),
        ("/sub/../../outside.txt", 403),
        ("/%2e%2e/outside.txt", 403),
        ("/%2E%2E/outside.txt", 403),
        ("/.%2e/outside.txt", 403),
        ("/sub%2f..%2f..%2foutside.txt", 403),
        ("/sub%2F..%2F..%2Foutside.txt", 403),
        ("/..%5coutside.txt", 403),
        ("/..\\outside.txt", 403),
        ("/./data.txt", 403),
        ("/data.txt%00.html", 400),
        ("/data.txt\0", 400),
        ("/%ff%fe", 400),
        ("outside.txt", 400),
        ("*", 400),
        ("//etc/passwd", 404),
        ("/etc/passwd", 404),
        ("/escape", 404),
        ("/escape-dir/outside.txt", 404),
        ("/.secret", 404),
        ("/%2esecret", 404),
        ("/missing", 404),
    ],
)
def test_jail_refuses(site: Path, target: str, status: int) -> None:
    plan = get(StaticFiles(site), target)
    assert plan.status == status
    assert plan.path is None
    assert b"outside" not in body(plan)


def test_jail_allows_links_inside_and_hidden_when_asked(site: Path) -> None:
    assert body(get(StaticFiles(site), "/inside-link")) == BODY
    assert body(get(StaticFiles(site, show_hidden=True), "/.secret")) == b"hidden"
    assert get(StaticFiles(site, show_hidden=True), "/escape").status == 404


def test_file_headers(site: Path) -> None:
    plan = get(StaticFiles(site), "/data.txt?x=1")
    headers = dict(plan.headers)
    st = os.stat(site / "data.txt")
    assert plan.status == 200
    assert body(plan) == BODY
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Content-Length"] == str(len(BODY))
    assert headers["ETag"] == f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    assert email.utils.parsedate_to_datetime(headers["Last-Modified"]).timestamp() == int(
        st.st_mtime
    )
    assert dict(get(StaticFiles(site), "/page.html").headers)["Content-Type"].startswith(
        "text/html"
    )


def test_head_has_length_but_no_body(site: Path) -> None:
    plan = StaticFiles(site).plan("HEAD", "/data.txt", {})
    assert plan.status == 200
    assert plan.parts == ()
    assert dict(plan.headers)["Content-Length"] == str(len(BODY))


def test_conditionals(site: Path) -> None:
    files = StaticFiles(site)
    etag = dict(get(files, "/data.txt").headers)["ETag"]
    modified = dict(get(files, "/data.txt").headers)["Last-Modified"]
    assert get(files, "/data.txt", if_none_match=etag).status == 304
    assert get(files, "/data.txt", if_none_match=f'"other", W/{etag}').status == 304
    assert get(files, "/data.txt", if_none_match="*").status == 304
    assert get(files, "/data.txt", if_none_match='"other"').status == 200
    assert get(files, "/data.txt", if_modified_since=modified).status == 304
    assert get(files, "/data.txt", if_modified_since="Mon, 01 Jan 1990 00:00:00 GMT").status == 200
    assert get(files, "/data.txt", if_modified_since="garbage").status == 200
    # If-None-Match wins over If-Modified-Since
    assert get(files, "/data.txt", if_none_match='"x"', if_modified_since=modified).status == 200
    not_modified = get(files, "/data.txt", if_none_match=etag)
    assert not_modified.parts == ()
    assert dict(not_modified.headers)["ETag"] == etag


def test_single_range(site: Path) -> None:
    files = StaticFiles(site)
    plan = get(files, "/data.txt", range="bytes=2-5")
    assert plan.status == 206
    assert body(plan) == BODY[2:6]
    assert dict(plan.headers)["Content-Range"] == f"bytes 2-5/{len(BODY)}"
    assert dict(plan.headers)["Content-Length"] == "4"
    assert body(get(files, "/data.txt", range="bytes=-3")) == BODY[-3:]
    assert body(get(files, "/data.txt", range="bytes=15-")) == BODY[15:]
    assert body(get(files, "/data.txt", range="bytes=15-999")) == BODY[15:]


def test_multiple_ranges_are_multipart(site: Path) -> None:
    plan = get(StaticFiles(site), "/data.txt", range="bytes=0-1, 10-12")
    ctype = dict(plan.headers)["Content-Type"]
    assert plan.status == 206
    assert ctype.startswith("multipart/byteranges; boundary=")
    boundary = ctype.split("boundary=")[1].encode()
    data = body(plan)
    assert len(data) == int(dict(plan.headers)["Content-Length"])
    assert data.count(b"--" + boundary) == 3
    assert b"Content-Range: bytes 0-1/20\r\n\r\n01\r\n" in data
    assert b"Content-Range: bytes 10-12/20\r\n\r\nabc\r\n" in data
    assert data.endswith(b"--" + boundary + b"--\r\n")


def test_unsatisfiable_and_ignored_ranges(site: Path) -> None:
    files = StaticFiles(site)
    plan = get(files, "/data.txt", range="bytes=100-200")
    assert plan.status == 416
    assert dict(plan.headers)["Content-Range"] == f"bytes */{len(BODY)}"
    for ignored in ("items=0-1", "bytes=5-2", "bytes=a-b", "bytes=", "bytes=" + "0-0," * 20):
        assert get(files, "/data.txt", range=ignored).status == 200, ignored
    etag = dict(get(files, "/data.txt").headers)["ETag"]
    assert get(files, "/data.txt", range="bytes=0-1", if_range=etag).status == 206
    assert get(files, "/data.txt", range="bytes=0-1", if_range='"old"').status == 200


def test_parse_ranges() -> None:
    assert parse_ranges("bytes=0-0", 10) == [(0, 0)]
    assert parse_ranges("bytes=-20", 10) == [(0, 9)]
    assert parse_ranges("bytes=-0", 10) == []
    assert parse_ranges("bytes=0-", 0) == []
    assert parse_ranges("bytes=1-2,x", 10) is None


def test_index_preferred_and_redirect(site: Path) -> None:
    files = StaticFiles(site)
    assert body(get(files, "/sub/")) == b"index"
    plan = get(files, "/sub?q=1")
    assert plan.status == 301
    assert dict(plan.headers)["Location"] == "/sub/?q=1"


def test_listing_escapes_sorts_and_hides(site: Path) -> None:
    plan = get(StaticFiles(site), "/list/")
    page = body(plan).decode()
    assert plan.status == 200
    assert dict(plan.headers)["Content-Type"] == "text/html; charset=utf-8"
    assert "<script>" not in page
    assert "&lt;script&gt;&amp;&quot;&#x27;.txt" in page
    assert 'href="%3Cscript%3E%26%22%27.txt"' in page
    assert 'href="a%20dir/"' in page
    assert ".hidden" not in page
    assert page.index("a dir/") < page.index("&lt;script") < page.index("b.bin")
    assert "2.0 KiB" in page
    assert 'href="../"' in page


def test_methods_other_than_get_and_head(site: Path) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "BREW"):
        plan = StaticFiles(site).plan(method, "/data.txt", {})
        assert plan.status == 405
        assert dict(plan.headers)["Allow"] == "GET, HEAD"


def test_file_range_length_adds_up(site: Path) -> None:
    plan = get(StaticFiles(site), "/data.txt", range="bytes=0-0,2-3,5-")
    total = sum(p.length if isinstance(p, FileRange) else len(p) for p in plan.parts)
    assert total == plan.length


def test_listing_hides_links_out_of_the_jail(site: Path) -> None:
    page = body(get(StaticFiles(site), "/")).decode()
    assert "inside-link" in page
    assert "escape" not in page


SEGMENTS = [
    "..",
    ".",
    "%2e",
    "%2E",
    "%2f",
    "%5c",
    "\\",
    "%00",
    "a",
    "sub",
    "escape",
    "%",
    "/",
    "//",
]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(SEGMENTS), max_size=8))
def test_no_target_reads_outside_the_root(site: Path, parts: list[str]) -> None:
    root = os.path.realpath(site)
    plan = get(StaticFiles(site), "/" + "".join(parts))
    if plan.path is not None:
        assert os.path.realpath(plan.path).startswith(root + os.sep)
    assert b"outside" not in body(plan)


@pytest.mark.parametrize(
    "target",
    [
        "/data.txt/",
        "/data.txt/?x=1",
        "/data.txt/#x",
        "/inside-link/",
        "/sub/index.html/",
        "/data.txt//",
    ],
)
def test_slash_after_a_file_is_not_found(site: Path, target: str) -> None:
    assert get(StaticFiles(site), target).status == 404  # as nginx and Apache answer


def test_slash_after_a_folder_still_serves_it(site: Path) -> None:
    files = StaticFiles(site)
    assert body(get(files, "/sub/")) == b"index"
    assert body(get(files, "/sub/?x=1")) == b"index"
    assert get(files, "/data.txt?x=/").status == 200  # a slash in the query is no folder


def test_multipart_boundary_is_random_per_response(site: Path) -> None:
    files = StaticFiles(site)
    plans = [get(files, "/data.txt", range="bytes=0-1, 10-12") for _ in range(3)]
    ctypes = {dict(p.headers)["Content-Type"] for p in plans}
    assert len(ctypes) == 3
    for plan, ctype in zip(plans, [dict(p.headers)["Content-Type"] for p in plans], strict=True):
        boundary = ctype.split("boundary=")[1].encode()
        assert len(boundary) == 32 and body(plan).endswith(b"--" + boundary + b"--\r\n")
