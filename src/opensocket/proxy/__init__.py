"""A fault-injecting, frame-inspecting proxy for TCP, Unix and UDP sockets.

``Proxy`` runs on the caller's event loop (``async with Proxy(listen, upstream) as p``);
``BackgroundProxy`` (or ``Proxy.in_thread``) runs one on a thread of its own for blocking
code. Faults (``add_latency``, ``limit_bandwidth``, ``reset_after``, ``close_after``,
``stall``, ``corrupt``, ``loss``, ``duplicate``, ``reorder``) apply per direction and with a
probability, drawn from a seeded RNG. The decisions live in the sans-IO ``faults`` module.
"""

from ._proxy import BackgroundProxy, FaultId, FaultMethods, Proxy
from .faults import DIRECTIONS, KINDS, Fault, FaultSet, ProxyStats, make_fault

__all__ = [
    "DIRECTIONS",
    "KINDS",
    "BackgroundProxy",
    "Fault",
    "FaultId",
    "FaultMethods",
    "FaultSet",
    "Proxy",
    "ProxyStats",
    "make_fault",
]
