"""Access-log lines, and the HTTPS redirect plan, without sockets."""

from __future__ import annotations

import json

from opensocket.http.access import AccessRecord, format_access
from opensocket.http.files import https_redirect

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
RECORD = AccessRecord("127.0.0.1", "GET", "/a b", "1.1", 200, 13, "http://x/", 'curl "8"')


def test_common_and_combined() -> None:
    assert (
        format_access(RECORD, "common", NOW)
        == '127.0.0.1 - - [14/Nov/2023:22:13:20 +0000] "GET /a b HTTP/1.1" 200 13'
    )
    assert format_access(RECORD, "combined", NOW).endswith('200 13 "http://x/" "curl \\"8\\""')


def test_unparsed_request_and_control_characters() -> None:
    bad = AccessRecord("::1", "", "", "", 400, 0)
    assert format_access(bad, "common", NOW).endswith('"-" 400 -')
    evil = AccessRecord("::1", "GET", '/"\x1b[31m\n', "1.1", 404, 5)
    line = format_access(evil, "common", NOW)
    assert "\x1b" not in line and "\n" not in line
    assert '"GET /\\"\\x1b[31m\\x0a HTTP/1.1"' in line


def test_json() -> None:
    obj = json.loads(format_access(RECORD, "json", NOW))
    assert obj["time"] == "2023-11-14T22:13:20Z"
    assert obj["status"] == 200
    assert obj["target"] == "/a b"
    assert obj["agent"] == 'curl "8"'


def test_https_redirect() -> None:
    def location(host: str, target: str, port: int) -> str:
        plan = https_redirect(host, target, port)
        assert plan.status == 308
        return dict(plan.headers)["Location"]

    assert location("example.com:8080", "/a?b", 8443) == "https://example.com:8443/a?b"
    assert location("example.com", "/", 443) == "https://example.com/"
    assert location("[::1]:80", "/x", 8443) == "https://[::1]:8443/x"
    assert https_redirect("", "/", 443).status == 400
    assert https_redirect("evil.com/x", "/", 443).status == 400
