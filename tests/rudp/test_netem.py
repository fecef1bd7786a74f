"""Reliable UDP across two network namespaces joined by a veth pair with ``netem`` on it.

The test builds the namespaces itself (root is required, as in CI) and removes them after.
Kernels without the netem qdisc refuse ``tc qdisc ... netem``: only then the test is skipped,
with the kernel's exact message. The same scenario (5 % loss, 20 ms delay, exactly-once
delivery) always runs through the fault proxy in test_proxy_loopback.py, so the coverage of
the claim does not depend on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

NS_CLIENT = f"osr-c{os.getpid()}"
NS_SERVER = f"osr-s{os.getpid()}"
CLIENT_IP, SERVER_IP = "10.213.7.1", "10.213.7.2"
PORT = 9411
NETEM = ["netem", "loss", "5%", "delay", "20ms"]

SERVER = f"""
from opensocket import sync
from opensocket.errors import ConnectionClosed

def echo(conn):
    try:
        while True:
            channel, data = conn.recv_message()
            conn.send(data, channel)
    except ConnectionClosed:
        pass

with sync.serve("rudp://{SERVER_IP}:{PORT}", echo) as server:
    print("ready", flush=True)
    server.serve_forever()
"""

CLIENT = f"""
from opensocket import sync

conn = sync.connect("rudp://{SERVER_IP}:{PORT}")
for i in range(200):
    conn.send(b"%d" % i, 0)
    conn.send(b"%d" % i, 2)
got = {{0: [], 2: []}}
for _ in range(400):
    channel, data = conn.recv_message(timeout=20)
    got[channel].append(int(data))
assert got[0] == list(range(200)), got[0]
assert sorted(got[2]) == list(range(200)), got[2]
print("exactly once", conn.stats.retransmits, conn.stats.lost, flush=True)
conn.close()
"""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=20, check=check)


@pytest.fixture
def netns_pair() -> Iterator[None]:
    """Two namespaces joined by a veth pair, addressed and up; removed afterwards."""
    try:
        run("ip", "netns", "add", NS_CLIENT)
        run("ip", "netns", "add", NS_SERVER)
        run("ip", "link", "add", "osr-a", "netns", NS_CLIENT, "type", "veth", "peer", "osr-b",
            "netns", NS_SERVER)  # fmt: skip
        for ns, dev, ip in ((NS_CLIENT, "osr-a", CLIENT_IP), (NS_SERVER, "osr-b", SERVER_IP)):
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        run("ip", "netns", "del", NS_CLIENT, check=False)  # deletes the veth pair too
        run("ip", "netns", "del", NS_SERVER, check=False)


def add_netem(ns: str, dev: str) -> None:
    """netem on one side's egress; skip (with the kernel's words) only if netem is unknown."""
    done = run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", *NETEM,
               check=False)  # fmt: skip
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        if "qdisc kind is unknown" in message:
            pytest.skip(f"the kernel refused netem: {message!r} (tc qdisc add dev {dev} root "
                        f"{' '.join(NETEM)}); the same scenario runs through the fault proxy "
                        "in test_proxy_loopback.py")  # fmt: skip
        raise AssertionError(f"tc qdisc add ... netem failed: {message}")


@pytest.mark.timeout(60)
def test_rudp_exactly_once_over_netem(netns_pair: None) -> None:
    add_netem(NS_CLIENT, "osr-a")
    add_netem(NS_SERVER, "osr-b")
    server = subprocess.Popen(
        ["ip", "netns", "exec", NS_SERVER, sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        client = run("ip", "netns", "exec", NS_CLIENT, sys.executable, "-c", CLIENT, check=False)
        assert client.returncode == 0, client.stderr
        assert client.stdout.startswith("exactly once")
        retransmits = int(client.stdout.split()[2])
        assert retransmits > 0  # 5 % loss each way did happen
    finally:
        server.kill()  # our own child, by its handle
        server.communicate(timeout=10)
