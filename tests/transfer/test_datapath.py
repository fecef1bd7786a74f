"""The fast data path: AEAD into reused buffers, one recv per record (MSG_WAITALL), the
receiver's hash and write threads, and buffers that come back when a job fails."""

from __future__ import annotations

import os
import queue
import socket
import threading
from pathlib import Path

import pytest

from opensocket.transfer import TransferError, TransferProtocolError
from opensocket.transfer._common import Release, Worker
from opensocket.transfer._link import Link
from opensocket.transfer.crypto import TAG, RecordCipher
from opensocket.transfer.protocol import BLOCK, MAX_DATA, Rec, pack_header

from .test_hostile import Receiver, forge, item


def test_cipher_into_buffers_match_the_allocating_path() -> None:
    key, header = os.urandom(32), pack_header(Rec.DATA, BLOCK + TAG, 0)
    block = os.urandom(BLOCK)
    scratch, plain = bytearray(MAX_DATA), bytearray(MAX_DATA)
    sealed = bytes(RecordCipher(key).seal(header, block, scratch))
    assert sealed == RecordCipher(key).seal(header, block)  # same nonce, same bytes
    assert bytes(RecordCipher(key).open(header, sealed, plain)) == block
    assert plain[:BLOCK] == block
    tampered = bytearray(sealed)
    tampered[5] ^= 1
    with pytest.raises(TransferProtocolError, match="altered in transit"):
        RecordCipher(key).open(header, bytes(tampered), plain)


def _sealed_pair() -> tuple[Link, Link]:
    left, right = socket.socketpair()  # AF_UNIX: the plain path, MSG_WAITALL
    sender, receiver = Link(left, "a"), Link(right, "b")
    key = os.urandom(32)
    sender.out, receiver.into = RecordCipher(key), RecordCipher(key)
    return sender, receiver


def test_sealed_records_through_reused_buffers() -> None:
    sender, receiver = _sealed_pair()
    blocks = [os.urandom(BLOCK) for _ in range(3)]
    offer = os.urandom(3 * MAX_DATA)  # a control record larger than the scratch buffer

    def write() -> None:
        sender.send(Rec.OFFER, offer)
        for index, block in enumerate(blocks):
            sender.send(Rec.DATA, block, arg=index * BLOCK)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        head, raw = receiver.recv_header()
        assert head.type is Rec.OFFER and receiver.recv_payload(head, raw) == offer
        into = bytearray(MAX_DATA)
        for index, block in enumerate(blocks):
            head, raw = receiver.recv_header()
            payload = receiver.recv_payload(head, raw, into)
            assert head.arg == index * BLOCK and payload == block
            assert payload.obj is into  # opened in place of the caller's buffer
    finally:
        thread.join(10)
        sender.close()
        receiver.close()
    assert sender.sent == receiver.received


def test_worker_cleanup_runs_for_failed_and_skipped_jobs() -> None:
    worker = Worker("test-worker")
    pool: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    ran: list[int] = []

    def fail() -> None:
        raise OSError(28, "forged ENOSPC")

    try:
        worker.submit(fail, lambda: pool.put(bytearray(1)))
        worker.submit(lambda: ran.append(1), lambda: pool.put(bytearray(2)))
        with pytest.raises(OSError, match="forged ENOSPC"):
            worker.drain()
        with pytest.raises(OSError, match="forged ENOSPC"):
            worker.submit(lambda: ran.append(2), lambda: pool.put(bytearray(3)))
        worker.stop()
    finally:
        worker.stop()
    assert ran == []  # nothing runs after the first error
    assert sorted(len(pool.get_nowait()) for _ in range(3)) == [1, 2, 3]  # every buffer back


def test_release_after_the_last_user() -> None:
    pool: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    buf = bytearray(4)
    release = Release(pool, buf, 2)
    release()
    assert pool.empty()
    release()
    assert pool.get_nowait() is buf


def test_stalled_sender_mid_record_times_out(tmp_path: Path) -> None:
    # MSG_WAITALL with SO_RCVTIMEO: half a record, then silence, ends in the timeout error
    dest = tmp_path / "dest"
    dest.mkdir()
    rx = Receiver(dest, timeout=0.5)
    assert rx.url is not None
    stop = threading.Event()

    def stall(link: Link) -> None:
        link.send_json(Rec.FILE, {"start": 0}, arg=0)
        link.sock.sendall(pack_header(Rec.DATA, BLOCK, 0) + bytes(1000))
        stop.wait(10)

    thread = threading.Thread(target=forge, args=(rx.url, [item("f.bin", 2 * BLOCK)], stall))
    thread.start()
    result = rx.wait()
    stop.set()
    thread.join(10)
    assert isinstance(result, TransferError) and "for too long" in str(result)
    assert not (dest / "f.bin").exists()
