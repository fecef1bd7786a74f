"""Reliable UDP (rudp://) next to TCP on the same lossy, delayed link, same run.

    python bench/rudp.py                                   # 20 MB bulk, 500 small msgs, JSON
    python bench/rudp.py --mb 5 --small 200 --losses 0,5 --json /tmp/rudp.json   # short

The link (root required, as in CI): two network namespaces, client and server, each with a
TUN device. A relay in this process reads every IP packet a namespace sends and carries it
over loopback UDP through the opensocket fault proxy to the other namespace's TUN. So the
kernel's own TCP and our rudp cross *the same* link, packet by packet: the proxy drops each
packet with the given probability in both directions and delays the client->server direction
by ``--delay-ms`` (default 20 ms one way; the server->client direction gets no delay, so the
round trip is 20 ms). This is netem done in user space: the kernel here has no netem qdisc,
and the proxy's TCP mode cannot drop segments (it terminates TCP), so "TCP over the proxy"
would hide exactly the head-of-line blocking we want to measure. TCP is the kernel's (its
congestion control is printed), with Nagle off (opensocket's framed protocol over tcp://).

Measured per loss rate (0, 1, 5, 10 % by default):
- bulk: goodput of ``--mb`` MB sent as 16 KiB messages on the reliable-ordered channel (rudp)
  or as framed messages (TCP), until the server confirms it has every byte (bounded by
  ``--time-limit``: a cut run reports the bytes confirmed).
- small: ``--small`` messages of 64 bytes at ``--rate`` Hz, echoed by the server; p50/p99 of
  the round trip on rudp's unreliable-sequenced, reliable-ordered and reliable-unordered
  channels and on TCP. Unreliable rows count delivered echoes only (and say how many).

Targets (issue 8): at 5 % loss, rudp bulk goodput >= 50 % of its 0 %-loss figure; the
unreliable p99 <= delay + 5 ms; the reliable p99 <= 1/2 of TCP's. The relay, the proxy, the
client and the server are four Python processes on this machine's cores: absolute figures are
modest; compare within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import math
import os
import random
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

NS_CLIENT, NS_SERVER = f"osb-c{os.getpid()}", f"osb-s{os.getpid()}"
TUN_CLIENT, TUN_SERVER = "osbtun-c", "osbtun-s"
CLIENT_IP, SERVER_IP = "10.77.0.1", "10.77.0.2"
RUDP_PORT, TCP_PORT, COPY_PORT = 9600, 9601, 9602
MTU = 1400
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
CHUNK = 16 * 1024
COPIES = 2  # RudpOptions.redundancy of the "+copies" rows
SMALL = 64
ECHO, BULK, DONE = b"E", b"B", b"D"

# ---- the link: namespaces, TUN devices, relay through the fault proxy ---------------------


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=check)


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


@contextmanager
def namespaces() -> Iterator[tuple[int, int]]:
    """Two namespaces with one TUN each (fds stay here); removed afterwards."""
    fds: list[int] = []
    try:
        for ns, tun, ip in ((NS_CLIENT, TUN_CLIENT, CLIENT_IP), (NS_SERVER, TUN_SERVER, SERVER_IP)):
            sh("ip", "netns", "add", ns)
            fds.append(open_tun(tun))
            sh("ip", "link", "set", tun, "netns", ns)
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", tun)
            sh("ip", "-n", ns, "link", "set", tun, "mtu", str(MTU), "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield fds[0], fds[1]
    finally:
        for fd in fds:
            os.close(fd)
        for ns in (NS_CLIENT, NS_SERVER):
            sh("ip", "netns", "del", ns, check=False)


class Relay:
    """Carries IP packets between the TUNs over loopback UDP, through the proxy."""

    def __init__(self, tun_client: int, tun_server: int) -> None:
        import socket

        self.tun_c, self.tun_s = tun_client, tun_server
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # client side of the proxy
        self.down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the proxy's upstream
        for sock in (self.up, self.down):
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.proxy_addr: Any = None
        self.upstream_peer: Any = None  # the proxy's socket towards us, learned from traffic
        self.packets = 0

    @property
    def upstream_url(self) -> str:
        return f"udp://127.0.0.1:{self.down.getsockname()[1]}"

    def start(self, loop: asyncio.AbstractEventLoop, proxy_url: str) -> None:
        host, port = proxy_url.removeprefix("udp://").rsplit(":", 1)
        self.proxy_addr = (host, int(port))
        loop.add_reader(self.tun_c, self._from_client)
        loop.add_reader(self.tun_s, self._from_server)
        loop.add_reader(self.up.fileno(), self._to_client)
        loop.add_reader(self.down.fileno(), self._to_server)

    def _drain(self, read: Any, write: Any) -> None:
        for _ in range(64):
            try:
                data = read()
            except (BlockingIOError, InterruptedError):
                return
            if data is None:
                return
            self.packets += 1
            with contextlib.suppress(BlockingIOError, OSError):
                write(data)

    def _from_client(self) -> None:
        self._drain(
            lambda: os.read(self.tun_c, 65535), lambda d: self.up.sendto(d, self.proxy_addr)
        )

    def _to_server(self) -> None:
        def read() -> bytes:
            data, addr = self.down.recvfrom(65535)
            self.upstream_peer = addr
            return data

        self._drain(read, lambda d: os.write(self.tun_s, d))

    def _from_server(self) -> None:
        def write(data: bytes) -> None:
            if self.upstream_peer is not None:  # the client always speaks first
                self.down.sendto(data, self.upstream_peer)

        self._drain(lambda: os.read(self.tun_s, 65535), write)

    def _to_client(self) -> None:
        self._drain(lambda: self.up.recvfrom(65535)[0], lambda d: os.write(self.tun_c, d))

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        for fd in (self.tun_c, self.tun_s, self.up.fileno(), self.down.fileno()):
            loop.remove_reader(fd)
        self.up.close()
        self.down.close()


# ---- the server (runs in the server namespace) ----------------------------------------------


async def serve_main() -> None:
    from opensocket import aio

    async def handle_rudp(conn: Any) -> None:
        total = 0
        with contextlib.suppress(Exception):
            while True:
                channel, data = await conn.recv_message()
                kind = data[:1]
                if kind == BULK:
                    total += len(data)
                elif kind == ECHO:
                    conn.send_nowait(data, channel)
                elif kind == DONE:
                    await conn.send(DONE + total.to_bytes(8, "big"), 0)

    async def handle_tcp(conn: Any) -> None:
        total = 0
        with contextlib.suppress(Exception):
            async for data in conn:
                kind = data[:1]
                if kind == BULK:
                    total += len(data)
                elif kind == ECHO:
                    await conn.send(data)
                elif kind == DONE:
                    await conn.send(DONE + total.to_bytes(8, "big"))

    from opensocket.rudp import RudpOptions

    rudp = await aio.serve(f"rudp://{SERVER_IP}:{RUDP_PORT}", handle_rudp)
    copy = await aio.serve(
        f"rudp://{SERVER_IP}:{COPY_PORT}", handle_rudp, rudp=RudpOptions(redundancy=COPIES)
    )
    tcp = await aio.serve(f"tcp://{SERVER_IP}:{TCP_PORT}", handle_tcp)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for server in (rudp, copy, tcp):
        await server.close(0)


# ---- the client workloads (run in the client namespace) -------------------------------------


async def connect(transport: str, redundancy: int = 0) -> Any:
    from opensocket import aio
    from opensocket.options import SocketOptions
    from opensocket.rudp import RudpOptions

    opts = SocketOptions(connect_timeout=10, write_timeout=120)
    if transport == "tcp":
        return await aio.connect(f"tcp://{SERVER_IP}:{TCP_PORT}", options=opts)
    port = COPY_PORT if redundancy else RUDP_PORT
    ropts = RudpOptions(close_timeout=2, redundancy=redundancy)
    return await aio.connect(f"rudp://{SERVER_IP}:{port}", options=opts, rudp=ropts)


async def send(conn: Any, transport: str, data: bytes, channel: int) -> None:
    if transport == "tcp":
        await conn.send(data)
    else:
        await conn.send(data, channel)


async def bulk(transport: str, mb: float, limit: float) -> dict[str, Any]:
    conn = await connect(transport)
    loop = asyncio.get_running_loop()
    payload = BULK + bytes(CHUNK - 1)
    target = int(mb * 1e6)
    start = loop.time()
    sent = 0
    while sent < target and loop.time() - start < limit:
        await send(conn, transport, payload, 0)
        sent += len(payload)
    await send(conn, transport, DONE, 0)
    reply = await conn.recv(timeout=limit + 30)
    elapsed = loop.time() - start
    confirmed = int.from_bytes(reply[1:9], "big")
    result = {"bytes": confirmed, "seconds": elapsed, "mb_per_s": confirmed / elapsed / 1e6}
    result["cut"] = sent < target
    if transport != "tcp":
        stats = conn.stats
        result.update(retransmits=stats.retransmits, lost=stats.lost, srtt=stats.srtt)
    await conn.close()
    return result


async def small(
    transport: str, channel: int, count: int, rate: float, redundancy: int = 0
) -> dict[str, Any]:
    conn = await connect(transport, redundancy)
    loop = asyncio.get_running_loop()
    rtts: list[float] = []

    async def receive() -> None:
        with contextlib.suppress(Exception):
            while len(rtts) < count:
                data = await conn.recv()
                rtts.append(loop.time() - struct.unpack_from(">d", data, 5)[0])

    receiver = asyncio.create_task(receive())
    start = loop.time()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        body = ECHO + struct.pack(">Id", i, loop.time())
        await send(conn, transport, body + bytes(SMALL - len(body)), channel)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(receiver), 3.0)
    receiver.cancel()
    rtts.sort()

    def pct(q: float) -> float | None:
        return rtts[min(len(rtts) - 1, int(q * len(rtts)))] * 1000 if rtts else None

    slow = sum(1 for r in rtts if rtts and r > 1.5 * rtts[len(rtts) // 2])
    result = {"sent": count, "delivered": len(rtts), "p50_ms": pct(0.5), "p99_ms": pct(0.99)}
    result.update(max_ms=pct(1.0), slow=slow)
    if transport != "tcp":
        result.update(redundant=conn.stats.redundant, retransmits=conn.stats.retransmits)
    await conn.close()
    return result


async def client_main(job: dict[str, Any]) -> None:
    if job["kind"] == "bulk":
        result = await bulk(job["transport"], job["mb"], job["limit"])
    else:
        result = await small(
            job["transport"], job["channel"], job["count"], job["rate"], job.get("redundancy", 0)
        )
    print(json.dumps(result), flush=True)


# ---- orchestration ----------------------------------------------------------------------------


def run_client(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    argv = ["ip", "netns", "exec", NS_CLIENT, sys.executable, __file__, "--client", json.dumps(job)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def jobs(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    small = {"kind": "small", "count": args.small, "rate": args.rate}
    return [
        (
            "bulk rudp",
            {"kind": "bulk", "transport": "rudp", "mb": args.mb, "limit": args.time_limit},
        ),
        ("bulk tcp", {"kind": "bulk", "transport": "tcp", "mb": args.mb, "limit": args.time_limit}),
        ("small rudp unreliable", {**small, "transport": "rudp", "channel": 1}),
        ("small rudp reliable-ordered", {**small, "transport": "rudp", "channel": 0}),
        ("small rudp reliable-unordered", {**small, "transport": "rudp", "channel": 2}),
        (
            f"small rudp reliable-ordered +{COPIES} copies",
            {**small, "transport": "rudp", "channel": 0, "redundancy": COPIES},
        ),
        ("small tcp", {**small, "transport": "tcp", "channel": 0}),
    ]


async def orchestrate(args: argparse.Namespace, tun_c: int, tun_s: int) -> dict[str, Any]:
    from opensocket.proxy import Proxy

    loop = asyncio.get_running_loop()
    relay = Relay(tun_c, tun_s)
    results: dict[str, Any] = {}
    async with Proxy("udp://127.0.0.1:0", relay.upstream_url, seed=args.seed) as proxy:
        relay.start(loop, proxy.url)
        server = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", NS_SERVER, sys.executable, __file__, "--server",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            assert (await asyncio.wait_for(server.stdout.readline(), 20)).strip() == b"ready"
            for loss in args.losses:
                proxy.clear()
                proxy.add_latency(args.delay_ms / 1000, direction="up")
                if loss:
                    proxy.loss(loss / 100)
                for name, job in jobs(args):
                    timeout = args.time_limit + 60
                    result = await asyncio.to_thread(run_client, job, timeout)
                    results[f"{loss}% {name}"] = result
                    print(f"{loss:>4}% loss  {name:<30} {json.dumps(result)}", flush=True)
        finally:
            server.send_signal(signal.SIGTERM)  # our own child
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait(), 10)
            if server.returncode is None:
                server.kill()
            relay.stop(loop)
    return results


def get(results: dict[str, Any], key: str, field: str) -> float | None:
    value = results.get(key, {}).get(field)
    return None if value is None else float(value)


def report(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    print()
    head = f"{'loss':>5} | {'rudp bulk MB/s':>14} | {'tcp bulk MB/s':>13} | {'rudp/tcp':>8} |"
    head += f" {'unrel p99':>9} | {'rel-ord p99':>11} | {'rel-unord p99':>13} |"
    head += f" {f'+{COPIES} copies p99':>14} | {'tcp p99':>8} | {'rel/tcp p99':>11} |"
    head += f" {'copies/tcp':>12}"
    print(head)
    print("-" * len(head))

    def ms(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f} ms"

    def ratio(a: float | None, b: float | None) -> str:
        return "—" if a is None or not b else f"{a / b:.2f}x"

    for loss in args.losses:
        row = {k.split("% ", 1)[1]: v for k, v in results.items() if k.startswith(f"{loss}% ")}

        def r(name: str, field: str, row: dict[str, Any] = row) -> float | None:
            value = row.get(name, {}).get(field)
            return None if value is None else float(value)

        rb, tb = r("bulk rudp", "mb_per_s"), r("bulk tcp", "mb_per_s")
        un, ro = r("small rudp unreliable", "p99_ms"), r("small rudp reliable-ordered", "p99_ms")
        ru, tp = r("small rudp reliable-unordered", "p99_ms"), r("small tcp", "p99_ms")
        rc = r(f"small rudp reliable-ordered +{COPIES} copies", "p99_ms")
        print(
            f"{loss:>4}% | {rb or 0:>14.2f} | {tb or 0:>13.2f} | {ratio(rb, tb):>8} | {ms(un):>9} |"
            f" {ms(ro):>11} | {ms(ru):>13} | {ms(rc):>14} | {ms(tp):>8} | {ratio(ro, tp):>11} |"
            f" {ratio(rc, tp):>12}"
        )
    base = get(results, "0% bulk rudp", "mb_per_s")
    five = get(results, "5% bulk rudp", "mb_per_s")
    unrel = get(results, "5% small rudp unreliable", "p99_ms")
    rel = get(results, "5% small rudp reliable-ordered", "p99_ms")
    copies = get(results, f"5% small rudp reliable-ordered +{COPIES} copies", "p99_ms")
    tcp = get(results, "5% small tcp", "p99_ms")
    targets = {
        "bulk at 5% / bulk at 0% >= 0.50": None if not (base and five) else five / base,
        f"unreliable p99 at 5% <= {args.delay_ms + 5:g} ms": unrel,
        f"reliable-ordered (redundancy={COPIES}) p99 / tcp p99 at 5% <= 0.50": (
            None if not (copies and tcp) else copies / tcp
        ),
        "(no target) reliable-ordered (redundancy=0) p99 / tcp p99 at 5%": (
            None if not (rel and tcp) else rel / tcp
        ),
    }
    goals = [(0.5, True), (args.delay_ms + 5.0, False), (0.5, False), (math.inf, False)]
    print()
    verdicts = {}
    for (name, value), (goal, higher) in zip(targets.items(), goals, strict=True):
        ok = value is not None and (value >= goal if higher else value <= goal)
        status = "n/a" if value is None else ("PASS" if ok else "MISS")
        if goal == math.inf:
            status = "info"
        verdicts[name] = {"measured": value, "status": status}
        print(f"  {status:<5} {name}: {'—' if value is None else f'{value:.2f}'}")
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=20.0, help="bulk transfer size in MB")
    parser.add_argument("--small", type=int, default=500, help="small messages per row")
    parser.add_argument("--rate", type=float, default=100.0, help="small messages per second")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay, up")
    parser.add_argument("--losses", default="0,1,5,10", help="loss rates in percent")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per bulk run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default="bench-rudp.json", help="where to write the results")
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        asyncio.run(serve_main())
        return 0
    if args.client:
        asyncio.run(client_main(json.loads(args.client)))
        return 0
    if os.geteuid() != 0:
        print("bench/rudp.py needs root (network namespaces and TUN devices)", file=sys.stderr)
        return 2
    args.losses = [float(x) if "." in x else int(x) for x in args.losses.split(",")]
    random.seed(args.seed)
    cc = sh("sysctl", "-n", "net.ipv4.tcp_congestion_control").stdout.strip()
    print(f"link: TUN <-> UDP relay <-> fault proxy; delay {args.delay_ms:g} ms one way (client->"
          f"server), loss both ways; kernel TCP congestion control: {cc}")  # fmt: skip
    with namespaces() as (tun_c, tun_s):
        results = asyncio.run(orchestrate(args, tun_c, tun_s))
    verdicts = report(args, results)
    out = {
        "command": " ".join(sys.argv),
        "link": {"delay_ms_one_way_up": args.delay_ms, "loss_both_ways": True, "tcp_cc": cc},
        "results": results,
        "targets": verdicts,
    }
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
