"""The pytest plugin (entry point ``pytest11``): fixtures for testing socket code.

``free_tcp_port``/``free_udp_port``: a port free a moment ago on 127.0.0.1.
``background_server``: a factory, ``server = background_server(handler, url, **serve_kwargs)``
(no handler: an echo server); ``server.url`` is the bound address; stopped at teardown.
``fault_proxy``: a factory, ``proxy = fault_proxy(upstream_url, protocol="tcp"|"udp")``;
connect to ``proxy.url`` and inject faults (``proxy.add_latency(...)``,
``proxy.reset_after(...)``, ``proxy.loss(...)``) from sync or async tests: the proxy runs on
a thread of its own. Closed at teardown.

Everything heavy is imported inside the fixtures, so sessions that do not use them pay
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..proxy import BackgroundProxy
    from ._server import BackgroundServer

__all__ = ["background_server", "fault_proxy", "free_tcp_port", "free_udp_port"]


@pytest.fixture
def free_tcp_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    from . import free_tcp_port as find

    return find()


@pytest.fixture
def free_udp_port() -> int:
    """A UDP port that was free a moment ago on 127.0.0.1."""
    from . import free_udp_port as find

    return find()


@pytest.fixture
def background_server() -> Iterator[Callable[..., BackgroundServer]]:
    """Factory: ``background_server(handler=None, url="tcp://127.0.0.1:0", **serve_kwargs)``."""
    from ._server import BackgroundServer

    started: list[BackgroundServer] = []

    def start(
        handler: Callable[[Any], Any] | None = None,
        url: str = "tcp://127.0.0.1:0",
        **serve_kwargs: Any,
    ) -> BackgroundServer:
        server = BackgroundServer(handler, url, **serve_kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


def _upstream_url(upstream: Any, protocol: str | None) -> str:
    if isinstance(upstream, tuple):
        host, port = upstream
        host = f"[{host}]" if ":" in str(host) else host
        return f"{protocol or 'tcp'}://{host}:{port}"
    url = str(upstream)  # a URL, or a BackgroundServer (its str() is its URL)
    if "://" not in url:
        return f"{protocol or 'tcp'}://{url}"
    if protocol is not None and not url.startswith(f"{protocol}://"):
        scheme = url.split("://", 1)[0]
        if not (protocol == "tcp" and scheme == "unix"):
            url = f"{protocol}://{url.split('://', 1)[1]}"
    return url


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., BackgroundProxy]]:
    """Factory: ``fault_proxy(upstream, protocol=None, *, listen=None, seed=0, **kwargs)``.

    ``upstream`` is a URL, a ``(host, port)`` pair or a ``background_server``; ``protocol``
    (``tcp``, ``udp`` or ``rudp``) defaults to the upstream's scheme. The proxy listens on
    ``listen`` (default: 127.0.0.1, a free port, same protocol); its RNG is seeded with
    ``seed``, so random faults repeat from run to run.
    """
    from ..proxy import BackgroundProxy

    started: list[BackgroundProxy] = []

    def start(
        upstream: Any,
        protocol: str | None = None,
        *,
        listen: str | None = None,
        seed: int | None = 0,
        **kwargs: Any,
    ) -> BackgroundProxy:
        url = _upstream_url(upstream, protocol)
        if listen is None:
            scheme = url.split("://", 1)[0]
            # datagram upstreams (udp://, rudp://) get a proxy of the same scheme
            listen = f"{scheme}://127.0.0.1:0" if scheme in ("udp", "rudp") else "tcp://127.0.0.1:0"
        proxy = BackgroundProxy(listen, url, seed=seed, **kwargs)
        proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in reversed(started):
        proxy.close()
