"""TLS contexts from TLSOptions, and TLS failures translated into clear errors.

Clients verify the server certificate and host name by default, against the system store or
``ca_file``. TLS 1.2 is the minimum. Servers can ask for client certificates (mutual TLS).
"""

from __future__ import annotations

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


def _versions(ctx: ssl.SSLContext, opts: TLSOptions) -> None:
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if opts.minimum_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )


def _load_chain(ctx: ssl.SSLContext, opts: TLSOptions, who: str) -> None:
    if not opts.cert_file:
        return
    try:
        ctx.load_cert_chain(opts.cert_file, opts.key_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"{who} certificate or key file not found: {exc.filename}") from exc
    except ssl.SSLError as exc:
        raise ConfigError(
            f"cannot load the {who} certificate {opts.cert_file!r}"
            f"{' with key ' + repr(opts.key_file) if opts.key_file else ''}: {exc.reason or exc} "
            "(is the key the one that goes with this certificate?)"
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
            "a TLS server needs a certificate and key (--tls-cert/--tls-key); "
            "`opensocket cert` makes a development set"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _versions(ctx, opts)
    _load_chain(ctx, opts, "server")
    if opts.client_auth != "none":
        ctx.verify_mode = ssl.CERT_REQUIRED if opts.client_auth == "required" else ssl.CERT_OPTIONAL
        if opts.ca_file:
            _load_ca(ctx, opts.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    return ctx


def server_hostname(addr: Address, opts: TLSOptions | ssl.SSLContext | None) -> str:
    """The name to send in SNI and to check against the certificate."""
    if isinstance(opts, TLSOptions) and opts.server_hostname:
        return opts.server_hostname
    return addr.host


def tls_error(exc: BaseException, peer: str, *, server_side: bool = False) -> TLSError:
    """Translate an ssl failure during the handshake into an error naming host and reason."""
    if isinstance(exc, TLSError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        detail = exc.verify_message
        if code in _HOSTNAME:
            return HostnameMismatch(
                f"the certificate of {peer} does not match the host name ({detail}): "
                "connect with the name the certificate was issued for, or set server_hostname"
            )
        if code in _EXPIRED:
            return CertificateExpired(
                f"the certificate of {peer} is expired or not yet valid ({detail})"
            )
        if code in _UNKNOWN_CA:
            return UnknownCA(
                f"the certificate of {peer} is not signed by a trusted CA ({detail}): "
                "pass the CA file (--tls-ca) or install it in the system store"
            )
        return TLSHandshakeError(f"the certificate of {peer} failed verification: {detail}")
    reason = getattr(exc, "reason", None) or ""
    if reason in (
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "UNKNOWN_PROTOCOL",
        "RECORD_LAYER_FAILURE",
    ):
        if server_side:
            return NotTLS(f"the client {peer} is not speaking TLS (it sent plaintext)")
        return NotTLS(
            f"{peer} is not speaking TLS (it answered in plaintext): use tcp:// or check the port"
        )
    if reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE"):
        return UnknownCA(f"{peer} rejected our certificate ({reason}): it does not trust our CA")
    if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
        return TLSHandshakeError(
            f"{peer} requires a client certificate (mutual TLS): pass --tls-cert/--tls-key"
        )
    if reason == "CERTIFICATE_VERIFY_FAILED":
        return UnknownCA(f"the certificate of {peer} failed verification: {exc}")
    if isinstance(exc, ConnectionResetError | EOFError | ssl.SSLEOFError | BrokenPipeError):
        if server_side:
            return TLSHandshakeError(f"the client {peer} closed the connection during TLS")
        return TLSHandshakeError(
            f"{peer} closed the connection during the TLS handshake: it may not speak TLS, "
            "or it rejected our certificate"
        )
    return TLSHandshakeError(f"TLS handshake with {peer} failed: {reason or exc}")
