"""Every error opensocket raises, under one root.

The tree::

    OpenSocketError
    ├── AddressError (ValueError)              a malformed or unsupported address
    ├── ConfigError (ValueError)               an invalid option value
    ├── ConnectError (ConnectionError)         could not establish a connection
    │   ├── ConnectionRefused (ConnectionRefusedError)
    │   ├── HostUnreachable
    │   ├── ConnectTimeout (TimeoutError)
    │   ├── NameResolutionError
    │   └── ConnectionRejected                 the server refused us by policy (limits, ACL)
    ├── AddressInUse (OSError)                 bind failed: someone else holds the address
    ├── TLSError
    │   ├── CertificateError
    │   │   ├── UnknownCA
    │   │   ├── HostnameMismatch
    │   │   └── CertificateExpired
    │   ├── NotTLS                             the peer does not speak TLS
    │   └── TLSHandshakeError                  any other TLS handshake failure
    ├── ProtocolError                          the framed protocol was violated (has .code)
    │   ├── BadMagic
    │   ├── UnsupportedVersion
    │   ├── FrameTooLarge
    │   ├── ChecksumMismatch
    │   ├── UnexpectedFrame
    │   ├── CodecError                         a payload failed to encode or decode
    │   ├── MalformedEnvelope                  a messaging-pattern frame is not valid
    │   ├── InvalidChatMessage                 a chat command/event is invalid (in opensocket.chat)
    │   └── HandshakeError
    │       ├── HandshakeTimeout (TimeoutError)
    │       ├── AuthenticationFailed
    │       └── NegotiationFailed              no common version or codec
    ├── HttpError                              an HTTP exchange failed (not an error status)
    │   ├── MalformedResponse
    │   ├── TooManyRedirects
    │   ├── RedirectRefused                    https -> http, or not an http(s) location
    │   ├── BodyTooLarge
    │   └── BinaryOutputRefused                'http get' would write binary to a terminal
    ├── QueueFull                              a high-water mark was reached (policy "raise")
    ├── SendBufferFull (BlockingIOError)       a reliable-UDP send buffer is full: wait, retry
    ├── RequestAborted (ConnectionError)       the replier's link was lost; not retryable
    ├── ReplyError                             the replier's handler failed (its text)
    ├── PoolClosed                             a connection pool was closed: no more checkouts
    ├── BenchFailed                            a bench test was refused, could not run or was cut
    ├── TransferError                          a file transfer failed (the message says what to do)
    │   ├── TransferProtocolError              the peer broke the protocol (also ProtocolError)
    │   ├── PathRefused                        a sender's path would leave the destination folder
    │   ├── DiskFull (OSError)                 not enough free space, before or during a transfer
    │   ├── CodeMismatch                       the code phrases differ (also AuthenticationFailed)
    │   └── PeerFailed                         the other side reported an error and stopped
    ├── ConnectionClosed (ConnectionError)     the connection is closed (has .code, .reason)
    │   ├── ConnectionClosedOK                 closed normally
    │   └── ConnectionClosedError              closed by an error, a timeout or a lost link
    │       └── PeerDisconnected               the other side went away without closing
    └── OperationTimeout (TimeoutError)
        ├── ReadTimeout
        ├── WriteTimeout
        ├── RequestTimeout                     no reply before the request's deadline
        └── PoolExhausted                      no pooled connection freed within the wait

Errors translated from an ``OSError`` keep it as ``__cause__``.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "AddressError",
    "AddressInUse",
    "AuthenticationFailed",
    "BadMagic",
    "BenchFailed",
    "BinaryOutputRefused",
    "BodyTooLarge",
    "CertificateError",
    "CertificateExpired",
    "ChecksumMismatch",
    "CloseCode",
    "CodeMismatch",
    "CodecError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectionRefused",
    "ConnectionRejected",
    "DiskFull",
    "FrameTooLarge",
    "HandshakeError",
    "HandshakeTimeout",
    "HostUnreachable",
    "HostnameMismatch",
    "HttpError",
    "MalformedEnvelope",
    "MalformedResponse",
    "NameResolutionError",
    "NegotiationFailed",
    "NotTLS",
    "OpenSocketError",
    "OperationTimeout",
    "PathRefused",
    "PeerDisconnected",
    "PeerFailed",
    "PoolClosed",
    "PoolExhausted",
    "ProtocolError",
    "QueueFull",
    "ReadTimeout",
    "RedirectRefused",
    "ReplyError",
    "RequestAborted",
    "RequestTimeout",
    "SendBufferFull",
    "TLSError",
    "TLSHandshakeError",
    "TooManyRedirects",
    "TransferError",
    "TransferProtocolError",
    "UnexpectedFrame",
    "UnknownCA",
    "UnsupportedVersion",
    "WriteTimeout",
]


class CloseCode(IntEnum):
    """Codes carried by CLOSE and ERROR frames (see docs/protocol.md)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED = 1003
    NO_CODE = 1005
    ABNORMAL = 1006
    INVALID_PAYLOAD = 1007
    POLICY = 1008
    TOO_LARGE = 1009
    INTERNAL_ERROR = 1011
    BAD_MAGIC = 4001
    UNSUPPORTED_VERSION = 4002
    CHECKSUM_MISMATCH = 4003
    HANDSHAKE_FAILED = 4004
    HANDSHAKE_TIMEOUT = 4005
    AUTH_FAILED = 4006
    AUTH_REQUIRED = 4007
    NEGOTIATION_FAILED = 4008
    HEARTBEAT_TIMEOUT = 4009
    IDLE_TIMEOUT = 4010
    SLOW_CONSUMER = 4011
    CONNECTION_LIMIT = 4012
    RATE_LIMITED = 4013
    ACCESS_DENIED = 4014

    @classmethod
    def describe(cls, code: int) -> str:
        """Return a readable name for a code, known or not."""
        try:
            return cls(code).name.lower().replace("_", " ")
        except ValueError:
            return f"code {code}"


class OpenSocketError(Exception):
    """Root of every error raised by opensocket."""


class AddressError(OpenSocketError, ValueError):
    """An address could not be parsed or is not valid for this use."""


class ConfigError(OpenSocketError, ValueError):
    """An option has a value that cannot work."""


class ConnectError(OpenSocketError, ConnectionError):
    """A connection could not be established."""


class ConnectionRefused(ConnectError, ConnectionRefusedError):
    """Nothing is listening at the address."""


class HostUnreachable(ConnectError):
    """The network has no route to the host."""


class ConnectTimeout(ConnectError, TimeoutError):
    """Connecting took longer than the connect timeout."""


class NameResolutionError(ConnectError):
    """The host name could not be resolved."""


class ConnectionRejected(ConnectError):
    """The server accepted the socket but refused the connection by policy."""

    def __init__(self, message: str, code: int = CloseCode.POLICY) -> None:
        super().__init__(message)
        self.code = code


class AddressInUse(OpenSocketError, OSError):
    """A bind failed because the address is already in use."""


class TLSError(OpenSocketError):
    """TLS could not be established."""


class CertificateError(TLSError):
    """The peer's certificate failed verification."""


class UnknownCA(CertificateError):
    """The certificate is not signed by a trusted certificate authority."""


class HostnameMismatch(CertificateError):
    """The certificate does not name the host we connected to."""


class CertificateExpired(CertificateError):
    """The certificate is expired or not yet valid."""


class NotTLS(TLSError):
    """The peer does not speak TLS (plaintext on one side, TLS on the other)."""


class TLSHandshakeError(TLSError):
    """Any other failure of the TLS handshake."""


class ProtocolError(OpenSocketError):
    """The framed protocol was violated; ``code`` is what goes on the wire."""

    code: int = CloseCode.PROTOCOL_ERROR

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class BadMagic(ProtocolError):
    """A frame did not start with the magic number: the peer is not opensocket."""

    code = CloseCode.BAD_MAGIC


class UnsupportedVersion(ProtocolError):
    """A frame carries a protocol version this side does not speak."""

    code = CloseCode.UNSUPPORTED_VERSION


class FrameTooLarge(ProtocolError):
    """A frame is larger than the negotiated maximum."""

    code = CloseCode.TOO_LARGE


class ChecksumMismatch(ProtocolError):
    """A frame's checksum does not match its contents: it was corrupted."""

    code = CloseCode.CHECKSUM_MISMATCH


class UnexpectedFrame(ProtocolError):
    """A frame arrived that is not allowed in the current state."""


class CodecError(ProtocolError):
    """A payload could not be encoded or decoded with the connection's codec."""

    code = CloseCode.INVALID_PAYLOAD


class HandshakeError(ProtocolError):
    """The opening handshake failed."""

    code = CloseCode.HANDSHAKE_FAILED


class HandshakeTimeout(HandshakeError, TimeoutError):
    """The peer did not complete the handshake in time."""

    code = CloseCode.HANDSHAKE_TIMEOUT


class AuthenticationFailed(HandshakeError):
    """The shared-secret authentication failed."""

    code = CloseCode.AUTH_FAILED


class NegotiationFailed(HandshakeError):
    """The two sides share no protocol version or payload codec."""

    code = CloseCode.NEGOTIATION_FAILED


class MalformedEnvelope(ProtocolError):
    """A messaging-pattern frame (types 0x21-0x3F) is not valid."""


class QueueFull(OpenSocketError):
    """A queue is at its high-water mark and its policy is "raise"."""


class SendBufferFull(OpenSocketError, BlockingIOError):
    """A send would exceed the connection's send buffer: wait until it is writable again."""


class RequestAborted(OpenSocketError, ConnectionError):
    """The connection carrying a request was lost and the request is not retryable."""


class ReplyError(OpenSocketError):
    """The replier's handler failed; the message is the error text it sent back."""


class HttpError(OpenSocketError):
    """An HTTP exchange failed (a response with an error status is not an exception)."""


class MalformedResponse(HttpError):
    """The server sent something that is not valid HTTP/1.1, or closed mid-response."""


class TooManyRedirects(HttpError):
    """The server redirected more often than ``max_redirects`` allows."""


class RedirectRefused(HttpError):
    """A redirect that is not followed: https -> http, or a scheme other than http(s)."""


class BodyTooLarge(HttpError):
    """The response body is larger than ``max_body``."""


class BinaryOutputRefused(HttpError):
    """``http get`` would write a binary body to a terminal (use -o FILE, or -o -)."""


class BenchFailed(OpenSocketError):
    """A bench test could not run, was refused by the server or was cut short."""


class TransferError(OpenSocketError):
    """A file transfer failed."""


class TransferProtocolError(TransferError, ProtocolError):
    """The peer sent something the transfer protocol does not allow."""


class PathRefused(TransferError):
    """A path from the sender would leave the destination folder, or is not a valid name."""


class DiskFull(TransferError, OSError):
    """The destination has not enough free space."""

    def __str__(self) -> str:
        return str(self.strerror or super().__str__())


class CodeMismatch(TransferError, AuthenticationFailed):
    """The two sides were given different code phrases."""


class PeerFailed(TransferError):
    """The other side reported an error and stopped the transfer."""


class ConnectionClosed(OpenSocketError, ConnectionError):
    """The connection is closed; ``code`` and ``reason`` say why."""

    def __init__(self, code: int, reason: str = "", *, by_peer: bool = False) -> None:
        self.code = code
        self.reason = reason
        self.by_peer = by_peer
        who = "peer" if by_peer else "local side"
        text = f"connection closed by {who}: {CloseCode.describe(code)} ({code})"
        super().__init__(f"{text}: {reason}" if reason else text)


class ConnectionClosedOK(ConnectionClosed):
    """The connection was closed normally."""


class ConnectionClosedError(ConnectionClosed):
    """The connection was closed by an error, a timeout or a lost link."""


class PeerDisconnected(ConnectionClosedError):
    """The other side went away without closing (reset, killed, crashed, its link dropped)."""

    def __init__(self, message: str) -> None:
        super().__init__(CloseCode.ABNORMAL, message, by_peer=True)

    def __str__(self) -> str:
        # the close-code wording ("closed by peer: abnormal (1006)") adds nothing: the message
        # says who went away and how, once
        return self.reason


class OperationTimeout(OpenSocketError, TimeoutError):
    """A read or write did not complete in time."""


class ReadTimeout(OperationTimeout):
    """Nothing arrived within the read timeout."""


class WriteTimeout(OperationTimeout):
    """The peer did not take our data within the write timeout."""


class RequestTimeout(OperationTimeout):
    """No reply arrived before the request's deadline."""


class PoolExhausted(OperationTimeout):
    """Every pooled connection stayed checked out for the whole acquire timeout."""


class PoolClosed(OpenSocketError):
    """The pool was closed: no more checkouts."""


def closed_error(code: int, reason: str = "", *, by_peer: bool = False) -> ConnectionClosed:
    """Build the right ConnectionClosed subclass for a close code."""
    ok = code in (CloseCode.NORMAL, CloseCode.GOING_AWAY)
    cls = ConnectionClosedOK if ok else ConnectionClosedError
    return cls(code, reason, by_peer=by_peer)
