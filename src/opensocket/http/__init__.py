"""HTTP/1.1 static file serving on h11: the sans-IO planner (``files``) and the asyncio server."""

from __future__ import annotations

from .files import FileRange, Plan, StaticFiles, parse_ranges
from .server import HttpLimits, HttpServer, http_address, serve_http

__all__ = [
    "FileRange",
    "HttpLimits",
    "HttpServer",
    "Plan",
    "StaticFiles",
    "http_address",
    "parse_ranges",
    "serve_http",
]
