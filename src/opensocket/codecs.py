"""Payload codecs: how application objects become message bytes and back.

Built in: ``bytes`` (no conversion), ``json``, ``msgpack`` (extra ``opensocket[msgpack]``) and
``protobuf`` (extra ``opensocket[protobuf]``, given a message class). Register your own with
``register_codec``. The handshake negotiates a codec by name; both sides must know it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import CodecError, ConfigError

__all__ = ["Codec", "get_codec", "protobuf_codec", "register_codec"]


@dataclass(frozen=True, slots=True)
class Codec:
    """A named pair of functions; ``encode=None`` and ``decode=None`` mean "bytes as is"."""

    name: str
    encode: Callable[[Any], bytes] | None
    decode: Callable[[bytes], Any] | None

    def dumps(self, obj: Any) -> bytes:
        """Encode one object, raising CodecError with the reason."""
        if self.encode is None:
            if isinstance(obj, bytes | bytearray | memoryview):
                return obj  # type: ignore[return-value]
            raise CodecError(f"the bytes codec sends bytes, not {type(obj).__name__}")
        try:
            return self.encode(obj)
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"cannot encode {type(obj).__name__} as {self.name}: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        """Decode one payload, raising CodecError with the reason."""
        if self.decode is None:
            return data
        try:
            return self.decode(data)
        except Exception as exc:
            raise CodecError(f"a received payload is not valid {self.name}: {exc}") from exc


def _json_encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _msgpack() -> Codec:
    try:
        import msgpack
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the msgpack codec needs the msgpack package: pip install 'opensocket[msgpack]'"
        ) from None

    def encode(obj: Any) -> bytes:
        # packb, not a shared Packer: a Packer is not safe to use from several threads.
        data: bytes = msgpack.packb(obj, use_bin_type=True)
        return data

    def decode(data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)

    return Codec("msgpack", encode, decode)


_REGISTRY: dict[str, Codec | Callable[[], Codec]] = {
    "bytes": Codec("bytes", None, None),
    "json": Codec("json", _json_encode, json.loads),
    "msgpack": _msgpack,
}


def register_codec(codec: Codec) -> None:
    """Make a codec available by name to every connection in this process."""
    _REGISTRY[codec.name] = codec


def get_codec(name: str) -> Codec:
    """Look up a codec by name; raise ConfigError naming the known ones."""
    entry = _REGISTRY.get(name)
    if entry is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"unknown payload codec {name!r} (known: {known})")
    if not isinstance(entry, Codec):
        entry = _REGISTRY[name] = entry()
    return entry


def protobuf_codec(message_class: type[Any], name: str | None = None) -> Codec:
    """A codec for one protobuf message class; register it under ``name`` (default
    ``protobuf:<full name>``) and use that name on both sides."""
    try:
        from google.protobuf.message import Message
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the protobuf codec needs the protobuf package: pip install 'opensocket[protobuf]'"
        ) from None
    if not (isinstance(message_class, type) and issubclass(message_class, Message)):
        raise ConfigError(f"{message_class!r} is not a protobuf message class")
    full_name = message_class.DESCRIPTOR.full_name

    def encode(obj: Any) -> bytes:
        if not isinstance(obj, message_class):
            raise CodecError(f"expected a {full_name} message, got {type(obj).__name__}")
        data: bytes = obj.SerializeToString()
        return data

    def decode(data: bytes) -> Any:
        return message_class.FromString(data)

    codec = Codec(name or f"protobuf:{full_name}", encode, decode)
    register_codec(codec)
    return codec
