"""Durations (``50ms``, ``1.5s``) and sizes (``64k``, ``1MB``) as people type them."""

from __future__ import annotations

import math
import re
from typing import Final

from ..errors import ConfigError

__all__ = ["parse_duration", "parse_size"]

_DURATION: Final = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(us|ms|s|m)?\s*$", re.I)
_SIZE: Final = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmg]?)(i?b?)(/s)?\s*$", re.I)
_TIME_UNITS: Final = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}
_SIZE_UNITS: Final = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_duration(value: float | str, what: str = "duration") -> float:
    """Seconds from a number or a string like ``50ms``, ``2s``, ``250us`` (plain: seconds)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ConfigError(f"{what} {value!r} is not a duration such as 50ms, 1.5s or 0.2")
        unit = match.group(2).lower() if match.group(2) else None
        seconds = float(match.group(1)) * _TIME_UNITS[unit]
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{what} must be 0 or more seconds (got {value!r})")
    return seconds


def parse_size(value: float | str, what: str = "size") -> float:
    """Bytes from a number or a string like ``64k``, ``1.5M``, ``10MB/s`` (k = 1024)."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ConfigError(f"{what} {value!r} is not a size such as 65536, 64k or 1MB")
        size = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    else:
        size = float(value)
    if not math.isfinite(size) or size < 0:
        raise ConfigError(f"{what} must be 0 or more bytes (got {value!r})")
    return size
