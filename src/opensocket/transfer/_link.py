"""The blocking runtime's connection: open or accept one socket (TCP, TLS or Unix), move
records with large buffers, and run the HELLO/PAKE/CONFIRM opening.

Blocking sockets on purpose: a transfer is one connection, and the bulk path is a loop of
``sendmsg``/``recv_into`` calls on 1 MiB buffers that release the GIL, so an event loop would
only add overhead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import selectors
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any, Final

from .. import tls as tlsmod
from .._sockets import bind_sockets, close_quietly
from ..address import Address, from_sockaddr, stream_address
from ..errors import (
    ConnectionClosedError,
    OpenSocketError,
    PeerDisconnected,
    PeerFailed,
    TLSHandshakeError,
    TransferError,
    TransferProtocolError,
)
from ..options import SocketOptions, TLSOptions
from ..sync._connect import open_socket
from .crypto import TAG, Pake, RecordCipher
from .protocol import (
    HEADER,
    MAX_DATA,
    VERSION,
    Header,
    Machine,
    Rec,
    decode_json,
    encode_json,
    pack_header,
    parse_header,
)

__all__ = ["Link", "hash_factory", "open_link"]

HELLO_TIMEOUT: Final = 10.0
log = logging.getLogger("opensocket.transfer")


def hash_factory(name: str) -> Callable[[], Any]:
    """The constructor of a hash algorithm by its protocol name."""
    if name == "blake3":
        import blake3

        return blake3.blake3
    if name == "sha256":
        return hashlib.sha256
    raise TransferProtocolError(f"unknown hash algorithm {name!r}")


def local_hashes() -> list[str]:
    """Hash algorithms this side can use, preferred first (BLAKE3: ~4x faster than SHA-256)."""
    try:
        import blake3  # noqa: F401
    except ImportError:
        return ["sha256"]
    return ["blake3", "sha256"]


def _tune(sock: socket.socket, timeout: float | None, *, tls: bool) -> None:
    # Plain sockets: fully blocking, the timeout enforced by the kernel (SO_RCVTIMEO), because
    # a Python-level timeout adds a poll() before every recv_into. TLS keeps Python's timeout.
    if tls or timeout is None:
        sock.settimeout(timeout)
    else:
        sock.settimeout(None)
        whole = int(timeout)
        tv = struct.pack("ll", whole, int((timeout - whole) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # No SO_SNDBUF/SO_RCVBUF: setting them turns off TCP autotuning, and net.core.rmem_max
    # (often 208 KiB) caps them far below what autotuning reaches (tcp_rmem max).


def _accept_one(listeners: list[socket.socket], addr: Address) -> tuple[socket.socket, str]:
    with selectors.DefaultSelector() as sel:
        for lsock in listeners:
            sel.register(lsock, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    conn, peer = ready.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                return conn, str(from_sockaddr(addr.scheme, peer)) if peer else str(addr)


def _listen(
    addr: Address,
    ctx: ssl.SSLContext | None,
    timeout: float | None,
    announce: Callable[[Address], None],
) -> Link:
    """Accept peers until one opens with a valid HELLO (port scanners, stray clients and
    failed TLS handshakes are logged and dropped: they must not end the transfer)."""
    listeners = bind_sockets(addr, SocketOptions())
    made = _socket_file(addr)
    try:
        bound = from_sockaddr(addr.scheme, listeners[0].getsockname())
        announce(bound.with_scheme(addr.scheme) if not addr.is_unix else addr)
        while True:
            sock, peer = _accept_one(listeners, addr)
            try:
                link = _secure(sock, peer, ctx, timeout, listen=True, hostname=None)
                link.pending = link.recv_header_payload(Rec.HELLO, HELLO_TIMEOUT)
            except OpenSocketError as exc:
                log.warning("dropped a connection from %s: %s", peer, _stray(exc))
                close_quietly(sock)
                continue
            link.restore_timeout(timeout)
            return link
    finally:
        for lsock in listeners:
            close_quietly(lsock)
        if made is not None:
            _remove_socket_file(addr.path, made)


def _stray(exc: OpenSocketError) -> str:
    """Why a connection that never opened a transfer was dropped (port scanners, nc, ...)."""
    if isinstance(exc, ConnectionClosedError):
        return "it closed without opening a transfer"
    if isinstance(exc, TransferError) and "too long" in str(exc):
        return f"it opened no transfer within {HELLO_TIMEOUT:g} s"
    if isinstance(exc, TransferProtocolError):
        return f"not an opensocket transfer ({exc})"
    return str(exc)


def _socket_file(addr: Address) -> tuple[int, int] | None:
    """The (device, inode) of the Unix socket file we just bound, to remove it at the end."""
    if not addr.is_unix or addr.is_abstract:
        return None
    try:
        st = os.stat(addr.path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _remove_socket_file(path: str, made: tuple[int, int]) -> None:
    # only the file we created: another listener may have bound the path since
    with contextlib.suppress(OSError):
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == made:
            os.unlink(path)


def _secure(
    sock: socket.socket,
    peer: str,
    ctx: ssl.SSLContext | None,
    timeout: float | None,
    *,
    listen: bool,
    hostname: str | None,
) -> Link:
    _tune(sock, timeout, tls=ctx is not None)
    if ctx is None:
        return Link(sock, peer)
    try:
        wrapped = ctx.wrap_socket(sock, server_side=listen, server_hostname=hostname)
    except TimeoutError as exc:
        close_quietly(sock)
        raise TLSHandshakeError(f"the TLS handshake with {peer} timed out") from exc
    except (ssl.SSLError, OSError) as exc:
        close_quietly(sock)
        raise tlsmod.tls_error(exc, peer, server_side=listen) from exc
    return Link(wrapped, peer)


def open_link(
    url: str | Address,
    *,
    listen: bool,
    tls: TLSOptions | None = None,
    timeout: float | None = 60.0,
    announce: Callable[[Address], None] = lambda addr: None,
) -> Link:
    """Connect to ``url``, or listen on it until a peer says HELLO; TLS for tls:// addresses."""
    addr = stream_address(url)
    if tls is not None and not addr.is_tls:
        raise TransferError(f"TLS options are given but {addr} is not a tls:// address")
    if listen:
        ctx = tlsmod.server_context(tls) if addr.is_tls else None
        return _listen(addr, ctx, timeout, announce)
    ctx = tlsmod.client_context(tls) if addr.is_tls else None
    sock = open_socket(addr, SocketOptions(connect_timeout=timeout or 10.0))
    hostname = tlsmod.server_hostname(addr, tls) if ctx is not None else None
    return _secure(sock, str(addr), ctx, timeout, listen=False, hostname=hostname)


class Link:
    """Records over one connected socket, sealed once a code phrase is confirmed."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer  # a URL with its scheme, the same form on both sides
        self.peer_role = "the other side"  # "the sender"/"the receiver" once HELLO is sent
        self.out: RecordCipher | None = None
        self.into: RecordCipher | None = None
        self.sent = 0  # bytes written to the socket
        self.received = 0
        self._head = bytearray(HEADER.size)
        self._plain = not isinstance(sock, ssl.SSLSocket)
        # MSG_WAITALL: one recv call per record instead of one per 64 KiB that arrived
        # (each call costs Python overhead and a GIL round trip); SSL sockets take no flags.
        self._waitall = socket.MSG_WAITALL if self._plain else 0
        self._sealed_out: bytearray | None = None  # scratch for sealing (AEAD), reused
        self._sealed_in: bytearray | None = None  # scratch for sealed payloads, reused
        self.pending: tuple[Header, bytes, memoryview] | None = None

    @property
    def encryption(self) -> str:
        """What protects the bytes on the wire."""
        tls = "" if self._plain else "tls"
        if self.out is not None:
            return f"{tls}+code" if tls else "code"
        return tls or "plain"

    def close(self) -> None:
        """Close the socket."""
        close_quietly(self.sock)

    # -- sending --------------------------------------------------------------------------------

    def send(
        self,
        rtype: Rec,
        payload: bytes | bytearray | memoryview = b"",
        arg: int = 0,
        flags: int = 0,
    ) -> int:
        """Write one record; return the payload bytes that went on the wire."""
        length = len(payload) + (TAG if self.out is not None else 0)
        header = pack_header(rtype, length, arg, flags)
        if self.out is not None:
            if self._sealed_out is None:
                self._sealed_out = bytearray(MAX_DATA)
            payload = self.out.seal(header, payload, self._sealed_out)
        try:
            if self._plain:
                self._sendmsg(header, payload)
            else:
                self.sock.sendall(header)
                self.sock.sendall(payload)
        except OSError as exc:
            raise self._why_stopped() or self._lost(exc) from exc
        self.sent += HEADER.size + length
        return length

    def send_json(self, rtype: Rec, obj: dict[str, Any], arg: int = 0) -> None:
        """Write a control record."""
        self.send(rtype, encode_json(obj), arg)

    def _sendmsg(self, header: bytes, payload: bytes | bytearray | memoryview) -> None:
        total = len(header) + len(payload)
        done = self.sock.sendmsg([header, payload])
        while done < total:  # rare: a partial write of a large buffer
            if done < len(header):
                done += self.sock.sendmsg([memoryview(header)[done:], payload])
            else:
                with memoryview(payload) as view:
                    self.sock.sendall(view[done - len(header) :])
                done = total

    # -- receiving ------------------------------------------------------------------------------

    def _why_stopped(self) -> PeerFailed | None:
        """After a failed write: the ERROR record the peer sent before closing, if it is there
        (Linux keeps received bytes readable after a reset), so the user learns the cause."""
        try:
            self.sock.settimeout(0.5)
            head, raw = self.recv_header()
            if head.type is not Rec.ERROR:
                return None
            message = decode_json(head.type, self.recv_payload(head, raw)).get("message", "")
        except (OpenSocketError, OSError, ValueError):
            return None
        return PeerFailed(f"the other side stopped: {message}")

    def _lost(self, exc: OSError | None = None) -> OpenSocketError:
        """The error for a connection that failed under us: who went away, said once."""
        who = f"{self.peer_role} ({self.peer})"
        if isinstance(exc, TimeoutError | BlockingIOError):
            return TransferError(f"{who} sent nothing for too long (timeout): giving up")
        if exc is None:
            return PeerDisconnected(f"{who} disconnected before the transfer finished")
        why = (exc.strerror or str(exc)).lower()
        return PeerDisconnected(f"{who} disconnected ({why})")

    def _fill(self, view: memoryview) -> None:
        got, total = 0, len(view)
        while got < total:
            try:
                count = self.sock.recv_into(view[got:], total - got, self._waitall)
            except OSError as exc:
                raise self._lost(exc) from exc
            if not count:
                raise self._lost()
            got += count
        self.received += total

    def recv_header(self) -> tuple[Header, bytes]:
        """Read the next header; return it decoded and as bytes (the AEAD's associated data)."""
        with memoryview(self._head) as view:
            self._fill(view)
        raw = bytes(self._head)
        return parse_header(raw), raw

    def recv_payload(self, head: Header, raw: bytes, into: bytearray | None = None) -> memoryview:
        """Read a record's payload (into ``into`` when given) and open its seal."""
        if self.into is None:
            buf = into if into is not None and len(into) >= head.length else None
            view = memoryview(buf if buf is not None else bytearray(head.length))[: head.length]
            self._fill(view)
            return view
        if head.length < TAG:
            raise TransferProtocolError(f"record {head.type.name} is shorter than its AEAD tag")
        if self._sealed_in is None:
            self._sealed_in = bytearray(MAX_DATA)
        # the sealed bytes land in a scratch buffer and open into ``into``: no allocation
        scratch = self._sealed_in if head.length <= MAX_DATA else bytearray(head.length)
        sealed = memoryview(scratch)[: head.length]
        self._fill(sealed)
        return memoryview(self.into.open(raw, sealed, into))

    def recv_header_payload(self, rtype: Rec, timeout: float) -> tuple[Header, bytes, memoryview]:
        """The first record, which must be ``rtype``, within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        head, raw = self.recv_header()
        if head.type is not rtype:
            raise TransferProtocolError(f"the peer opened with {head.type.name}, not {rtype.name}")
        return head, raw, self.recv_payload(head, raw)

    def restore_timeout(self, timeout: float | None) -> None:
        """Back to the transfer's timeout after the opening."""
        _tune(self.sock, timeout, tls=not self._plain)

    def recv(self, machine: Machine, into: bytearray | None = None) -> tuple[Header, memoryview]:
        """The next record, checked against ``machine``; an ERROR record raises PeerFailed."""
        if self.pending is not None:
            (head, _, payload), self.pending = self.pending, None
        else:
            head, raw = self.recv_header()
            payload = self.recv_payload(head, raw, into)
        machine.check(head.type)
        if head.type is Rec.ERROR:
            message = decode_json(head.type, payload).get("message", "")
            raise PeerFailed(f"the other side stopped: {message}")
        return head, payload

    def send_error(self, message: str) -> None:
        """Tell the peer why we stop (best effort: the link may already be gone)."""
        try:
            self.send_json(Rec.ERROR, {"message": message})
        except OpenSocketError:
            pass


def opening(
    link: Link, machine: Machine, role: str, code: str | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """HELLO both ways, then SPAKE2 and key confirmation with a code; return the peer's HELLO."""
    hello = {"v": VERSION, "role": role, "code": code is not None, **extra}
    link.peer_role = "the receiver" if role == "send" else "the sender"
    mine = encode_json(hello)
    link.send(Rec.HELLO, mine)
    head, payload = link.recv(machine)
    theirs_raw = bytes(payload)
    theirs = decode_json(head.type, theirs_raw)
    _check_hello(theirs, role, code is not None)
    if code is None:
        return theirs
    machine.use_code()
    pake = Pake(code, role)
    link.send(Rec.PAKE, pake.start())
    _, msg = link.recv(machine)
    hellos = mine + theirs_raw if role == "send" else theirs_raw + mine
    link.send(Rec.CONFIRM, pake.finish(bytes(msg), hellos))
    _, confirm = link.recv(machine)
    link.out, link.into = pake.verify(bytes(confirm))
    return theirs


def _check_hello(hello: dict[str, Any], role: str, code: bool) -> None:
    if hello.get("v") != VERSION:
        raise TransferProtocolError(
            f"the other side speaks transfer protocol version {hello.get('v')!r}, we speak "
            f"{VERSION}: use the same opensocket version on both sides"
        )
    if hello.get("role") == role:
        raise TransferError(
            f"both sides want to {role}: run 'opensocket send' on one and 'opensocket receive' "
            "on the other"
        )
    if bool(hello.get("code")) != code:
        other = "receiver" if role == "send" else "sender"
        if code:
            raise TransferError(
                f"the {other} uses no code phrase but this side does: give the {other} the same "
                "--code (or run both with --no-code)"
            )
        raise TransferError(
            f"the {other} uses a code phrase (if it made one up, it printed it when it "
            "started): pass it with --code"
        )
