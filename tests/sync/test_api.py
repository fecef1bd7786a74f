"""The public surface of ``opensocket.sync`` mirrors the asyncio one."""

from __future__ import annotations

import inspect

import opensocket
from opensocket import sync


def test_exports() -> None:
    required = {"connect", "serve", "open_datagram", "Connection", "Server", "Stream"}
    assert required | {"DatagramEndpoint"} <= set(sync.__all__)
    for name in sync.__all__:
        assert getattr(sync, name).__doc__, f"{name} needs a docstring"


def test_same_arguments_as_asyncio() -> None:
    for name in ("connect", "serve", "open_datagram"):
        ours = inspect.signature(getattr(sync, name)).parameters
        theirs = inspect.signature(getattr(opensocket, name)).parameters
        missing = set(theirs) - set(ours) - {"queue_limit"}  # asyncio-only queue knob
        assert not missing, f"sync.{name} lacks {missing}"


def test_connection_api_matches() -> None:
    wanted = {
        "send", "send_many", "recv", "recv_batch", "close", "closed", "close_code",
        "close_reason", "stats", "wait_closed",
    }  # fmt: skip
    assert wanted <= set(dir(sync.Connection))
    assert wanted <= set(dir(opensocket.Connection))
    stream = {"send_all", "recv", "recv_exactly", "readline", "shutdown_write", "close"}
    assert stream <= set(dir(sync.Stream))
