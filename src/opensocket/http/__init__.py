"""HTTP/1.1: a static file server (the sans-IO planner ``files``; the asyncio server parses
with httptools) and a client on h11 (``fetch``, ``open_response``)."""

from __future__ import annotations

from .client import (
    BodyTooLarge,
    HttpError,
    MalformedResponse,
    RedirectRefused,
    Response,
    ResponseStream,
    TooManyRedirects,
    Url,
    fetch,
    open_response,
    parse_url,
)
from .files import FileRange, Plan, StaticFiles, parse_ranges
from .server import HttpLimits, HttpServer, http_address, serve_http

__all__ = [
    "BodyTooLarge",
    "FileRange",
    "HttpError",
    "HttpLimits",
    "HttpServer",
    "MalformedResponse",
    "Plan",
    "RedirectRefused",
    "Response",
    "ResponseStream",
    "StaticFiles",
    "TooManyRedirects",
    "Url",
    "fetch",
    "http_address",
    "open_response",
    "parse_ranges",
    "parse_url",
    "serve_http",
]
