"""The public surface stays as documented: exports, error tree, option validation."""

from __future__ import annotations

import inspect

import pytest

import opensocket
from opensocket import errors
from opensocket.options import KeepAlive, ProtocolOptions, SocketOptions, TLSOptions

DOCUMENTED = {
    "Address", "Codec", "Connection", "ConnectionStats", "DatagramEndpoint", "Hooks", "KeepAlive",
    "ProtocolOptions", "ReliableConnection", "ReliableServer", "RudpOptions", "Server",
    "ServerLimits", "ServerStats", "SocketOptions", "Stream",
    "TLSOptions", "__version__", "connect", "errors", "get_codec", "open_datagram",
    "parse_address", "protobuf_codec", "register_codec", "run", "serve",
}  # fmt: skip


def test_top_level_exports() -> None:
    exported = set(opensocket.__all__)
    assert exported >= DOCUMENTED
    assert exported - DOCUMENTED == set(errors.__all__)
    for name in exported:
        assert hasattr(opensocket, name), name


def test_every_public_callable_has_a_docstring() -> None:
    for name in opensocket.__all__:
        obj = getattr(opensocket, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_error_tree_is_documented_and_rooted() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        cls = getattr(errors, name)
        if name == "CloseCode":
            continue
        assert issubclass(cls, errors.OpenSocketError), name
        assert name in doc, f"{name} missing from the tree in the errors docstring"


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.ConnectionRefused, ConnectionRefusedError),
        (errors.ConnectTimeout, TimeoutError),
        (errors.HandshakeTimeout, TimeoutError),
        (errors.ReadTimeout, TimeoutError),
        (errors.WriteTimeout, TimeoutError),
        (errors.AddressError, ValueError),
        (errors.ConnectionClosed, ConnectionError),
        (errors.AddressInUse, OSError),
    ],
)
def test_errors_subclass_the_builtins_callers_expect(cls: type, builtin: type) -> None:
    assert issubclass(cls, builtin)


def test_closed_errors_carry_code_and_reason() -> None:
    ok = errors.closed_error(1000, "bye", by_peer=True)
    assert isinstance(ok, errors.ConnectionClosedOK)
    assert (ok.code, ok.reason, ok.by_peer) == (1000, "bye", True)
    assert str(ok) == "connection closed by peer: normal (1000): bye"
    bad = errors.closed_error(errors.CloseCode.HEARTBEAT_TIMEOUT)
    assert isinstance(bad, errors.ConnectionClosedError)
    assert "heartbeat timeout (4009)" in str(bad)
    assert errors.CloseCode.describe(4999) == "code 4999"


@pytest.mark.parametrize(
    "build",
    [
        lambda: SocketOptions(connect_timeout=0),
        lambda: SocketOptions(send_buffer=-1),
        lambda: KeepAlive(idle=0),
        lambda: ProtocolOptions(codecs=()),
        lambda: ProtocolOptions(max_frame_size=10),
        lambda: ProtocolOptions(heartbeat=-1),
        lambda: ProtocolOptions(heartbeat_misses=0),
        lambda: ProtocolOptions(secret=b"short"),
        lambda: ProtocolOptions(name="x" * 300),
        lambda: ProtocolOptions(checksum="maybe"),  # type: ignore[arg-type]
        lambda: TLSOptions(key_file="k.pem"),
        lambda: TLSOptions(client_auth="sometimes"),  # type: ignore[arg-type]
    ],
)
def test_invalid_options_raise_config_error(build: object) -> None:
    with pytest.raises(errors.ConfigError):
        build()  # type: ignore[operator]
