"""TLS contexts from TLSOptions, and TLS failures translated into clear errors.

Clients verify the server certificate and host name by default, against the system store or
``ca_file``. TLS 1.2 is the minimum. Servers can ask for client certificates (mutual TLS).
"""

from __future__ import annotations

import os
import ssl

from .address import Address
from .errors import (
    CertificateExpired,
    ConfigError,
    HostnameMismatch,
    NotTLS,
    TLSError,
    TLSHandshakeError,
    UnknownCA,
)
from .options import TLSOptions

__all__ = ["client_context", "server_context", "tls_error"]

# OpenSSL X509 verify result codes (x509_vfy.h) that deserve their own error class.
_UNKNOWN_CA = {2, 18, 19, 20, 21, 27}
_EXPIRED = {9, 10}
_HOSTNAME = {62, 64}
# OpenSSL reason codes, by what they mean for the user.
_PLAINTEXT = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"}
)
_ALERT_UNTRUSTED = frozenset(
    {"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"}
)
_NO_CLIENT_CERT = frozenset(
    {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"}
)
_VERSION = frozenset(
    {
        "UNSUPPORTED_PROTOCOL",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "NO_PROTOCOLS_AVAILABLE",
        "VERSION_TOO_LOW",
    }
)


def _versions(ctx: ssl.SSLContext, opts: TLSOptions) -> None:
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if opts.minimum_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )


def _load_chain(ctx: ssl.SSLContext, opts: TLSOptions, who: str) -> None:
    if not opts.cert_file:
        return
    for what, path in (("certificate", opts.cert_file), ("key", opts.key_file)):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"the {who} {what} file {path!r} does not exist")
    try:
        ctx.load_cert_chain(opts.cert_file, opts.key_file)
    except ssl.SSLError as exc:
        if opts.key_file is None:
            raise ConfigError(
                f"the {who} certificate {opts.cert_file!r} holds no private key: pass the key "
                "file too (key_file, --tls-key)"
            ) from exc
        raise ConfigError(
            f"cannot load the {who} certificate {opts.cert_file!r} with key "
            f"{opts.key_file!r}: {exc.reason or exc} (is the key the one that goes with this "
            "certificate?)"
        ) from exc


def _load_ca(ctx: ssl.SSLContext, ca_file: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"CA file not found: {ca_file}") from exc
    except ssl.SSLError as exc:
        raise ConfigError(f"cannot load CA file {ca_file!r}: {exc.reason or exc}") from exc


def client_context(opts: TLSOptions | ssl.SSLContext | None = None) -> ssl.SSLContext:
    """An SSLContext for connecting; verification on unless ``verify=False``."""
    if isinstance(opts, ssl.SSLContext):
        return opts
    opts = opts or TLSOptions()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _versions(ctx, opts)
    if opts.verify:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if opts.ca_file:
            _load_ca(ctx, opts.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    _load_chain(ctx, opts, "client")
    return ctx


def server_context(opts: TLSOptions | ssl.SSLContext | None) -> ssl.SSLContext:
    """An SSLContext for serving; needs a certificate and key."""
    if isinstance(opts, ssl.SSLContext):
        return opts
    if opts is None or not opts.cert_file:
        raise ConfigError(
            "a TLS server needs a certificate and its key (TLSOptions(cert_file=..., "
            "key_file=...), or --tls-cert/--tls-key on the command line); `opensocket cert` "
            "makes a development set"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _versions(ctx, opts)
    _load_chain(ctx, opts, "server")
    if opts.client_auth != "none":
        if not opts.ca_file:
            # Without it every client certificate would be refused at run time; say so now.
            raise ConfigError(
                f"client_auth={opts.client_auth!r} (mutual TLS) needs the CA that signs the "
                "client certificates: pass ca_file (--tls-ca)"
            )
        ctx.verify_mode = ssl.CERT_REQUIRED if opts.client_auth == "required" else ssl.CERT_OPTIONAL
        _load_ca(ctx, opts.ca_file)
    return ctx


def server_hostname(addr: Address, opts: TLSOptions | ssl.SSLContext | None) -> str:
    """The name to send in SNI and to check against the certificate."""
    if isinstance(opts, TLSOptions) and opts.server_hostname:
        return opts.server_hostname
    return addr.host


def _verify_error(exc: ssl.SSLCertVerificationError, peer: str, server_side: bool) -> TLSError:
    """A certificate check failed on our side; ``peer`` presented the certificate."""
    code, detail = exc.verify_code, exc.verify_message
    whose = f"the certificate of the client {peer}" if server_side else f"the certificate of {peer}"
    if code in _HOSTNAME:
        return HostnameMismatch(
            f"{whose} does not match the host name ({detail}): connect with a name the "
            "certificate was issued for, or set server_hostname (--tls-server-name)"
        )
    if code in _EXPIRED:
        return CertificateExpired(
            f"{whose} is expired or not yet valid ({detail}): renew it, or check the clocks"
        )
    if code in _UNKNOWN_CA:
        fix = (
            "add its CA to the server's ca_file (--tls-ca)"
            if server_side
            else "pass its CA as ca_file (--tls-ca) or install it in the system store"
        )
        return UnknownCA(f"{whose} is not signed by a trusted CA ({detail}): {fix}")
    return TLSHandshakeError(f"{whose} failed verification: {detail} (code {code})")


def _alert_error(reason: str, peer: str, server_side: bool) -> TLSError | None:
    """The peer sent a TLS alert (or OpenSSL refused what it offered)."""
    who = f"the client {peer}" if server_side else peer
    if reason in _PLAINTEXT:
        if server_side:
            return NotTLS(f"the client {peer} is not speaking TLS (it sent plaintext)")
        return NotTLS(
            f"{peer} is not speaking TLS (it answered in plaintext): use tcp:// or check the port"
        )
    if reason in _ALERT_UNTRUSTED:
        return UnknownCA(f"{who} rejected our certificate ({reason}): it does not trust our CA")
    if reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED":
        return CertificateExpired(f"{who} rejected our certificate as expired ({reason})")
    if reason in _NO_CLIENT_CERT:
        if server_side:
            return TLSHandshakeError(
                f"the client {peer} sent no certificate, and this server requires one "
                f"(client_auth='required'; {reason})"
            )
        return TLSHandshakeError(
            f"{peer} requires a client certificate (mutual TLS; {reason}): "
            "pass --tls-cert/--tls-key (cert_file/key_file) signed by a CA it trusts"
        )
    if reason in _VERSION:
        return TLSHandshakeError(
            f"{who} and this side have no TLS version in common ({reason}): "
            "opensocket needs TLS 1.2 or newer (1.3 with minimum_version='1.3')"
        )
    return None


def _closed_error(peer: str, server_side: bool) -> TLSError:
    if server_side:
        return TLSHandshakeError(
            f"the client {peer} closed the connection during the TLS handshake "
            "(does it trust our certificate's CA?)"
        )
    return TLSHandshakeError(
        f"{peer} closed the connection during the TLS handshake: it may not speak TLS, "
        "may require a client certificate or reject ours, or may not accept our TLS version"
    )


def tls_error(exc: BaseException, peer: str, *, server_side: bool = False) -> TLSError:
    """Translate an ssl failure during the handshake into an error naming host and reason.

    ``peer`` is the other side's address; ``server_side`` says we are the server.
    """
    if isinstance(exc, TLSError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _verify_error(exc, peer, server_side)
    reason = getattr(exc, "reason", None) or ""
    error = _alert_error(reason, peer, server_side)
    if error is not None:
        return error
    if isinstance(exc, ConnectionResetError | EOFError | ssl.SSLEOFError | BrokenPipeError):
        return _closed_error(peer, server_side)
    return TLSHandshakeError(f"TLS handshake with {peer} failed: {reason or exc}")
