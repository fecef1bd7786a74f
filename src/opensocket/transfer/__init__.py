"""File transfer: send files and folders between machines, verified, resumable, encrypted.

``send(paths, url)`` and ``receive(url, dest)`` run one transfer each (either side may be the
one that listens: ``listen=True``) and return a ``TransferSummary``. The protocol is sans-IO in
``opensocket.transfer.protocol`` and ``opensocket.transfer.crypto``; see docs/protocol.md.
"""

from __future__ import annotations

from ..errors import (
    CodeMismatch,
    DiskFull,
    PathRefused,
    PeerFailed,
    TransferError,
    TransferProtocolError,
)
from ._common import FileResult, NoProgress, Options, Progress, TransferSummary
from ._receiver import receive
from ._sender import scan, send
from .crypto import generate_code

__all__ = [
    "CodeMismatch",
    "DiskFull",
    "FileResult",
    "NoProgress",
    "Options",
    "PathRefused",
    "PeerFailed",
    "Progress",
    "TransferError",
    "TransferProtocolError",
    "TransferSummary",
    "generate_code",
    "receive",
    "scan",
    "send",
]
