"""The python-socketio reference server for bench/chat.py (run as a script, one process).

Its ``AsyncServer`` on aiohttp and uvloop (the hub runs on uvloop too). The same semantics as
the opensocket hub for what the benchmark measures: ``join`` puts the client in a room, ``say``
emits a ``message`` event (room, nick, text, ts) to every member of the room, the sender
included. Prints ``{"port": N, "pid": P}`` on one line when it listens, then serves until
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
from typing import Any

import socketio
import uvloop
from aiohttp import web


def build() -> tuple[socketio.AsyncServer, web.Application]:
    """The Socket.IO server and its aiohttp application."""
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
    app = web.Application()
    sio.attach(app)

    @sio.event  # type: ignore[misc]
    async def join(sid: str, data: dict[str, Any]) -> None:
        await sio.save_session(sid, {"nick": data["nick"]})
        await sio.enter_room(sid, data["room"])
        await sio.emit("joined", {"room": data["room"], "nick": data["nick"]}, to=sid)

    @sio.event  # type: ignore[misc]
    async def say(sid: str, data: dict[str, Any]) -> None:
        session = await sio.get_session(sid)
        event = {
            "room": data["room"],
            "nick": session["nick"],
            "text": data["text"],
            "ts": round(time.time(), 3),
        }
        await sio.emit("message", event, room=data["room"])

    @sio.event  # type: ignore[misc]
    async def ping(sid: str, data: dict[str, Any]) -> None:
        await sio.emit("pong", data, to=sid)

    return sio, app


async def serve(host: str, port: int, backlog: int) -> None:
    """Listen, announce the port, serve until SIGTERM/SIGINT."""
    _, app = build()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=backlog)
    await site.start()
    bound = runner.addresses[0][1]
    print(json.dumps({"port": bound, "pid": __import__("os").getpid()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(serve(args.host, args.port, args.backlog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
