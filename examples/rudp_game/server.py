"""A small multiplayer state-sync server over reliable UDP (opensocket ``rudp://``).

Channels (the default RudpOptions): 0 reliable-ordered for joins, leaves and chat; 1
unreliable-sequenced for positions. Clients send their position up to 60 times a second on
channel 1; the server sends every player a snapshot of all positions ``--hz`` times a second
on channel 1 (a lost snapshot is simply replaced by the next, never retransmitted), and
events on channel 0 (never lost, never reordered).

    python examples/rudp_game/server.py --url rudp://127.0.0.1:9500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from opensocket import aio
from opensocket.errors import ConnectionClosed

EVENTS, POSITIONS = 0, 1


class Game:
    """The shared world: players, their positions, and who to tell about changes."""

    def __init__(self) -> None:
        self.players: dict[int, dict[str, Any]] = {}
        self.conns: dict[int, aio.ReliableConnection] = {}
        self.next_id = 1
        self.tick = 0

    async def broadcast(self, event: dict[str, Any]) -> None:
        """An event for everyone, reliably and in order."""
        for conn in list(self.conns.values()):
            with contextlib.suppress(ConnectionClosed):
                await conn.send(event, channel=EVENTS)

    async def session(self, conn: aio.ReliableConnection) -> None:
        """One player: join, then positions and chat until they leave."""
        hello = await conn.recv(timeout=5)
        pid, self.next_id = self.next_id, self.next_id + 1
        name = str(hello.get("join", f"player{pid}"))[:32]
        self.players[pid] = {"name": name, "x": 0.0, "y": 0.0}
        await conn.send({"welcome": pid, "players": self.players}, channel=EVENTS)
        self.conns[pid] = conn
        print(f"join {pid} {name} from {conn.remote_address}", flush=True)
        await self.broadcast({"joined": pid, "name": name})
        try:
            while True:
                channel, msg = await conn.recv_message()
                if channel == POSITIONS:
                    self.players[pid].update(x=float(msg["x"]), y=float(msg["y"]))
                elif "chat" in msg:
                    text = str(msg["chat"])[:200]
                    print(f"chat {name}: {text}", flush=True)
                    await self.broadcast({"chat": text, "from": name})
        except ConnectionClosed:
            pass
        finally:
            self.conns.pop(pid, None)
            self.players.pop(pid, None)
            print(f"leave {pid} {name}", flush=True)
            await self.broadcast({"left": pid, "name": name})

    async def snapshots(self, hz: float) -> None:
        """Send every player the positions of all, ``hz`` times a second."""
        loop = asyncio.get_running_loop()
        period = 1.0 / hz
        next_at = loop.time()
        while True:
            next_at += period
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            self.tick += 1
            state = {str(pid): [p["x"], p["y"]] for pid, p in self.players.items()}
            snapshot = {"tick": self.tick, "players": state}
            for conn in list(self.conns.values()):
                with contextlib.suppress(ConnectionClosed):
                    conn.send_nowait(snapshot, channel=POSITIONS)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="rudp://127.0.0.1:9500", help="where to listen")
    parser.add_argument("--hz", type=float, default=30.0, help="snapshots per second (30-60)")
    args = parser.parse_args(argv)
    game = Game()
    server = await aio.serve(args.url, game.session, codec="json")
    print(f"listening on {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ticker = asyncio.create_task(game.snapshots(args.hz))
    await stop.wait()
    ticker.cancel()
    await server.close(1.0)
    print("server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(aio.run(main()))
