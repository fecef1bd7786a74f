"""Bots for the rudp_game server: each joins, moves in a circle, chats, and reports.

    python examples/rudp_game/client.py --url rudp://127.0.0.1:9500 --bots 3 --seconds 5

Each bot sends its position ``--hz`` times a second on channel 1 (unreliable-sequenced) and a
chat line every second on channel 0 (reliable-ordered); it prints every event it receives
(joins, leaves, chat) and, at the end, how many snapshots arrived and the connection's
round-trip time, retransmits and losses.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from typing import Any

from opensocket import aio
from opensocket.errors import ConnectionClosed, ReadTimeout

EVENTS, POSITIONS = 0, 1


class Bot:
    """One simulated player."""

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index
        self.snapshots = 0
        self.last_tick = 0
        self.seen: set[str] = set()
        self.chats = 0
        self.events = 0

    async def play(self, url: str, seconds: float, hz: float) -> str:
        """Join, play for ``seconds``, leave; return the summary line."""
        conn = await aio.connect(url, codec="json")
        await conn.send({"join": self.name}, channel=EVENTS)
        receiver = asyncio.create_task(self.receive(conn))
        loop = asyncio.get_running_loop()
        start = loop.time()
        step = 0
        while (elapsed := loop.time() - start) < seconds:
            angle = elapsed * 2 + self.index
            pos = {"x": round(10 * math.cos(angle), 2), "y": round(10 * math.sin(angle), 2)}
            await conn.send(pos, channel=POSITIONS)
            if step % int(hz) == 0:
                await conn.send({"chat": f"hello from {self.name} #{step // int(hz)}"})
            step += 1
            await asyncio.sleep(max(0.0, start + step / hz - loop.time()))
        stats = conn.stats
        await conn.close()
        receiver.cancel()
        rate = self.snapshots / seconds
        return (
            f"{self.name}: {self.snapshots} snapshots ({rate:.1f}/s, last tick {self.last_tick}),"
            f" players seen {len(self.seen)}, {self.events} events, {self.chats} chat lines,"
            f" rtt {stats.srtt * 1000:.2f} ms, retransmits {stats.retransmits}, lost {stats.lost}"
        )

    async def receive(self, conn: aio.ReliableConnection) -> None:
        """Print events; count snapshots."""
        try:
            while True:
                channel, msg = await conn.recv_message(timeout=10)
                if channel == POSITIONS:
                    self.on_snapshot(msg)
                else:
                    self.on_event(msg)
        except (ConnectionClosed, ReadTimeout):
            pass

    def on_snapshot(self, msg: dict[str, Any]) -> None:
        # unreliable-sequenced: ticks only go up, a late snapshot never shows up after a newer
        assert msg["tick"] > self.last_tick, "a stale snapshot was delivered"
        self.last_tick = msg["tick"]
        self.snapshots += 1
        self.seen.update(msg["players"])

    def on_event(self, msg: dict[str, Any]) -> None:
        self.events += 1
        if "chat" in msg:
            self.chats += 1
            print(f"[{self.name}] chat {msg['from']}: {msg['chat']}", flush=True)
        elif "joined" in msg:
            print(f"[{self.name}] joined: {msg['name']} (id {msg['joined']})", flush=True)
        elif "left" in msg:
            print(f"[{self.name}] left: {msg['name']}", flush=True)
        elif "welcome" in msg:
            print(f"[{self.name}] welcome: id {msg['welcome']}", flush=True)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="rudp://127.0.0.1:9500", help="the server")
    parser.add_argument("--bots", type=int, default=3, help="how many players")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long they play")
    parser.add_argument("--hz", type=float, default=30.0, help="position updates per second")
    args = parser.parse_args(argv)
    bots = [Bot(f"bot{i + 1}", i) for i in range(args.bots)]
    results = await asyncio.gather(*(b.play(args.url, args.seconds, args.hz) for b in bots))
    for line in results:
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(aio.run(main()))
