"""The rudp_game example runs as real processes on loopback and does what it says."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

BOTS = ("--bots", "3", "--seconds", "2.5")  # chat lines #0, #1 and #2 from every bot
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rudp_game"


def test_three_bots_play_and_see_each_other() -> None:
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "server.py"), "--url", "rudp://127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline().split()
        assert first[:2] == ["listening", "on"], first
        client = subprocess.run(
            [sys.executable, str(EXAMPLE / "client.py"), "--url", first[2], *BOTS],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert client.returncode == 0, client.stderr
        out = client.stdout
        summaries = re.findall(r"^(bot\d): (\d+) snapshots .* players seen (\d+)", out, re.M)
        assert sorted(name for name, _, _ in summaries) == ["bot1", "bot2", "bot3"]
        assert all(int(count) >= 10 for _, count, _ in summaries)  # snapshots flow
        assert all(int(seen) == 3 for _, _, seen in summaries)  # everyone sees everyone
        # reliable chat reaches all: every bot hears every other (a bot that joined late,
        # as CI saw under load, misses the lines said before it came, not the later ones)
        for me in ("bot1", "bot2", "bot3"):
            for other in ("bot1", "bot2", "bot3"):
                assert f"[{me}] chat {other}: hello from {other} #" in out, (me, other)
        assert all(f"[bot{i}] welcome: id" in out for i in (1, 2, 3))
        assert re.search(r"^\[bot\d\] joined: bot\d", out, re.M)  # the last to join is announced
    finally:
        server.send_signal(signal.SIGINT)  # our own child: graceful stop
        rest, err = server.communicate(timeout=15)
    assert server.returncode == 0, err
    assert "server stopped" in rest
    assert sorted(re.findall(r"^leave \d (bot\d)", rest, re.M)) == ["bot1", "bot2", "bot3"]
    assert "chat bot2: hello from bot2 #0" in rest
