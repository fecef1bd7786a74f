"""The frame inspector: exact records for known frame sequences, and non-frame streams."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest

from opensocket import aio
from opensocket.errors import ConnectionClosed
from opensocket.protocol.connection import encode_close
from opensocket.protocol.frame import FrameType, frame_bytes
from opensocket.proxy import Proxy
from opensocket.proxy.inspect import ConnectionInspector, format_record

from .conftest import Recorder, open_client, read_all

HELLO = b'{"checksum":true,"codecs":["json"],"name":"c","versions":[1]}'
WELCOME = b'{"checksum":true,"codec":"json","name":"s","version":1}'
SEQUENCE = [
    ("up", frame_bytes(FrameType.HELLO, HELLO)),
    ("down", frame_bytes(FrameType.WELCOME, WELCOME)),
    ("up", frame_bytes(FrameType.DATA, b'{"n":1}')),
    ("down", frame_bytes(FrameType.DATA, b"[1,2]")),
    ("up", frame_bytes(FrameType.PING, b"\x00" * 8)),
    ("up", frame_bytes(FrameType.CLOSE, encode_close(1000, "bye"))),
]


def _records(split: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    inspector = ConnectionInspector(7, records.append)
    for direction, data in SEQUENCE:
        for i in range(0, len(data), split):
            inspector.feed(direction, data[i : i + split], 1.5)
    return records


def _strip_time(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


@pytest.mark.parametrize("split", [1, 5, 1000])
def test_known_sequence_gives_exact_records(split: int) -> None:
    records = _records(split)
    assert _strip_time(records) == [
        {
            "conn": 7,
            "dir": "up",
            "type": "HELLO",
            "flags": ["CHECKSUM"],
            "length": len(HELLO),
            "payload": {"checksum": True, "codecs": ["json"], "name": "c", "versions": [1]},
        },
        {
            "conn": 7,
            "dir": "down",
            "type": "WELCOME",
            "flags": ["CHECKSUM"],
            "length": len(WELCOME),
            "payload": {"checksum": True, "codec": "json", "name": "s", "version": 1},
        },
        {
            "conn": 7,
            "dir": "up",
            "type": "DATA",
            "flags": ["CHECKSUM"],
            "length": 7,
            "payload": {"decoded": {"n": 1}, "codec": "json"},
        },
        {
            "conn": 7,
            "dir": "down",
            "type": "DATA",
            "flags": ["CHECKSUM"],
            "length": 5,
            "payload": {"decoded": [1, 2], "codec": "json"},
        },
        {
            "conn": 7,
            "dir": "up",
            "type": "PING",
            "flags": ["CHECKSUM"],
            "length": 8,
            "payload": {"hex": "00" * 8, "ascii": "." * 8, "truncated": False},
        },
        {
            "conn": 7,
            "dir": "up",
            "type": "CLOSE",
            "flags": ["CHECKSUM"],
            "length": 5,
            "payload": {"code": 1000, "reason": "bye"},
        },
    ]
    assert {r["time"] for r in records} == {1.5}


def test_text_lines() -> None:
    lines = [format_record(r) for r in _records(1000)]
    assert lines[0].startswith("    1.500s #7 up   HELLO    flags=CHECKSUM len=61 {")
    assert lines[2] == '    1.500s #7 up   DATA     flags=CHECKSUM len=7 {"n":1}'
    assert lines[4] == (
        "    1.500s #7 up   PING     flags=CHECKSUM len=8 hex 0000000000000000 |........|"
    )
    assert (
        lines[5] == '    1.500s #7 up   CLOSE    flags=CHECKSUM len=5 {"code":1000,"reason":"bye"}'
    )


def test_bytes_codec_shows_a_preview() -> None:
    records: list[dict[str, Any]] = []
    inspector = ConnectionInspector(1, records.append)
    inspector.feed("up", frame_bytes(FrameType.DATA, b"hi\x00" * 30), 0.0)
    assert records[0]["flags"] is None  # no WELCOME seen: the checksum flag is unknown
    assert records[0]["payload"] == {
        "hex": (b"hi\x00" * 16).hex(),
        "ascii": "hi." * 16,
        "truncated": True,
    }
    assert "?" in format_record(records[0]) and "..." in format_record(records[0])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x16\x03\x01\x02\x00" + b"\x00" * 40, "TLS handshake"),
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP"),
        (b"hello world, plain bytes", "does not speak"),
    ],
)
def test_non_frames_are_reported_once(data: bytes, reason: str) -> None:
    records: list[dict[str, Any]] = []
    inspector = ConnectionInspector(3, records.append)
    inspector.feed("up", data, 0.0)
    inspector.feed("up", frame_bytes(FrameType.DATA, b"x"), 0.0)  # too late: ignored
    assert len(records) == 1
    assert reason in records[0]["note"] and "passed through" in records[0]["note"]


async def test_real_exchange_through_the_proxy() -> None:
    async def shout(conn: aio.Connection) -> None:
        try:
            async for message in conn:
                await conn.send(message["text"].upper())
        except ConnectionClosed:
            pass

    server = await aio.serve("tcp://127.0.0.1:0", shout, codec="json")
    records: list[dict[str, Any]] = []
    closes = asyncio.Event()

    def sink(record: dict[str, Any]) -> None:
        records.append(record)
        if sum(r.get("type") == "CLOSE" for r in records) == 2:
            closes.set()

    async with Proxy("tcp://127.0.0.1:0", server.url, inspect=sink) as proxy:
        conn = await aio.connect(proxy.url, codec="json", name="tester")
        await conn.send({"text": "hi"})
        assert await conn.recv() == "HI"
        await conn.close()
        await asyncio.wait_for(closes.wait(), 5)
    await server.close()
    seen = [(r["dir"], r["type"], r.get("payload")) for r in records]
    assert [s[:2] for s in seen] == [
        ("up", "HELLO"),
        ("down", "WELCOME"),
        ("up", "DATA"),
        ("down", "DATA"),
        ("up", "CLOSE"),
        ("down", "CLOSE"),
    ]
    assert seen[0][2]["name"] == "tester"
    assert seen[2][2] == {"decoded": {"text": "hi"}, "codec": "json"}
    assert seen[3][2] == {"decoded": "HI", "codec": "json"}
    assert {r["conn"] for r in records} == {1}
    times = [r["time"] for r in records]
    assert times == sorted(times) and times[0] >= 0


async def test_tls_passes_through_untouched(tcp_echo: Recorder) -> None:
    records: list[dict[str, Any]] = []
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url, inspect=records.append) as proxy:
        reader, writer = await open_client(proxy.url)
        hello = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ssl.create_default_context().wrap_bio(*hello, server_hostname="example.com")
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        client_hello = hello[1].read()
        writer.write(client_hello)
        echoed = await reader.readexactly(len(client_hello))
        writer.write_eof()
        await read_all(reader)
        writer.close()
    assert echoed == client_hello  # byte for byte
    assert [r["dir"] for r in records] == ["up", "down"]
    assert all("TLS handshake" in r["note"] for r in records)


async def test_corruption_shows_as_a_checksum_error(tcp_echo: Recorder) -> None:
    records: list[dict[str, Any]] = []
    async with Proxy("tcp://127.0.0.1:0", tcp_echo.url, inspect=records.append) as proxy:
        proxy.corrupt(20, direction="up")
        reader, writer = await open_client(proxy.url)
        frame = frame_bytes(FrameType.DATA, b"payload!")
        writer.write(frame)
        await reader.readexactly(len(frame))
        writer.close()
    up = [r for r in records if r["dir"] == "up"]
    assert len(up) == 1 and "checksum mismatch" in up[0]["note"]


def test_unnamed_types_metadata_and_unknown_codecs() -> None:
    records: list[dict[str, Any]] = []
    inspector = ConnectionInspector(2, records.append)
    welcome = b'{"checksum":false,"codec":"protobuf:demo.Msg","version":1}'
    inspector.feed("down", frame_bytes(FrameType.WELCOME, welcome, checksum=False), 0.0)
    inspector.feed("up", frame_bytes(0x85, b"app", meta=b"m1"), 0.0)
    inspector.feed("up", frame_bytes(FrameType.DATA, b"\x08\x01", checksum=False), 0.0)
    inspector.feed("up", frame_bytes(FrameType.AUTH, b"not json"), 0.0)
    app, data, auth = records[1:]
    assert (app["type"], app["length"], app["meta"]["ascii"]) == ("0x85", 5, "m1")
    assert app["payload"]["ascii"] == "app"
    assert "meta=hex 6d31 |m1|" in format_record(app)
    assert data["flags"] == [] and data["payload"]["hex"] == "0801"  # unknown codec: bytes
    assert "flags=- " in format_record(data)
    assert auth["payload"]["ascii"] == "not json"


def test_msgpack_payloads_are_decoded() -> None:
    import msgpack  # part of opensocket[dev]: a missing package fails the test

    records: list[dict[str, Any]] = []
    inspector = ConnectionInspector(1, records.append)
    inspector.feed("down", frame_bytes(FrameType.WELCOME, b'{"codec":"msgpack"}'), 0.0)
    inspector.feed("up", frame_bytes(FrameType.DATA, msgpack.packb({"k": [1, 2]})), 0.0)
    assert records[1]["payload"] == {"decoded": {"k": [1, 2]}, "codec": "msgpack"}
