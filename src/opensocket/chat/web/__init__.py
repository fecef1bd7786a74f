"""The browser page the chat hub serves at ``/`` (plain HTML, CSS and JavaScript; no build step)."""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["page"]


@cache
def page() -> bytes:
    """The page's bytes, read once from the package (``index.html``)."""
    return resources.files(__package__).joinpath("index.html").read_bytes()
